"""MRI-read labels, and the X-ray each one labels (the paper's 90-day rule, `hnp.pairing`).

The labels file is a CSV with one row per MRI read, UTF-8:

    patient_id,mri_date,L1_2,L2_3,L3_4,L4_5,L5_S1
    12345678,2019-04-02,0,0,1,1,0

    reads = read_mri_reads(Path("mri_labels.csv"))
    matched = match_reads(images, reads)       # per image: mri_date, the five labels, or the reason there are none

An image takes the read of its patient nearest to its X-ray date, if that is at most MAX_XRAY_MRI_DAYS away (two
reads equally near: the earlier one). A patient with several reads therefore has each study labelled by the read
that belongs to it, and a study with no read near enough is skipped, as is a patient with no read at all.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS
from hnp.pairing import too_far_apart, xray_mri_gap_days
from ingest import reasons

READ_COLUMNS: tuple[str, ...] = ("patient_id", "mri_date", *LEVEL_COLUMNS)
_SHOWN_PROBLEMS = 20


def read_mri_reads(path: Path) -> pd.DataFrame:
    """The labels file, checked: patient_id (text), mri_date (datetime64), the five levels (int 0/1).

    Args:
        path: the CSV file.

    Raises:
        HnpError: the file is missing or unreadable, lacks a column, or has bad values; every bad cell is named
            by its line and column (never by the patient ID), the first 20 of them in the message.
    """
    try:
        # blank lines kept (then dropped below) so that the index still gives each row's line in the file
        table = pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise HnpError(f"{path}: labels file not found") from None
    except (UnicodeDecodeError, ValueError, OSError) as err:
        raise HnpError(f"{path}: cannot read the labels file: {type(err).__name__}; save it as a UTF-8 CSV") from None
    missing = [c for c in READ_COLUMNS if c not in table]
    if missing:
        raise HnpError(f"{path}: the labels file has no column {', '.join(missing)} "
                       f"(expected {', '.join(READ_COLUMNS)})")
    table = table[list(READ_COLUMNS)].apply(lambda column: column.str.strip())
    table = table[table.ne("").any(axis=1)]
    problems = _problems(table)
    if problems:
        shown = "\n  ".join(problems[:_SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        raise HnpError(f"{path}: {len(problems)} problems in the labels file:\n  {shown}{more}")
    table["mri_date"] = pd.to_datetime(table["mri_date"], format="ISO8601")
    table[list(LEVEL_COLUMNS)] = table[list(LEVEL_COLUMNS)].astype("int64")
    return table.drop_duplicates(ignore_index=True)


def _problems(table: pd.DataFrame) -> list[str]:
    """'line N, column C: reason' for every bad cell (header = line 1), then reads that contradict each other."""
    line = table.index + 2
    problems = [f"line {n}, column patient_id: empty" for n in line[table["patient_id"].eq("")]]
    dates = pd.to_datetime(table["mri_date"], format="ISO8601", errors="coerce")
    problems += [f"line {n}, column mri_date: {v!r} is not an ISO date (YYYY-MM-DD)"
                 for n, v in zip(line[dates.isna()], table["mri_date"][dates.isna()], strict=True)]
    for column in LEVEL_COLUMNS:
        bad = ~table[column].isin(["0", "1"])
        problems += [f"line {n}, column {column}: {v!r} is not 0 or 1"
                     for n, v in zip(line[bad], table[column][bad], strict=True)]
    if problems:
        return problems
    keyed = pd.concat([table["patient_id"], dates, table[list(LEVEL_COLUMNS)]], axis=1).drop_duplicates()
    clash = keyed.index[keyed.duplicated(["patient_id", "mri_date"], keep=False)]
    return [f"line {n}: another row has the same patient and MRI date with other labels" for n in clash + 2]


def match_reads(images: pd.DataFrame, reads: pd.DataFrame) -> pd.DataFrame:
    """The MRI read that labels each image.

    Args:
        images: `patient_id` and `xray_date` (datetime64, no missing values) per image, any index.
        reads: from `read_mri_reads`.

    Returns:
        Indexed like `images`: `mri_date` and the five level columns (NaN where unmatched) and `reason` (None where
        matched, else NO_MRI or NO_MRI_NEAR).
    """
    pairs = images[["patient_id", "xray_date"]].rename_axis("image").reset_index().merge(reads, on="patient_id")
    pairs["gap"] = xray_mri_gap_days(pairs["xray_date"], pairs["mri_date"])
    near = pairs[pairs["gap"].notna() & ~too_far_apart(pairs["gap"])]
    # the nearest read; of two equally near, the earlier
    nearest = near.sort_values(["image", "gap", "mri_date"]).drop_duplicates("image").set_index("image")
    matched = nearest[["mri_date", *LEVEL_COLUMNS]].reindex(images.index)
    has_reads = images["patient_id"].isin(reads["patient_id"])
    matched["reason"] = None
    matched.loc[matched["mri_date"].isna(), "reason"] = reasons.NO_MRI_NEAR
    matched.loc[~has_reads, "reason"] = reasons.NO_MRI
    return matched
