"""The same spine with and without each sign of the `paper` preset, committed as docs/phantom_signs.png.

    python bench/phantom_signs_figure.py --out docs/phantom_signs.png

One row per sign, planted alone at L4-5 at severity 0.8 (left side for the sided ones). Columns, each a 2x crop
around L4-5 of the same radiograph (same pose, exposure and noise): a view that shows the sign, without it; the
same view with it; a view that hides it, with it (identical to that view without it). Instability has no single
view that shows it: its row is EXT without, EXT with (the segment's angle differs by the sign's magnitude while the
FLEX film stays the same), FLEX with.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from hnp.levels import LEVELS
from phantom.anatomy import PHANTOM_VIEWS, Patient, sample_anatomy
from phantom.render import render_view
from phantom.signs import PAPER, SIGNS, LevelSigns

LEVEL = "L4-5"
SEVERITY = 0.8
CROP = (60, 75)  # half height, half width in pixels of the 512 x 400 film
ZOOM = 2
HEADER = 24
# (view that shows it, view that hides it) per sign
VIEWS = {"narrowing": ("LAT", "AP"), "listhesis": ("LAT", "AP"), "instability": ("EXT", "FLEX"),
         "osteophyte": ("AP", "LAT"), "sclerosis": ("AP", "OBL_L"), "scoliosis": ("AP", "LAT"),
         "facet": ("OBL_L", "OBL_R")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/phantom_signs.png"))
    parser.add_argument("--seed", type=int, default=3)
    return parser.parse_args()


def only(sign: str | None) -> LevelSigns:
    """Signs with only `sign` planted, at LEVEL (nothing if None)."""
    shape = (len(LEVELS), len(SIGNS))
    planted = np.zeros(shape, dtype=bool)
    if sign is not None:
        planted[LEVELS.index(LEVEL), SIGNS.index(sign)] = True
    low, high = np.array([m.magnitude for m in PAPER.models]).T
    return LevelSigns(planted=planted, severity=np.where(planted, SEVERITY, 0.0),
                      magnitude=np.where(planted, low + (high - low) * SEVERITY, 0.0),
                      side=np.full(shape, "L"), silent=np.zeros(len(LEVELS), dtype=bool))


def crop(patient: Patient, view: str, seed: int, caption: str) -> np.ndarray:
    """2x crop around LEVEL of one film, under a caption; the same seed gives the same pose and exposure."""
    film = render_view(patient, view, np.random.default_rng(seed), (512, 400))
    x, y = int(round(film.discs[f"{LEVEL}_x"])), int(round(film.discs[f"{LEVEL}_y"]))
    padded = cv2.copyMakeBorder(film.pixels, CROP[0], CROP[0], CROP[1], CROP[1], cv2.BORDER_CONSTANT, value=0)
    part = padded[y:y + 2 * CROP[0], x:x + 2 * CROP[1]]
    part = cv2.resize(part, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_CUBIC)
    strip = np.full((HEADER, part.shape[1]), 255, np.uint8)
    cv2.putText(strip, caption, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
    return np.vstack([strip, part])


def main(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    anatomy = sample_anatomy(rng, 55, PAPER.segment_play)
    patient = Patient(age=55, sex="F", labels=(0, 0, 0, 1, 0), views=PHANTOM_VIEWS, anatomy=anatomy,
                      signs=only(None), difficulty=PAPER)
    rows = []
    for j, sign in enumerate(SIGNS):
        shows, hides = VIEWS[sign]
        film_seed = args.seed * 100 + j
        sick = replace(patient, signs=only(sign))
        rows.append(np.hstack([crop(patient, shows, film_seed, f"{sign}: {shows}, without"),
                               crop(sick, shows, film_seed, f"{shows}, with"),
                               crop(sick, hides, film_seed, f"{hides} (hides it), with")]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(parse_args())
