"""The phantom's ground truth: three Parquet tables written by `hnp phantom` beside the manifest, and their readers.

`truth.parquet`, one row per radiograph, in manifest row order:
    row, image_path, patient, view, height, width
    <level>_x, <level>_y, <level>_half_height, <level>_half_width, <level>_angle   for each of LEVELS: the disc
        centre, half-extents (pixels) and angle (degrees; the disc's across direction is (cos a, sin a), y down)
    posterior_<level>   the ideal observer's P(HNP) from this film alone (phantom.ceiling)

`truth_signs.parquet`, one row per radiograph x level x sign (manifest row order, then LEVELS, then SIGNS):
    row, image_path, patient, level, sign
    planted     the patient carries the sign at that level
    visible     this radiograph shows it (planted, and the view shows that sign; never for instability, which only a
                FLEX and an EXT film together show)
    severity    0..1 (0 where not planted); magnitude: in the sign's unit (phantom.signs.SIGN_UNITS)
    side        "L"/"R" for planted facet and scoliosis signs (which facet joint; the side the disc closes on),
                else ""
    x0, y0, x1, y1   where the sign lies in this radiograph (pixels, clipped to the image), also where it is not
                visible: the place to look, e.g. the disc box for narrowing

`truth_patients.parquet`, one row per patient x level x sign (patient, then LEVELS, then SIGNS): the latent state
    patient, split, age, views ("AP,LAT,..."), level, hnp, silent (a herniation that carries no sign), posterior
    (the ideal observer's P(HNP) from all the patient's films), sign, planted, severity, magnitude, side,
    observed (some film of the patient shows it; instability: the patient has both FLEX and EXT films)

`row` is the manifest row number (shard sample keys are derived from it by the shard codec) and `patient` the
patient's running number (as in the image names `images/p<patient>_<k>.jpg`); no patient or study ID appears. A
patient table joins to images through `patient` in truth.parquet.

    from phantom.truth import read_truth_table
    signs = read_truth_table(Path("demo/phantom/truth_signs.parquet"), "signs")
    shown = signs[signs["visible"]]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hnp.errors import HnpError
from hnp.files import atomic_write
from hnp.levels import LEVELS
from phantom.anatomy import Patient
from phantom.signs import SIGNS

TRUTH_FILES: dict[str, str] = {"images": "truth.parquet", "signs": "truth_signs.parquet",
                               "patients": "truth_patients.parquet"}
DISC_FIELDS: tuple[str, ...] = ("x", "y", "half_height", "half_width", "angle")
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "x1", "y1")
TRUTH_COLUMNS: dict[str, tuple[str, ...]] = {
    "images": ("row", "image_path", "patient", "view", "height", "width",
               *(f"{level}_{field}" for level in LEVELS for field in DISC_FIELDS),
               *(f"posterior_{level}" for level in LEVELS)),
    "signs": ("row", "image_path", "patient", "level", "sign", "planted", "visible", "severity", "magnitude", "side",
              *BOX_COLUMNS),
    "patients": ("patient", "split", "age", "views", "level", "hnp", "silent", "posterior", "sign", "planted",
                 "severity", "magnitude", "side", "observed"),
}
SIDED_SIGNS: tuple[str, ...] = ("facet", "scoliosis")  # signs whose side means something


@dataclass(frozen=True)
class ImageTruth:
    """One radiograph's truth as the renderer returns it.

    Args:
        image_path: relative path, as in the manifest.
        patient: the patient's running number.
        view: the film's view.
        size: (height, width).
        discs: the disc truth (`phantom.render.disc_truth`).
        boxes: (5, 7, 4) sign boxes in pixels.
        visible: (5, 7) what this film shows.
        posterior: (5,) the ideal observer's P(HNP) from this film.
    """

    image_path: str
    patient: int
    view: str
    size: tuple[int, int]
    discs: dict[str, float]
    boxes: np.ndarray
    visible: np.ndarray
    posterior: np.ndarray


@dataclass(frozen=True)
class PatientTruth:
    """One patient's latent state with what all their films show.

    Args:
        index: running number.
        split: "train" or "test".
        patient: the drawn patient.
        observed: (5, 7) shown by some film (or the FLEX/EXT pair).
        posterior: (5,) the ideal observer's P(HNP) from all films.
    """

    index: int
    split: str
    patient: Patient
    observed: np.ndarray
    posterior: np.ndarray


def image_table(images: list[ImageTruth]) -> pd.DataFrame:
    """truth.parquet's frame; `row` is the position in `images` (= the manifest row)."""
    records = [{"row": row, "image_path": t.image_path, "patient": t.patient, "view": t.view, "height": t.size[0],
                "width": t.size[1], **t.discs, **{f"posterior_{lv}": float(p) for lv, p in zip(LEVELS, t.posterior,
                                                                                               strict=True)}}
               for row, t in enumerate(images)]
    return pd.DataFrame(records, columns=list(TRUTH_COLUMNS["images"]))


