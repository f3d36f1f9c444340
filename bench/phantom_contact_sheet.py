"""Contact sheet of phantom radiographs for one difficulty preset, one column per view, committed as
docs/phantom_contact_sheet_<preset>.png.

    python bench/phantom_contact_sheet.py --difficulty easy --out docs/phantom_contact_sheet_easy.png
    python bench/phantom_contact_sheet.py --difficulty paper --out docs/phantom_contact_sheet_paper.png

Rows: a healthy 28-year-old; a 68-year-old with HNP at L4-5 and L5-S1 whose signs the preset drew (the first draw
from --seed on in which the herniated levels carry at least three signs, so the sheet has something to show; many
`paper` herniations show nothing); the same images after CLAHE (as the training pipeline sees them) with the boxes
of truth_signs.parquet for every sign that image shows (colour per sign, legend at the bottom).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from hnp.levels import LEVELS
from phantom.anatomy import PHANTOM_VIEWS, Patient, age_fraction, sample_anatomy
from phantom.render import render_view
from phantom.signs import DIFFICULTIES, SIGNS, Difficulty, difficulty_preset, sample_signs

THUMB = (256, 200)  # (H, W) of each tile
HEADER = 28
SIGN_COLOURS = {  # BGR
    "narrowing": (40, 40, 230), "listhesis": (40, 200, 40), "instability": (230, 120, 40),
    "osteophyte": (0, 220, 255), "sclerosis": (220, 60, 220), "scoliosis": (255, 255, 0), "facet": (140, 140, 255),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--difficulty", choices=tuple(DIFFICULTIES), default="paper")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=4)
    return parser.parse_args()


def make_patient(rng: np.random.Generator, age: int, labels: tuple[int, ...], difficulty: Difficulty,
                 min_signs: int = 0) -> Patient:
    """A patient with chosen age and labels, all views taken; signs redrawn until the herniated levels carry at
    least `min_signs` planted signs."""
    anatomy = sample_anatomy(rng, age, difficulty.segment_play)
    while True:
        signs = sample_signs(rng, labels, age_fraction(age), difficulty)
        if signs.planted[np.array(labels, dtype=bool)].sum() >= min_signs:
            return Patient(age=age, sex="F", labels=labels, views=PHANTOM_VIEWS, anatomy=anatomy, signs=signs,
                           difficulty=difficulty)


def sign_boxes(image: np.ndarray, boxes: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Colour copy of `image` with the box of every sign it shows."""
    colour = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for k, j in zip(*np.nonzero(visible), strict=True):
        x0, y0, x1, y1 = np.round(boxes[k, j]).astype(int)
        cv2.rectangle(colour, (x0, y0), (x1, y1), SIGN_COLOURS[SIGNS[j]], 2, cv2.LINE_AA)
    return colour


def tile(image: np.ndarray, caption: str) -> np.ndarray:
    """Image shrunk to THUMB under a caption strip."""
    small = cv2.resize(image, THUMB[::-1], interpolation=cv2.INTER_AREA)
    small = small if small.ndim == 3 else cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    strip = np.full((HEADER, THUMB[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, small])


def legend(width: int) -> np.ndarray:
    """A strip naming each sign's box colour."""
    strip = np.full((HEADER, width, 3), 255, np.uint8)
    x = 6
    for sign, colour in SIGN_COLOURS.items():
        cv2.rectangle(strip, (x, 8), (x + 14, 20), colour, -1)
        cv2.putText(strip, sign, (x + 18, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += 24 + 9 * len(sign)
    return strip


def main(args: argparse.Namespace) -> None:
    difficulty = difficulty_preset(args.difficulty)
    out = args.out or Path(f"docs/phantom_contact_sheet_{difficulty.name}.png")
    rng = np.random.default_rng(args.seed)
    healthy = make_patient(rng, 28, (0, 0, 0, 0, 0), difficulty)
    sick = make_patient(rng, 68, (0, 0, 0, 1, 1), difficulty, min_signs=3)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    sick_levels = ", ".join(level for level, label in zip(LEVELS, sick.labels, strict=True) if label)
    rows = [[], [], []]
    for view in PHANTOM_VIEWS:
        rows[0].append(tile(render_view(healthy, view, rng, (512, 400)).pixels, f"{view}  age 28, healthy"))
        film = render_view(sick, view, rng, (512, 400))
        rows[1].append(tile(film.pixels, f"{view}  age 68, HNP {sick_levels}"))
        shown = sick.signs.visible((view,), difficulty)
        rows[2].append(tile(sign_boxes(clahe.apply(film.pixels), film.boxes, shown), f"{view}  CLAHE + signs shown"))
    sheet = np.vstack([np.hstack(row) for row in rows])
    sheet = np.vstack([sheet, legend(sheet.shape[1])])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out}")


if __name__ == "__main__":
    main(parse_args())
