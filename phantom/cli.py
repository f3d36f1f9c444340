"""Write synthetic lumbar radiographs with planted per-level HNP signal, in the manifest contract of DESIGN.md.

    hnp phantom --out data/phantom --patients 200 --workers 2
    hnp phantom --out data/small --patients 40 --size 256x200 --prevalence balanced

Each patient has 1-6 grayscale JPEGs (views AP, LAT, OBL_L, OBL_R, FLEX, EXT) of five lumbar vertebrae over a
sacrum, all sharing the patient's age and labels. HNP at a level narrows that disc space clearly, and often adds
osteophyte spurs and endplate sclerosis there; age raises prevalence and narrows every disc a little (a
confounder). Pose, exposure, contrast, blur and noise vary per image.

Writes to OUT:
  images/pNNNNNN_K.jpg   the radiographs (named by running number, never by patient ID)
  manifest.parquet|csv   patient_id, image_path, split, age, L1_2..L5_S1, view, sex, study_id, xray_date, mri_date
  truth.parquet          per image: each level's disc centre <level>_x/_y, _half_height, _half_width (pixels)
                         and _angle (degrees; the disc's across direction is (cos a, sin a), y pointing down)

The same --seed gives identical bytes whatever --workers is.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from phantom.anatomy import PREVALENCE_MODES

log = logging.getLogger("hnp.phantom")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `hnp phantom`."""
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be absent or empty)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients (each has 1-6 images)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--size", default="512x400", help="image size HxW in pixels (default 512x400)")
    parser.add_argument("--prevalence", choices=PREVALENCE_MODES, default="paper",
                        help="paper: per-level prevalence of the paper's Table 1 (3-29%%), modulated by age; "
                             "balanced: about 40%% at every level, for small test sets (default paper)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of patients in the test split, in [0, 1) (default 0.1)")
    parser.add_argument("--workers", type=int, default=1, help="parallel rendering processes (default 1)")


def run(args: argparse.Namespace) -> int:
    """Generate the data set and log what was written (counts only: no patient identifiers)."""
    from hnp.levels import LEVEL_COLUMNS
    from phantom.generate import PhantomConfig, generate, parse_size

    config = PhantomConfig(out=args.out, patients=args.patients, seed=args.seed, size=parse_size(args.size),
                           prevalence=args.prevalence, test_fraction=args.test_fraction, workers=args.workers)
    start = time.perf_counter()
    manifest = generate(config)
    seconds = time.perf_counter() - start
    patients = manifest.drop_duplicates("patient_id")
    log.info("wrote %d images of %d patients (%d test) to %s in %.1f s (%.0f images/s)", len(manifest),
             len(patients), int((patients["split"] == "test").sum()), config.out, seconds, len(manifest) / seconds)
    log.info("patients with HNP per level: %s",
             ", ".join(f"{c} {int(patients[c].sum())}" for c in LEVEL_COLUMNS))
    return 0
