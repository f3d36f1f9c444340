"""Read a manifest (CSV or Parquet) and check it against the contract in DESIGN.md before sharding.

Usage:
    check = validate_manifest("data/manifest.parquet", workers=8)
    for problem in check.errors:          # the manifest must be fixed
        print(problem)
    check.exclusions                      # {row: reason}: rows `hnp shard` sets aside (excluded.csv)
    print(check.summary())

Every problem is reported, not just the first, each naming the 0-based row (and CSV line) and the column.
The checks are vectorised pandas operations so that the paper's 180,271 rows take seconds; only the image
checks touch every file, over worker processes. Patient identifiers are PHI: a message names the row instead,
and any copy of the row's patient_id inside a quoted value (an image path, say) is replaced by <patient_id>.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pyarrow

from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.jpeg import JpegError, inspect_jpeg_file_stat
from hnp.levels import LEVEL_COLUMNS, LEVELS, SPLITS, VIEWS
from hnp.pairing import too_far_apart, xray_mri_gap_days
from hnp.schema import AGE_RANGE, MAX_XRAY_MRI_DAYS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from hnp.workers import exit_with

# Columns read as text from CSV: identifiers keep their leading zeros, dates are parsed by the date check.
_TEXT_COLUMNS = ("patient_id", "image_path", "split", "view", "sex", "study_id", "xray_date", "mri_date")
# Patient ids shorter than this are not searched for inside messages: "12" would match row numbers and ages.
_MIN_REDACTED_ID = 4
_PROGRESS_MIN_IMAGES = 1000
_IMAGE_BATCH = 512  # images per task of the check processes


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, worded for the person who has to fix it.

    Attributes:
        row: 0-based position in the manifest table; None for file-level problems (missing column...).
        column: the column at fault, or None.
        reason: what is wrong; never contains the row's patient_id.
        excludable: True when the row can be set aside and sharding continues (image missing or not a
            decodable JPEG, X-ray and MRI too far apart); False when the manifest itself must be fixed.
        kind: a short category ("label not 0/1", "image missing"...), for counts and the problems CSV.
        file: the manifest's file name, for messages.
        line: the row's line in a CSV file (header = line 1); None for Parquet.
    """

    row: int | None
    column: str | None
    reason: str
    excludable: bool = False
    kind: str = ""
    file: str = ""
    line: int | None = None

    def __str__(self) -> str:
        if self.row is None:
            where = self.file or "manifest"
        elif self.line is not None:
            where = f"row {self.row} (line {self.line} of {self.file})"
        else:
            where = f"row {self.row} of {self.file}" if self.file else f"row {self.row}"
        column = f", column {self.column}" if self.column else ""
        return f"{where}{column}: {self.reason}"


@dataclass
class ManifestCheck:
    """The manifest as read and everything found wrong with it.

    Attributes:
        path: the manifest file.
        table: the manifest as read (index = row position), with `image_file` added: the image's absolute
            resolved path as a string (None where image_path is empty). Label columns are converted to
            int64, and age to a number, when every value in them is valid.
        problems: every problem, file-level ones first, then by row.
        ignored_columns: columns outside the contract, with a note where one looks like a misspelling.
        image_stats: (size, mtime_ns) of every image that passed its check, by `image_file`, as the check read
            it (empty without the image checks): `hnp shard` plans with these sizes and refuses a file that has
            changed since.
    """

    path: Path
    table: pd.DataFrame
    problems: list[Problem]
    ignored_columns: dict[str, str] = field(default_factory=dict)
    image_stats: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        """Problems that stop sharding until the manifest is fixed."""
        return [p for p in self.problems if not p.excludable]

    @property
    def exclusions(self) -> dict[int, str]:
        """Rows to set aside, each with the first reason found for it."""
        excluded: dict[int, str] = {}
        for problem in self.problems:
            if problem.excludable and problem.row is not None:
                excluded.setdefault(problem.row, problem.reason)
        return excluded

    def summary(self) -> str:
        """Patients, images, views and per-level prevalence per split of the rows that would be sharded,
        then the excluded rows by reason and the error count. No patient identifier appears in it."""
        excluded = self.exclusions
        kept = self.table.drop(index=list(excluded))
        lines = [f"{self.path.name}: {len(self.table):,} rows, {len(excluded):,} excluded, {len(kept):,} kept"]
        lines += _split_lines(kept)
        lines += _view_lines(kept)
        lines += _prevalence_lines(kept)
        lines += _exclusion_lines(self.problems)
        lines += _unchecked_date_lines(kept)
        lines += [f"ignored column {name!r}{note}" for name, note in self.ignored_columns.items()]
        lines.append(f"errors: {len(self.errors):,}" + (" (the manifest must be fixed)" if self.errors else ""))
        return "\n".join(lines)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest from CSV or Parquet (pyarrow), index = row position.

    Args:
        path: a `.csv`, `.parquet` or `.pq` file.

    Raises:
        HnpError: the file is missing, has another extension, or cannot be parsed; the message names it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise HnpError(f"{path}: manifest not found")
    if suffix not in (".csv", ".parquet", ".pq"):
        raise HnpError(f"{path}: unknown manifest format {suffix!r} (expected .csv or .parquet)")
    try:
        if suffix == ".csv":
            # utf-8-sig: spreadsheet exports often start with a byte-order mark that would rename the first column
            table = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS}, encoding="utf-8-sig")
        else:
            table = pd.read_parquet(path, engine="pyarrow")
    except UnicodeDecodeError as err:
        raise HnpError(
            f"{path}: cannot read the manifest: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 CSV"
        ) from None
    except (ValueError, OSError, pyarrow.ArrowException) as err:
        raise HnpError(f"{path}: cannot read the manifest: {err}") from None
    return table.reset_index(drop=True)


