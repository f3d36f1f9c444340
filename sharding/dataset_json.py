"""The records beside the shards: the `dataset.json` document (its format, reader and version are
`hnp.shard_format`'s) and `excluded.csv` (DESIGN.md, shard contract).

Neither holds a timestamp or a raw patient identifier, so an unchanged input gives byte-identical files.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

from hnp.levels import LEVEL_COLUMNS, LEVELS
from hnp.shard_format import LABEL_VECTOR, SCHEMA_VERSION, any_label
from sharding.shards import Encoding, ShardResult


def split_record(labels: pd.DataFrame, patients: pd.Series, shards: list[ShardResult]) -> dict:
    """dataset.json's entry for one split.

    Args:
        labels: the split's rows, level columns (LEVEL_COLUMNS).
        patients: the split's patient pseudonyms per row.
        shards: the split's written shards, in order.
    """
    level_labels = labels[list(LEVEL_COLUMNS)].astype("int64")
    positives = {level: int(level_labels[column].sum()) for level, column in zip(LEVELS, LEVEL_COLUMNS, strict=True)}
    positives["any"] = int(any_label(level_labels.to_numpy()).sum()) if len(labels) else 0
    return {
        "samples": len(labels),
        "patients": int(patients.nunique()),
        "positives": positives,
        "shards": [{"file": s.file, "index": s.index, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
                   for s in shards],
    }


def dataset_record(*, folds: int, seed: int, encoding: Encoding, rows: dict[str, int], splits: dict[str, dict],
                   reencoded: bool) -> dict:
    """The whole dataset.json document.

    Args:
        folds: number of cross-validation folds.
        seed: the seed of the fold assignment and the sample order.
        encoding: the image encoding options.
        rows: {"manifest": n, "sharded": n, "excluded": n}.
        splits: split name -> `split_record`.
        reencoded: whether any image was downscaled and re-encoded.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "levels": list(LEVELS),
        "label_vector": list(LABEL_VECTOR),
        "folds": folds,
        "seed": seed,
        "image_encoding": {
            "reencoded": reencoded,
            "max_side": encoding.max_side,
            "jpeg_quality": encoding.jpeg_quality if encoding.max_side is not None else None,
        },
        "rows": rows,
        "splits": splits,
    }


def excluded_csv_text(rows: list[tuple[int, str, str]]) -> str:
    """excluded.csv: one line per manifest row left out, sorted by row.

    Args:
        rows: (row, image_path, reason) with the patient identifier already removed from path and reason.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "image_path", "reason"])
    writer.writerows(sorted(rows))
    return buffer.getvalue()
