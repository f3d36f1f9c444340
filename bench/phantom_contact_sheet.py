"""Contact sheet of phantom radiographs, one column per view, committed as docs/phantom_contact_sheet.png.

    python bench/phantom_contact_sheet.py --out docs/phantom_contact_sheet.png

Rows: a healthy 28-year-old; a 68-year-old with HNP at L4-5 and L5-S1 (narrowed discs, spurs, sclerotic
endplates); the same images after CLAHE (as the training pipeline sees them) with the truth.parquet disc boxes
(red: HNP, green: healthy).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from hnp.levels import LEVEL_COLUMNS, LEVELS
from phantom.anatomy import PHANTOM_VIEWS, Patient, sample_anatomy
from phantom.render import render_view

THUMB = (256, 200)  # (H, W) of each tile
HEADER = 28


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/phantom_contact_sheet.png"))
    parser.add_argument("--seed", type=int, default=4)
    return parser.parse_args()


def make_patient(rng: np.random.Generator, age: int, labels: tuple[int, ...], degenerated: bool) -> Patient:
    """A patient with chosen age and labels; `degenerated` forces spurs and sclerosis at every positive level."""
    anatomy = sample_anatomy(rng, age, labels)
    if degenerated:
        positive = np.array(labels, dtype=bool)
        anatomy = replace(anatomy, spur=np.where(positive, 4.0, 0.0), sclerosis=positive)
    return Patient(age=age, sex="F", labels=labels, views=PHANTOM_VIEWS, anatomy=anatomy)


def disc_boxes(image: np.ndarray, truth: dict[str, float], labels: tuple[int, ...]) -> np.ndarray:
    """Colour copy of `image` with each disc's truth box, red for HNP and green for healthy."""
    colour = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for column, label in zip(LEVEL_COLUMNS, labels, strict=True):
        box = ((truth[f"{column}_x"], truth[f"{column}_y"]),
               (2 * truth[f"{column}_half_width"], 2 * truth[f"{column}_half_height"]), truth[f"{column}_angle"])
        corners = np.round(cv2.boxPoints(box)).astype(np.int32)
        cv2.polylines(colour, [corners], True, (40, 40, 230) if label else (60, 200, 60), 2, cv2.LINE_AA)
    return colour


def tile(image: np.ndarray, caption: str) -> np.ndarray:
    """Image shrunk to THUMB under a caption strip."""
    small = cv2.resize(image, THUMB[::-1], interpolation=cv2.INTER_AREA)
    small = small if small.ndim == 3 else cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    strip = np.full((HEADER, THUMB[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, small])


def main(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    healthy = make_patient(rng, 28, (0, 0, 0, 0, 0), degenerated=False)
    sick = make_patient(rng, 68, (0, 0, 0, 1, 1), degenerated=True)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    sick_levels = ", ".join(level for level, label in zip(LEVELS, sick.labels, strict=True) if label)
    rows = [[], [], []]
    for view in PHANTOM_VIEWS:
        rows[0].append(tile(render_view(healthy, view, rng, (512, 400))[0], f"{view}  age 28, healthy"))
        image, truth = render_view(sick, view, rng, (512, 400))
        rows[1].append(tile(image, f"{view}  age 68, HNP {sick_levels}"))
        rows[2].append(tile(disc_boxes(clahe.apply(image), truth, sick.labels), f"{view}  CLAHE + truth boxes"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.vstack([np.hstack(row) for row in rows]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(parse_args())