def validate_manifest(path: str | Path, *, check_images: bool = True, workers: int = 1) -> ManifestCheck:
    """Read a manifest and report every problem in it.

    Args:
        path: the manifest (CSV or Parquet); relative image paths are resolved against its folder.
        check_images: open every image and check it is a complete JPEG we can decode (headers and end
            marker, see hnp.jpeg); False checks only the table.
        workers: processes for the image checks (1: checked in this process).

    Raises:
        HnpError: the file cannot be read at all.
    """
    path = Path(path)
    table = read_manifest(path)
    table["image_file"] = _resolve_images(table, path.parent)
    missing, ignored = _check_columns(table)
    problems = list(missing)
    if table.empty:
        problems.append(Problem(None, None, "the manifest has no rows", kind="empty manifest"))
    problems += _check_row_values(table)
    image_stats: dict[str, tuple[int, int]] = {}
    if check_images and "image_path" in table:
        image_problems, image_stats = _check_images(table, workers)
        problems += image_problems
    problems += _check_duplicate_images(table)
    if {"patient_id", "split"} <= set(table):
        problems += _check_split_leaks(table)
    if "patient_id" in table:
        problems += _check_label_conflicts(table)
    problems += _check_dates(table)
    _convert_valid_columns(table, problems)
    problems = _locate(_redact(problems, table), path, len(table))
    return ManifestCheck(path, table, problems, ignored, image_stats)


