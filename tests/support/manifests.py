"""Tiny manifests with real JPEGs on disk, for the validation, sharding and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from hnp.levels import LEVEL_COLUMNS, PAPER_PREVALENCE

# Raw patient IDs that cannot occur by chance in any output: a test can search every byte for "PHI-MRN-".
PATIENT_ID_PREFIX = "PHI-MRN-"


def write_manifest(folder: Path, patients: int = 40, images_per_patient: int = 2, test_fraction: float = 0.2,
                   image_shape: tuple[int, int] = (32, 24), seed: int = 0, name: str = "manifest.csv") -> Path:
    """A manifest of `patients` x `images_per_patient` rows with grayscale JPEGs under `folder/img/`.

    Labels are drawn per patient (every image of a patient shares them) at the paper's per-level prevalence;
    the last `test_fraction` of the patients are test rows. Image files are named by row, not by patient.

    Args:
        folder: where the manifest and the images go.
        patients: number of patients.
        images_per_patient: rows (radiographs) per patient.
        test_fraction: share of patients in the test split.
        image_shape: (height, width) of the noise images.
        seed: random seed of labels, ages and pixels.
        name: manifest file name; `.csv` or `.parquet`.
    """
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    n_test = int(round(patients * test_fraction))
    rows = []
    for patient in range(patients):
        labels = (rng.random(len(LEVEL_COLUMNS)) < np.array(PAPER_PREVALENCE) * 2).astype(int)
        age = float(rng.integers(20, 80))
        for image in range(images_per_patient):
            row = len(rows)
            path = f"img/{row:05d}.jpg"
            pixels = rng.integers(0, 256, image_shape, dtype=np.uint8)
            ok, encoded = cv2.imencode(".jpg", pixels)
            assert ok
            (folder / path).write_bytes(encoded.tobytes())
            rows.append({"patient_id": f"{PATIENT_ID_PREFIX}{patient:05d}", "image_path": path,
                         "split": "test" if patient >= patients - n_test else "train", "age": age,
                         **dict(zip(LEVEL_COLUMNS, labels.tolist(), strict=True)),
                         "view": ("AP", "LAT")[image % 2], "sex": ("F", "M")[patient % 2],
                         "study_id": f"ST-{patient:05d}"})
    return save_rows(folder, rows, name)


def save_rows(folder: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    """Write manifest rows as `folder/name`, Parquet or CSV by the name's suffix."""
    path = folder / name
    table = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path
