"""From a manifest to shards: validate, set rows aside, pseudonymize, assign folds, plan, write, record.

    summary = shard_manifest(ShardOptions(manifest=Path("manifest.parquet"), out=Path("shards"), workers=2))
    print(summary.report())

The steps, in order: the manifest is validated (sharding.manifest) and refused if it has errors; excludable rows
(missing or broken images, X-ray and MRI too far apart) go to `excluded.csv`; patient and study identifiers
become keyed pseudonyms (sharding.pseudonym); train rows get patient-grouped stratified folds (sharding.folds);
each split's samples are shuffled with the seed and cut into shards (sharding.shards), which are written in
parallel; each split's study index (sharding.studies), then `dataset.json` and `table1.md` are written last, so
their presence means the shards are complete.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hnp.errors import HnpError
from hnp.files import atomic_write_text
from hnp.levels import LEVEL_COLUMNS
from hnp.shard_format import (
    DATASET_FILE,
    SampleMeta,
    Study,
    dataset_json_text,
    encode_label_vector,
    sample_key,
    split_names,
)
from sharding.dataset_json import dataset_record, excluded_csv_text, split_record
from sharding.folds import assign_folds, table1, table1_markdown
from sharding.pseudonym import load_or_create_key, pseudonymize_column, scrub
from sharding.shards import (
    Encoding,
    Sample,
    ShardResult,
    plan_shards,
    remove_stale_files,
    write_shards,
)
from sharding.studies import group_studies, write_study_index

log = logging.getLogger("hnp.shard")

_SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class ShardOptions:
    """What `hnp shard` was asked to do (one field per command-line option)."""

    manifest: Path
    out: Path
    folds: int = 4
    seed: int = 0
    shard_bytes: int = 256 * 2**20
    max_side: int | None = None
    jpeg_quality: int = 95
    workers: int = 1
    id_key: Path | None = None
    strict: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ShardSummary:
    """What a run produced: row counts, the dataset.json document and Table 1."""

    rows_manifest: int
    rows_sharded: int
    rows_excluded: int
    shards_written: int
    shards_kept: int
    dataset: dict
    table1: str

    def report(self) -> str:
        """The counts and Table 1, as printed at the end of `hnp shard`."""
        lines = [
            f"rows: {self.rows_manifest:,} in the manifest = {self.rows_sharded:,} sharded "
            f"+ {self.rows_excluded:,} excluded (excluded.csv)",
            f"shards: {self.shards_written} written, {self.shards_kept} kept from an earlier run",
        ]
        for split, record in self.dataset["splits"].items():
            lines.append(f"{split}: {record['samples']:,} images of {record['patients']:,} patients "
                         f"in {len(record['shards'])} shards")
        return "\n".join(lines) + "\n\nTable 1 (images per level):\n" + self.table1


def shard_manifest(options: ShardOptions) -> ShardSummary:
    """Run the whole `hnp shard` stage; see the module docstring for the steps.

    Args:
        options: the manifest, output folder and sharding options.

    Raises:
        HnpError: the manifest has errors (or, with `strict`, rows to exclude), or a file cannot be read.
    """
    from sharding.manifest import validate_manifest

    check = validate_manifest(options.manifest, check_images=True, workers=max(1, options.workers))
    _refuse(check.errors, "the manifest has errors; fix them and run again (`hnp validate` lists them all)")
    if options.strict and check.exclusions:
        _refuse([p for p in check.problems if p.excludable], "--strict: rows would be excluded")
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    # dataset.json marks a complete dataset: remove the old one before anything can change under it.
    (out / DATASET_FILE).unlink(missing_ok=True)
    table = check.table
    key = load_or_create_key(options.id_key, out)
    patient_ids = table["patient_id"].astype(str)
    patients = patient_ids.map(pseudonymize_column(key, patient_ids))
    studies = _study_pseudonyms(table, key)
    kept = table.drop(index=list(check.exclusions))
    splits = assign_splits(kept, patient_ids.loc[kept.index], options.folds, options.seed)
    encoding = Encoding(options.max_side, options.jpeg_quality)
    columns = sample_columns(table, patients, studies, check.image_stats)
    specs, study_index = [], {}
    for split in split_names(options.folds):
        rows = shuffled_rows(splits.index[splits == split], options.seed, split)
        samples = [build_sample(columns, row) for row in rows]
        specs += plan_shards(split, samples, options.shard_bytes)
        study_index[split] = group_studies(columns, rows)
    for name in remove_stale_files(out, specs):
        log.info("removed %s (partial, or not part of this plan)", name)
    excluded_rows = [(row, scrub(str(table["image_path"].iat[row]), patient_ids.iat[row], patients.iat[row]), reason)
                     for row, reason in check.exclusions.items()]
    atomic_write_text(out / "excluded.csv", excluded_csv_text(excluded_rows))
    results = write_shards(specs, out, encoding, options.workers, options.progress)
    return _finish(options, table, splits, patients, results, study_index)


def _refuse(problems: list, headline: str) -> None:
    if not problems:
        return
    shown = "\n".join(f"  {problem}" for problem in problems[:_SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - _SHOWN_PROBLEMS:,} more" if len(problems) > _SHOWN_PROBLEMS else ""
    raise HnpError(f"{headline} ({len(problems):,}):\n{shown}{more}")


def _study_pseudonyms(table: pd.DataFrame, key: bytes) -> list[str | None]:
    if "study_id" not in table:
        return [None] * len(table)
    present = table["study_id"].notna()
    ids = table["study_id"].astype(str).where(present)
    mapping = pseudonymize_column(key, ids[present], namespace="study")
    return [mapping[value] if ok else None for value, ok in zip(ids, present, strict=True)]


def assign_splits(kept: pd.DataFrame, patient_ids: pd.Series, folds: int, seed: int) -> pd.Series:
    """Output split ("fold0".., "test") of every kept row; train rows get patient-grouped stratified folds.

    Args:
        kept: the manifest rows to shard (index = manifest row).
        patient_ids: raw patient identifiers of those rows (kept in memory only: the grouping must not depend on
            the pseudonym key, so one seed gives one assignment whoever shards).
        folds: number of folds.
        seed: the fold seed.
    """
    train = kept.index[kept["split"] == "train"]
    if not len(train):
        raise HnpError("no train rows left to make folds from (all rows are test or excluded)")
    splits = pd.Series("test", index=kept.index, dtype=object)
    fold = assign_folds(patient_ids.loc[train], kept.loc[train, list(LEVEL_COLUMNS)], folds, seed)
    splits.loc[train] = [f"fold{k}" for k in fold]
    return splits


def shuffled_rows(rows: pd.Index, seed: int, split: str) -> list[int]:
    """A split's manifest rows in a seeded random order (DALI reads a tar front to back, so this is the order
    a training epoch starts from). Independent of the manifest's row order within the split.

    Args:
        rows: the split's manifest rows.
        seed: the run's seed.
        split: the split name, mixed into the seed so every split gets its own order.
    """
    ordered = np.sort(np.asarray(rows, dtype=np.int64))
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    return ordered[rng.permutation(len(ordered))].tolist()


def sample_columns(table: pd.DataFrame, patients: pd.Series, studies: list[str | None],
                   image_stats: dict[str, tuple[int, int]]) -> dict[str, list]:
    """The manifest columns a sample needs, as plain lists (row lookups in lists are ~100x cheaper than
    `DataFrame.iloc`, which matters at 180k rows).

    Args:
        table: the validated manifest (labels int64, age numeric, `image_file` resolved).
        patients: patient pseudonym per row.
        studies: study pseudonym (or None) per row.
        image_stats: (size, mtime_ns) of each checked image, by file (`ManifestCheck.image_stats`).
    """
    def text(column: str) -> list[str | None]:
        if column not in table:
            return [None] * len(table)
        return [None if pd.isna(value) else str(value) for value in table[column]]

    return {
        "labels": table[list(LEVEL_COLUMNS)].astype("int64").to_numpy().tolist(),
        "age": table["age"].astype(float).tolist(),
        "view": text("view"),
        "sex": text("sex"),
        "image": [str(file) for file in table["image_file"]],  # not astype(str): a non-UTF-8 path has no arrow form
        "image_stat": [image_stats.get(file) for file in table["image_file"]],
        "patient": patients.tolist(),
        "study": studies,
    }


def build_sample(columns: dict[str, list], row: int) -> Sample:
    """The shard sample of one manifest row: key, image file, `.json` and `.lbl` members (hnp.shard_format).

    Args:
        columns: from `sample_columns`.
        row: the manifest row.
    """
    labels = tuple(columns["labels"][row])
    age = columns["age"][row]
    meta = SampleMeta(patient=columns["patient"][row], age=age, view=columns["view"][row], sex=columns["sex"][row],
                      study=columns["study"][row], labels=labels, row=row)
    # size and mtime as the validation read the file: the writer refuses it if it has changed since
    size, mtime_ns = columns["image_stat"][row]
    return Sample(row=row, key=sample_key(row), image=columns["image"][row], image_size=size,
                  image_mtime_ns=mtime_ns, meta=meta.to_json(), label_vector=encode_label_vector(labels, age))


def _finish(options: ShardOptions, table: pd.DataFrame, splits: pd.Series, patients: pd.Series,
            results: list[ShardResult], study_index: dict[str, list[Study]]) -> ShardSummary:
    """Write the study indexes, then dataset.json and table1.md, last, and check that every row is accounted for."""
    per_split = {}
    for split in split_names(options.folds):
        rows = splits.index[splits == split]
        shards = [r for r in results if r.name.startswith(f"{split}/")]
        if sum(s.samples for s in shards) != len(rows):
            raise HnpError(f"internal error: {split} has {len(rows)} rows but its shards hold "
                           f"{sum(s.samples for s in shards)} samples")
        per_split[split] = {**split_record(table.loc[rows], patients.loc[rows], shards),
                            "studies": write_study_index(options.out, split, study_index[split])}
    rows = {"manifest": len(table), "sharded": len(splits), "excluded": len(table) - len(splits)}
    record = dataset_record(folds=options.folds, seed=options.seed,
                            encoding=Encoding(options.max_side, options.jpeg_quality), rows=rows,
                            splits=per_split, reencoded=any(r.reencoded for r in results))
    table_text = table1_markdown(table1({split: table.loc[splits.index[splits == split]]
                                         for split in split_names(options.folds)}))
    atomic_write_text(options.out / "table1.md", "# Table 1: images per level and split\n\n" + table_text)
    atomic_write_text(options.out / DATASET_FILE, dataset_json_text(record))
    written = sum(not r.reused for r in results)
    return ShardSummary(rows["manifest"], rows["sharded"], rows["excluded"], written, len(results) - written,
                        record, table_text)