# ---- columns ------------------------------------------------------------------------------------------------


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate column that `name` was probably meant to be, ignoring case and -/_/space spelling."""
    by_form = {_normalise(c): c for c in candidates}
    match = difflib.get_close_matches(_normalise(name), list(by_form), n=1, cutoff=0.75)
    return by_form[match[0]] if match else None


def _check_columns(table: pd.DataFrame) -> tuple[list[Problem], dict[str, str]]:
    """Missing required columns (with the likely misspelling) and the columns outside the contract."""
    known = {*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "image_file"}
    unknown = [str(c) for c in table.columns if c not in known]
    problems = []
    for column in REQUIRED_COLUMNS:
        if column in table:
            continue
        near = _closest(column, unknown)
        hint = f": the manifest has {near!r}, did you mean {column}?" if near else ""
        problems.append(Problem(None, column, f"required column {column!r} is missing{hint}", kind="missing column"))
    ignored = {}
    for name in unknown:
        meant = _closest(name, [c for c in known - {"image_file"} if c not in table])
        ignored[name] = f" (did you mean {meant}?)" if meant else ""
    return problems, ignored


# ---- values in one row ----------------------------------------------------------------------------------------


def _show(value: object) -> str:
    return repr(str(value))


def _problems(
    rows: Iterable[int], column: str, reasons: Iterable[str], kind: str, *, excludable: bool = False
) -> list[Problem]:
    return [Problem(int(row), column, reason, excludable, kind) for row, reason in zip(rows, reasons, strict=True)]


def _empty(series: pd.Series) -> pd.Series:
    """True where a cell is missing or blank text."""
    return series.isna() | series.astype(str).str.strip().eq("")


def _check_row_values(table: pd.DataFrame) -> list[Problem]:
    problems = []
    for column in ("patient_id", "image_path"):
        if column in table:
            rows = table.index[_empty(table[column])]
            problems += _problems(rows, column, [f"{column} is empty"] * len(rows), f"{column} empty")
    for column in LEVEL_COLUMNS:
        if column in table:
            problems += _check_labels(table[column])
    if "age" in table:
        problems += _check_ages(table["age"])
    if "split" in table:
        problems += _check_choice(table["split"], SPLITS)
    if "view" in table:
        problems += _check_choice(table["view"], VIEWS, empty_hint=" (use OTHER when unknown)")
    return problems


def _check_labels(labels: pd.Series) -> list[Problem]:
    bad = ~pd.to_numeric(labels, errors="coerce").isin([0, 1])
    values = labels[bad]
    reasons = ["label is empty (must be 0 or 1)" if pd.isna(v) else f"label {_show(v)} is not 0 or 1" for v in values]
    return _problems(values.index, str(labels.name), reasons, "label not 0/1")


def _check_ages(ages: pd.Series) -> list[Problem]:
    years = pd.to_numeric(ages, errors="coerce")
    low, high = AGE_RANGE
    not_number = years.isna()
    out_of_range = ~not_number & ~years.between(low, high)
    reasons = ["age is empty" if pd.isna(v) else f"age {_show(v)} is not a number" for v in ages[not_number]]
    problems = _problems(ages.index[not_number], "age", reasons, "age not a number")
    reasons = [f"age {v:g} is outside {low}-{high}" for v in years[out_of_range]]
    return problems + _problems(ages.index[out_of_range], "age", reasons, "age out of range")


def _check_choice(values: pd.Series, allowed: tuple[str, ...], empty_hint: str = "") -> list[Problem]:
    column = str(values.name)
    bad = ~values.isin(allowed)
    choices = ", ".join(allowed)
    reasons = [
        f"{column} is empty{empty_hint}" if pd.isna(v) else f"{_show(v)} is not one of {choices}" for v in values[bad]
    ]
    return _problems(values.index[bad], column, reasons, f"bad {column}")


# ---- images -----------------------------------------------------------------------------------------------------


def _resolve_images(table: pd.DataFrame, folder: Path) -> pd.Series:
    """Absolute image paths with the folders' symlinks and `..` resolved, so that two spellings of one file
    count as duplicates. Each distinct folder is resolved once: a realpath per image would cost seconds."""
    if "image_path" not in table:
        return pd.Series(None, index=table.index, dtype=object)
    base = os.path.abspath(folder)
    real_folders: dict[str, str] = {}

    def resolve(image_path: object) -> str | None:
        if _is_blank(image_path):
            return None
        folder, name = os.path.split(os.path.join(base, str(image_path)))
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folders[folder], name)

    return pd.Series([resolve(p) for p in table["image_path"]], index=table.index, dtype=object)


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def _inspect(files: list[str]) -> list[str | tuple[int, int]]:
    """For each file, the reason it is not a usable JPEG, or its (size, mtime_ns) when it is one."""
    results: list[str | tuple[int, int]] = []
    for file in files:
        try:
            _, stat = inspect_jpeg_file_stat(file)
        except JpegError as err:
            results.append(str(err))
        else:
            results.append((stat.st_size, stat.st_mtime_ns))
    return results


def _check_images(table: pd.DataFrame, workers: int) -> tuple[list[Problem], dict[str, tuple[int, int]]]:
    """Open each distinct image once (header and end marker, not a full decode), over `workers` processes.

    Returns:
        The problems, and (size, mtime_ns) of each image that passed, by file.
    """
    files = table["image_file"].dropna().unique().tolist()
    # Processes, not threads: a check is ~15 us of system calls and Python, and threads fighting over the GIL
    # were slower than one. Batches, because one task per file would cost more than the check itself.
    batches = [files[i : i + _IMAGE_BATCH] for i in range(0, len(files), _IMAGE_BATCH)]
    failures: dict[str, str] = {}
    stats: dict[str, tuple[int, int]] = {}
    pool = (ProcessPoolExecutor(min(workers, len(batches)), initializer=exit_with, initargs=(os.getpid(),))
            if workers > 1 and len(batches) > 1 else None)
    try:
        checked = pool.map(_inspect, batches) if pool else map(_inspect, batches)
        with progress_bar(total=len(files), desc="checking images", unit="img",
                  disable=len(files) < _PROGRESS_MIN_IMAGES) as bar:
            for batch, results in zip(batches, checked, strict=True):
                bar.update(len(batch))
                for file, result in zip(batch, results, strict=True):
                    if isinstance(result, str):
                        failures[file] = result
                    else:
                        stats[file] = result
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    bad = table["image_file"].isin(failures.keys())
    problems = []
    for row, shown, file in zip(table.index[bad], table["image_path"][bad], table["image_file"][bad], strict=True):
        failure = failures[file]
        kind = "image missing" if failure == "file not found" else "image not a decodable JPEG"
        reason = f"image {_show(shown)}: {failure}"
        problems.append(Problem(int(row), "image_path", reason, excludable=True, kind=kind))
    return problems, stats


def _check_duplicate_images(table: pd.DataFrame) -> list[Problem]:
    """Every use of an image after its first names the row that used it first."""
    files = table["image_file"]
    named = files.notna()
    # Group by the bytes of the path: a non-UTF-8 file name (a surrogate in Python) has no arrow string form.
    keys = files[named].map(os.fsencode)
    first_row = pd.Series(table.index[named], index=table.index[named]).groupby(keys).transform("first")
    repeat = first_row.index[first_row.index != first_row.to_numpy()]
    reasons = [f"same image file as row {first_row[r]}" for r in repeat]
    return _problems(repeat, "image_path", reasons, "duplicate image")


# ---- consistency across rows of a patient -------------------------------------------------------------------------


def _check_split_leaks(table: pd.DataFrame) -> list[Problem]:
    """A patient in both train and test leaks the test set into training: report each of its test rows."""
    train = table["split"].eq("train") & table["patient_id"].notna()
    first_train = pd.Series(table.index[train]).groupby(table.loc[train, "patient_id"].to_numpy()).first()
    leaked = table["split"].eq("test") & table["patient_id"].isin(first_train.index)
    rows = table.index[leaked]
    reasons = [
        f"this row's patient also has train rows (row {first_train[p]}); a patient belongs to one split"
        for p in table.loc[leaked, "patient_id"]
    ]
    return _problems(rows, "split", reasons, "patient in train and test")


def _check_label_conflicts(table: pd.DataFrame) -> list[Problem]:
    """Images of one study (one patient, without study_id) share the MRI read, so their labels must agree."""
    keys = [table["patient_id"]]
    if "study_id" in table:
        # rows without a study_id are grouped by patient among themselves
        keys.append(table["study_id"].astype(object).where(table["study_id"].notna(), ""))
    scope = "patient and study" if "study_id" in table else "patient"
    study = table.groupby(keys).ngroup().to_numpy()  # -1 where patient_id is empty
    problems = []
    for column in (c for c in LEVEL_COLUMNS if c in table):
        labels = pd.to_numeric(table[column], errors="coerce")
        valid = labels[labels.isin([0, 1]) & (study >= 0)]
        groups = study[valid.index]
        first_value = valid.groupby(groups).transform("first")
        first_row = pd.Series(valid.index, index=valid.index).groupby(groups).transform("first")
        differs = valid.index[valid.to_numpy() != first_value.to_numpy()]
        reasons = [
            f"label {labels[r]:g} differs from row {first_row[r]} ({first_value[r]:g}) of the same {scope}"
            for r in differs
        ]
        problems += _problems(differs, column, reasons, "labels differ within a study")
    return problems


def _check_dates(table: pd.DataFrame) -> list[Problem]:
    """Unparseable dates are errors; X-ray and MRI more than MAX_XRAY_MRI_DAYS apart exclude the row, as in
    the paper. Empty date cells are allowed: the gap is then not checked (the summary counts them)."""
    parsed, problems = {}, []
    for column in ("xray_date", "mri_date"):
        if column in table:
            parsed[column] = pd.to_datetime(table[column], errors="coerce", format="ISO8601")
            bad = parsed[column].isna() & ~_empty(table[column])
            reasons = [f"{_show(v)} is not an ISO date (YYYY-MM-DD)" for v in table.loc[bad, column]]
            problems += _problems(table.index[bad], column, reasons, "bad date")
    if len(parsed) == 2:
        days = xray_mri_gap_days(parsed["xray_date"], parsed["mri_date"])
        apart = too_far_apart(days)
        reasons = [f"X-ray and MRI {d:.0f} days apart (more than {MAX_XRAY_MRI_DAYS})" for d in days[apart]]
        problems += _problems(
            table.index[apart], "mri_date", reasons, f"X-ray/MRI > {MAX_XRAY_MRI_DAYS} days apart", excludable=True
        )
    return problems


# ---- finishing ----------------------------------------------------------------------------------------------------


def _convert_valid_columns(table: pd.DataFrame, problems: list[Problem]) -> None:
    """Give clean label and age columns their numeric types, so `hnp shard` needs no conversions."""
    faulty = {p.column for p in problems if p.row is not None and not p.excludable}
    for column in (c for c in LEVEL_COLUMNS if c in table and c not in faulty):
        table[column] = pd.to_numeric(table[column]).astype("int64")
    if "age" in table and "age" not in faulty:
        table["age"] = pd.to_numeric(table["age"])


def _redact(problems: list[Problem], table: pd.DataFrame) -> list[Problem]:
    """Replace any copy of the row's patient_id inside a reason (an image path can embed it)."""
    if "patient_id" not in table:
        return problems
    patients = table["patient_id"]
    redacted = []
    for problem in problems:
        patient = None if problem.row is None else patients.iat[problem.row]
        if not _is_blank(patient) and len(str(patient)) >= _MIN_REDACTED_ID and str(patient) in problem.reason:
            problem = replace(problem, reason=problem.reason.replace(str(patient), "<patient_id>"))
        redacted.append(problem)
    return redacted