def sign_table(images: list[ImageTruth], patients: dict[int, Patient]) -> pd.DataFrame:
    """truth_signs.parquet's frame, built column-wise (35 rows per radiograph).

    Args:
        images: in manifest row order.
        patients: running number -> patient, for the planted state.
    """
    cells = len(LEVELS) * len(SIGNS)
    signs = [patients[t.patient].signs for t in images]
    side = np.concatenate([_meaningful_side(s.side, s.planted).ravel() for s in signs]) if images else []
    boxes = np.concatenate([t.boxes.reshape(cells, 4) for t in images]) if images else np.zeros((0, 4))
    columns = {
        "row": np.repeat(np.arange(len(images)), cells),
        "image_path": np.repeat([t.image_path for t in images], cells),
        "patient": np.repeat([t.patient for t in images], cells),
        "level": np.tile(np.repeat(LEVELS, len(SIGNS)), len(images)),
        "sign": np.tile(SIGNS, len(LEVELS) * len(images)),
        "planted": _flat([s.planted for s in signs], bool),
        "visible": _flat([t.visible for t in images], bool),
        "severity": _flat([s.severity for s in signs], float),
        "magnitude": _flat([s.magnitude for s in signs], float),
        "side": np.asarray(side, dtype=object),
        **{name: boxes[:, i] for i, name in enumerate(BOX_COLUMNS)},
    }
    return pd.DataFrame(columns, columns=list(TRUTH_COLUMNS["signs"]))


def patient_table(patients: list[PatientTruth]) -> pd.DataFrame:
    """truth_patients.parquet's frame (35 rows per patient)."""
    cells = len(LEVELS) * len(SIGNS)

    def per_level(values: list[np.ndarray]) -> np.ndarray:
        return np.repeat(np.concatenate(values), len(SIGNS)) if values else np.zeros(0)

    columns = {
        "patient": np.repeat([t.index for t in patients], cells),
        "split": np.repeat([t.split for t in patients], cells),
        "age": np.repeat([t.patient.age for t in patients], cells),
        "views": np.repeat([",".join(t.patient.views) for t in patients], cells),
        "level": np.tile(np.repeat(LEVELS, len(SIGNS)), len(patients)),
        "hnp": per_level([np.array(t.patient.labels, dtype=bool) for t in patients]).astype(bool),
        "silent": per_level([t.patient.signs.silent for t in patients]).astype(bool),
        "posterior": per_level([t.posterior for t in patients]).astype(float),
        "sign": np.tile(SIGNS, len(LEVELS) * len(patients)),
        "planted": _flat([t.patient.signs.planted for t in patients], bool),
        "severity": _flat([t.patient.signs.severity for t in patients], float),
        "magnitude": _flat([t.patient.signs.magnitude for t in patients], float),
        "side": np.asarray(_flat([_meaningful_side(t.patient.signs.side, t.patient.signs.planted)
                                  for t in patients], object), dtype=object),
        "observed": _flat([t.observed for t in patients], bool),
    }
    return pd.DataFrame(columns, columns=list(TRUTH_COLUMNS["patients"]))


def write_truth_tables(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Write the three tables into `out` under TRUTH_FILES names, each atomically."""
    for kind, frame in tables.items():
        atomic_write(out / TRUTH_FILES[kind], lambda tmp, frame=frame: frame.to_parquet(tmp, index=False))


def read_truth_table(path: Path, kind: str) -> pd.DataFrame:
    """Read one truth table, checked for the columns of its kind.

    Args:
        path: the Parquet file.
        kind: "images" (truth.parquet), "signs" (truth_signs.parquet) or "patients" (truth_patients.parquet).
    """
    if kind not in TRUTH_COLUMNS:
        raise HnpError(f"unknown truth table kind {kind!r}: choose one of {', '.join(TRUTH_COLUMNS)}")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for foreign or damaged files
        raise HnpError(f"{path}: not a readable Parquet file: {err}") from err
    missing = [column for column in TRUTH_COLUMNS[kind] if column not in frame]
    if missing:
        raise HnpError(f"{path}: not a phantom {TRUTH_FILES[kind]} (missing {', '.join(missing[:4])}); "
                       "it is written by hnp phantom")
    return frame


def _flat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]).astype(dtype) if arrays else np.zeros(0, dtype)


def _meaningful_side(side: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """(5, 7) the side where it means something (a planted facet or scoliosis sign), else ""."""
    sided = np.isin(np.array(SIGNS), SIDED_SIGNS)[None, :] & planted
    return np.where(sided, side, "").astype(object)
