"""Test shards for the study-level tests: patients with chosen studies of chosen views, each film a uniform gray
whose level names its manifest row, so a test can tell from a batch's pixels which film sits in which slot."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hnp.levels import LEVEL_COLUMNS
from sharding.build import ShardOptions, shard_manifest
from support.manifests import PATIENT_ID_PREFIX, save_rows

# Per patient, its studies (study_id -> views; None as the study_id: rows without one). The combinations the study
# loaders must handle: one film, a view twice, all views, OTHER beside AP, two studies, a patient without study_id.
STUDY_PLAN: tuple[dict[str | None, tuple[str, ...]], ...] = (
    {"A": ("AP",)},
    {"A": ("LAT", "LAT")},
    {"A": ("AP", "LAT", "OBL_L", "OBL_R", "FLEX", "EXT", "OTHER")},
    {"A": ("OTHER", "AP")},
    {"A": ("AP", "LAT"), "B": ("FLEX", "EXT")},
    {None: ("AP", "FLEX")},
)
GRAY_STEP = 3  # gray level of row r: 20 + GRAY_STEP * r (JPEG keeps a uniform image's level): copies <= 4


def row_gray(row: int) -> int:
    """The gray level of the film of manifest row `row`."""
    return 20 + GRAY_STEP * row


def write_study_manifest(folder: Path, copies: int = 3, seed: int = 0) -> Path:
    """A manifest of `copies` rounds of STUDY_PLAN's patients (the last round the test split), its films uniform
    grays (`row_gray`); labels and age per patient. Returns the manifest's path."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for copy in range(copies):
        for number, studies in enumerate(STUDY_PLAN):
            patient = copy * len(STUDY_PLAN) + number
            labels = dict(zip(LEVEL_COLUMNS, (rng.random(len(LEVEL_COLUMNS)) < 0.4).astype(int).tolist(),
                              strict=True))
            for study, views in studies.items():
                for view in views:
                    row = len(rows)
                    path = f"img/{row:05d}.jpg"
                    pixels = np.full((40 + row % 7, 36), row_gray(row), np.uint8)
                    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    assert ok
                    (folder / path).write_bytes(encoded.tobytes())
                    rows.append({"patient_id": f"{PATIENT_ID_PREFIX}{patient:05d}", "image_path": path,
                                 "split": "test" if copy == copies - 1 else "train", "age": 30.0 + patient,
                                 **labels, "view": view, "sex": "F",
                                 "study_id": None if study is None else f"ST-{patient:05d}-{study}"})
    return save_rows(folder, rows)


def build_study_shards(folder: Path, copies: int = 3, folds: int = 2) -> Path:
    """Shard `write_study_manifest(folder / "data", copies)` into small tars; returns the shard folder."""
    manifest = write_study_manifest(folder / "data", copies)
    out = folder / "shards"
    shard_manifest(ShardOptions(manifest=manifest, out=out, folds=folds, shard_bytes=4 * 2**10, progress=False))
    return out