def _csv_lines(path: Path, rows: int) -> list[int] | None:
    """The line each CSV record starts on (header = line 1), counting quoted newlines and skipping blank lines
    as pandas does; None when the count disagrees with pandas, rather than print wrong line numbers."""
    lines = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        start = reader.line_num + 1
        for record in reader:
            if record:
                lines.append(start)
            start = reader.line_num + 1
    return lines if len(lines) == rows else None


def _locate(problems: list[Problem], path: Path, rows: int) -> list[Problem]:
    """Attach the file name and CSV line to each problem, and sort: file-level first, then by row."""
    lines = None
    if path.suffix.lower() == ".csv" and any(p.row is not None for p in problems):
        lines = _csv_lines(path, rows)
    located = [
        replace(p, file=path.name, line=None if lines is None or p.row is None else lines[p.row]) for p in problems
    ]
    return sorted(located, key=lambda p: -1 if p.row is None else p.row)


# ---- summary ------------------------------------------------------------------------------------------------------


def _split_lines(kept: pd.DataFrame) -> list[str]:
    if "split" not in kept:
        return []
    lines = []
    for split in SPLITS:
        rows = kept[kept["split"] == split]
        patients = f" of {rows['patient_id'].nunique():,} patients" if "patient_id" in kept else ""
        lines.append(f"{split}: {len(rows):,} images{patients}")
    if not kept["split"].eq("test").any():
        lines.append("warning: no test rows; the test set will be empty")
    return lines


