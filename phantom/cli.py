"""Write synthetic lumbar radiographs with planted per-level HNP signal, in the manifest contract of DESIGN.md.

    hnp phantom --out data/phantom --patients 200 --workers 2
    hnp phantom --out data/bench --patients 3000 --difficulty paper --test-fraction 0.3
    hnp phantom --out data/small --patients 40 --size 256x200 --prevalence balanced

Each patient has 1-6 grayscale JPEGs (views AP, LAT, OBL_L, OBL_R, FLEX, EXT) of five lumbar vertebrae over a
sacrum, all sharing the patient's age and labels. Age raises prevalence and narrows every disc a little (a
confounder). Pose, exposure, contrast, blur and noise vary per image. What a herniation shows (phantom.signs):
  --difficulty easy         every herniated disc is clearly narrowed in every view, often with spurs and sclerosis
  --difficulty paper        narrowing, listhesis, instability (FLEX vs EXT), osteophytes, sclerosis, scoliosis and
                            facet changes, each only in the views that show it, also without herniation (more with
                            age), and none at all for a quarter of herniations: a realistic ceiling, and evidence
                            split over views
  --difficulty instability  instability alone: only the FLEX and EXT films compared show it (the fusion benchmark)

Writes to OUT:
  images/pNNNNNN_K.jpg   the radiographs (named by running number, never by patient ID)
  manifest.parquet|csv   patient_id, image_path, split, age, L1_2..L5_S1, view, sex, study_id, xray_date, mri_date
  truth.parquet          per image: row, image_path, patient (running number), view, each level's disc centre
                         <level>_x/_y, _half_height, _half_width (pixels), _angle (degrees), posterior_<level>
  truth_signs.parquet    per image x level x sign: planted, visible in this image, severity, magnitude, box
  truth_patients.parquet per patient x level x sign: the latent state (HNP, silent, signs, what the films show)
  ceiling.json           the best ROC AUC any model could reach, per level, per image and per patient, and
                         the best a mean of the films' own scores (the paper's per-image mean) could reach

The same --seed gives identical bytes whatever --workers is.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from phantom.anatomy import PREVALENCE_MODES
from phantom.signs import DIFFICULTIES

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
    parser.add_argument("--difficulty", choices=tuple(DIFFICULTIES), default="easy",
                        help="; ".join(f"{d.name}: {d.summary}" for d in DIFFICULTIES.values())
                        + " (default easy)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of patients in the test split, in [0, 1) (default 0.1)")
    parser.add_argument("--workers", type=int, default=1, help="parallel rendering processes (default 1)")


def run(args: argparse.Namespace) -> int:
    """Generate the data set and log what was written (counts only: no patient identifiers)."""
    from hnp.levels import LEVEL_COLUMNS, LEVELS
    from phantom.ceiling import CEILING_FILE, ceiling_auc, read_ceiling
    from phantom.generate import PhantomConfig, generate, parse_size

    config = PhantomConfig(out=args.out, patients=args.patients, seed=args.seed, size=parse_size(args.size),
                           prevalence=args.prevalence, difficulty=args.difficulty, test_fraction=args.test_fraction,
                           workers=args.workers)
    start = time.perf_counter()
    manifest = generate(config)
    seconds = time.perf_counter() - start
    patients = manifest.drop_duplicates("patient_id")
    log.info("wrote %d images of %d patients (%d test) to %s in %.1f s (%.0f images/s)", len(manifest),
             len(patients), int((patients["split"] == "test").sum()), config.out, seconds, len(manifest) / seconds)
    log.info("patients with HNP per level: %s",
             ", ".join(f"{level} {int(patients[c].sum())}" for level, c in zip(LEVELS, LEVEL_COLUMNS, strict=True)))
    ceiling = read_ceiling(config.out / CEILING_FILE)
    for scope, name in (("image", "image"), ("patient", "patient"), ("film_mean", "patient as the film mean")):
        aucs = {target: ceiling_auc(ceiling, target, scope, "all") for target in (*LEVELS, "any")}
        log.info("ceiling ROC AUC per %s (all splits): %s", name,
                 ", ".join(f"{t} {'n/a' if a is None else f'{a:.3f}'}" for t, a in aucs.items()))
    return 0
