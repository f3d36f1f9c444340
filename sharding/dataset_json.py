"""The small files beside the shards: `dataset.json`, `excluded.csv` and `table1.md` (DESIGN.md, shard contract).

None of them holds a timestamp or a raw patient identifier, so an unchanged input gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json

import pandas as pd

from hnp.levels import LEVEL_COLUMNS, LEVELS
from hnp.schema import LABEL_VECTOR
from sharding.shards import Encoding, ShardResult

SCHEMA_VERSION = 1


def split_record(labels: pd.DataFrame, patients: pd.Series, shards: list[ShardResult]) -> dict:
    """dataset.json's entry for one split.

    Args:
        labels: the split's rows, level columns (LEVEL_COLUMNS).
        patients: the split's patient pseudonyms per row.
        shards: the split's written shards, in order.
    """
    level_sums = labels[list(LEVEL_COLUMNS)].astype("int64")
    positives = {column: int(level_sums[column].sum()) for column in LEVEL_COLUMNS}
    positives["any"] = int(level_sums.max(axis=1).sum()) if len(labels) else 0
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


def dataset_json_text(record: dict) -> str:
    return json.dumps(record, indent=2) + "\n"


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