def _view_lines(kept: pd.DataFrame) -> list[str]:
    if "view" not in kept:
        return ["views: no view column"]
    counts = kept["view"].value_counts(dropna=False)
    return ["views: " + (", ".join(f"{view} {n:,}" for view, n in counts.items()) or "none")]


def _prevalence_lines(kept: pd.DataFrame) -> list[str]:
    """Positive images per level and split, as in the paper's Table 1 (invalid labels left out)."""
    levels = [c for c in LEVEL_COLUMNS if c in kept]
    if not levels or "split" not in kept:
        return []
    labels = kept[levels].apply(pd.to_numeric, errors="coerce").where(lambda x: x.isin([0, 1]))
    labels["any"] = labels.max(axis=1, skipna=False)
    names = [LEVELS[LEVEL_COLUMNS.index(c)] for c in levels] + ["any"]
    lines = ["positive images per level:", f"{'split':<6}" + "".join(f"{n:>16}" for n in names)]
    for split in SPLITS:
        rows = labels[kept["split"] == split]
        cells = [f"{int(rows[c].sum()):,} ({rows[c].mean():.1%})" if rows[c].count() else "-" for c in rows]
        lines.append(f"{split:<6}" + "".join(f"{cell:>16}" for cell in cells))
    return lines


def _exclusion_lines(problems: list[Problem]) -> list[str]:
    first_kind: dict[int, str] = {}
    for problem in problems:
        if problem.excludable and problem.row is not None:
            first_kind.setdefault(problem.row, problem.kind)
    counts = Counter(first_kind.values())
    return [f"excluded rows, {kind}: {n:,}" for kind, n in counts.most_common()]


def _unchecked_date_lines(kept: pd.DataFrame) -> list[str]:
    if not {"xray_date", "mri_date"} <= set(kept):
        return ["X-ray/MRI gap not checked: no xray_date and mri_date columns"]
    unchecked = int((_empty(kept["xray_date"]) | _empty(kept["mri_date"])).sum())
    return [f"X-ray/MRI gap not checked (a date is empty): {unchecked:,} rows"] if unchecked else []
