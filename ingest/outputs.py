"""From the records of every input file to the import's tables: the manifest (or, without labels, the inventory)
and `skipped.csv`.

    tables = assemble(records, reads, SplitRule(test_fraction=0.1))
    write_tables(out, tables)

Rules across files, applied here in this order to the converted images: the same SOP instance exported twice is
imported once (the first by source name); then, with labels, an image needs an X-ray date, an age in 18-120 and an
MRI read within 90 days (`ingest.labels`). The split is by patient and time, as the paper's: a patient whose first
X-ray is on or after the test date is a test patient, with every image. Without --test-from the date is chosen so
that the latest `test_fraction` of the patients (by first X-ray) are the test split.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hnp.files import atomic_write
from hnp.levels import LEVEL_COLUMNS
from hnp.schema import AGE_RANGE, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from ingest import reasons

MANIFEST = "manifest"  # .csv and .parquet
INVENTORY = "inventory"  # .csv and .parquet, without --labels
SKIPPED = "skipped.csv"
INVENTORY_COLUMNS: tuple[str, ...] = ("patient_id", "image_path", "age", "view", "sex", "study_id", "xray_date")


@dataclass(frozen=True)
class SplitRule:
    """How patients are split into train and test.

    Args:
        test_from: patients first X-rayed on or after this date are test patients; None: chosen by test_fraction.
        test_fraction: without test_from, the share of patients (the latest by first X-ray) in test, in [0, 1).
    """

    test_from: dt.date | None = None
    test_fraction: float = 0.1

    def assign(self, patient_ids: pd.Series, xray_dates: pd.Series) -> pd.Series:
        """`train` or `test` per image.

        Args:
            patient_ids: per image.
            xray_dates: per image, datetime64 without missing values.
        """
        first = xray_dates.groupby(patient_ids).transform("min")
        cutoff = pd.Timestamp(self.test_from) if self.test_from else self._cutoff(first.groupby(patient_ids).first())
        return pd.Series("train", index=patient_ids.index).where(first < cutoff, "test")

    def _cutoff(self, first_by_patient: pd.Series) -> pd.Timestamp:
        n_test = math.floor(self.test_fraction * len(first_by_patient) + 0.5)
        if n_test == 0:
            return pd.Timestamp.max
        return first_by_patient.sort_values().iloc[-n_test]  # patients sharing that date go to test with it


@dataclass
class ImportTables:
    """What an import writes.

    Attributes:
        rows: the manifest (labels given) or the inventory, one row per imported image.
        skipped: `source` and `reason` per input file not in `rows`, by source.
        labelled: whether `rows` is a manifest.
    """

    rows: pd.DataFrame
    skipped: pd.DataFrame
    labelled: bool

    @property
    def name(self) -> str:
        return MANIFEST if self.labelled else INVENTORY


def assemble(records: pd.DataFrame, reads: pd.DataFrame | None, split: SplitRule) -> ImportTables:
    """The manifest (or inventory) and the skipped files, from one record per input file.

    Args:
        records: `convert_file` records, one per input file, sorted by source.
        reads: MRI reads (`ingest.labels.read_mri_reads`), or None for an inventory.
        split: the train/test rule (manifest only).
    """
    records = records.copy()
    records["reason"] = records["reason"].astype(object)
    _mark_duplicates(records)
    if reads is not None:
        _mark_unlabelled(records, reads)
    kept = records[records["reason"].isna()]
    skipped = records.loc[records["reason"].notna(), ["source", "reason"]].reset_index(drop=True)
    if reads is None:
        return ImportTables(_inventory(kept), skipped, labelled=False)
    return ImportTables(_manifest(kept, split), skipped, labelled=True)


def _mark_duplicates(records: pd.DataFrame) -> None:
    """The second and later files of one SOP instance: skipped, naming the first."""
    uids = records["sop_instance_uid"].where(records["reason"].isna() & records["sop_instance_uid"].fillna("").ne(""))
    first = records.groupby(uids)["source"].transform("first")
    repeat = uids.notna() & first.ne(records["source"])
    records.loc[repeat, "reason"] = [f"{reasons.DUPLICATE} (same as {s})" for s in first[repeat]]


def _mark_unlabelled(records: pd.DataFrame, reads: pd.DataFrame) -> None:
    """Images that cannot be manifest rows: no date, no age or one out of range, no MRI read near enough. The
    images of one study share one X-ray date (its earliest), so they all take the same read."""
    from ingest.labels import match_reads

    images = records["reason"].isna()
    records["xray_date"] = _study_dates(records, images)
    ages = pd.to_numeric(records["age"], errors="coerce")
    low, high = AGE_RANGE
    for reason, bad in ((reasons.NO_DATE, records["xray_date"].isna()), (reasons.NO_AGE, ages.isna()),
                        (reasons.AGE_OUT_OF_RANGE, ~ages.between(low, high))):
        records.loc[images & records["reason"].isna() & bad, "reason"] = reason
    candidates = records[records["reason"].isna()]
    matched = match_reads(candidates, reads)
    records.loc[matched.index, "reason"] = matched["reason"]
    for column in ("mri_date", *LEVEL_COLUMNS):
        records[column] = matched[column].reindex(records.index)


def _study_dates(records: pd.DataFrame, images: pd.Series) -> pd.Series:
    """Each image's X-ray date (datetime64): the earliest of its study, which has one MRI read; NaT elsewhere."""
    dates = pd.to_datetime(records["xray_date"].where(images), format="ISO8601")
    has_study = records["study_id"].fillna("").ne("")
    study = (records["patient_id"].fillna("") + "\x00" + records["study_id"].fillna("")).where(has_study)
    return dates.groupby(study).transform("min").fillna(dates)


def _manifest(kept: pd.DataFrame, split: SplitRule) -> pd.DataFrame:
    rows = kept.rename(columns={"image": "image_path"})
    rows["split"] = split.assign(rows["patient_id"], rows["xray_date"])
    rows["age"] = pd.to_numeric(rows["age"])
    rows[list(LEVEL_COLUMNS)] = rows[list(LEVEL_COLUMNS)].astype("int64")
    for column in ("xray_date", "mri_date"):
        rows[column] = rows[column].dt.strftime("%Y-%m-%d")
    return rows[[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]].reset_index(drop=True)


def _inventory(kept: pd.DataFrame) -> pd.DataFrame:
    rows = kept.rename(columns={"image": "image_path"})
    rows["age"] = pd.to_numeric(rows["age"])
    return rows[list(INVENTORY_COLUMNS)].reset_index(drop=True)


def write_tables(out: Path, tables: ImportTables) -> list[Path]:
    """Write `<name>.csv`, `<name>.parquet` and `skipped.csv` into `out`, each atomically; return their paths."""
    csv, parquet, skipped = out / f"{tables.name}.csv", out / f"{tables.name}.parquet", out / SKIPPED
    atomic_write(csv, lambda tmp: tables.rows.to_csv(tmp, index=False, lineterminator="\n"))
    atomic_write(parquet, lambda tmp: tables.rows.to_parquet(tmp, index=False))
    # surrogateescape: a file name that is not UTF-8 is written as its own bytes
    atomic_write(skipped, lambda tmp: tables.skipped.to_csv(tmp, index=False, lineterminator="\n",
                                                            errors="surrogateescape"))
    return [csv, parquet, skipped]
