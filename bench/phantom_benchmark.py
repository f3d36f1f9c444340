"""A trained run's test AUC on a phantom beside the phantom's ceiling and the paper's Table 5, per level, per image
and per patient: the table of BENCHMARKS.md's "phantom difficulty" section.

    hnp phantom --out B/phantom --patients 2000 --difficulty paper --prevalence paper --test-fraction 0.4
    hnp shard --manifest B/phantom/manifest.parquet --out B/shards
    hnp train --config tiny --shards B/shards --out B/run
    hnp eval --run B/run --shards B/shards --out B/report --gradcam-top 0
    python bench/phantom_benchmark.py --phantom B/phantom --report B/report

Per image: the 4-fold bagged probability of each test radiograph (report/predictions_images.parquet); per patient:
the mean over the patient's radiographs (report/predictions_patients.parquet), as `hnp eval` scores it. The
ceiling is that of the same test split (phantom/ceiling.json), paired by `phantom.ceiling.beside_ceiling` as
`hnp eval --truth` pairs them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from eval.report import PAPER_TABLE5
from hnp.levels import LEVELS
from hnp.predictions import label_column
from phantom.ceiling import beside_ceiling, ceiling_lines, count_warning

COLUMNS = (("image", "model"), ("image", "ceiling"), ("patient", "model"), ("patient", "ceiling"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", type=Path, required=True, help="the phantom folder (ceiling.json)")
    parser.add_argument("--report", type=Path, required=True, help="the report folder of hnp eval")
    return parser.parse_args()


def auc_text(auc: float | None) -> str:
    return "–" if auc is None else f"{auc:.3f}"


def mean_auc(aucs: list[float | None]) -> float | None:
    """The mean over the levels that have an AUC (a small test split may leave a level with one class)."""
    known = [auc for auc in aucs if auc is not None]
    return float(np.mean(known)) if known else None


def main(args: argparse.Namespace) -> None:
    images = pd.read_parquet(args.report / "predictions_images.parquet")
    patients = pd.read_parquet(args.report / "predictions_patients.parquet")
    block = beside_ceiling(args.phantom / "truth.parquet", images, patients)
    if "missing" in block:
        raise SystemExit(ceiling_lines(block)[0])
    print(f"difficulty {block['difficulty']}, prevalence {block['prevalence']}; test split: {len(images)} images "
          f"of {len(patients)} patients")
    print("| level | model per image | ceiling per image | model per patient | ceiling per patient "
          "| paper Table 5 (per patient) | test patients with HNP |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for level in LEVELS:
        figures = block["targets"][level]
        cells = [figures[scope][who] for scope, who in COLUMNS] + [PAPER_TABLE5[level][3]]
        positives = int(patients[label_column(level)].sum())
        print(f"| {level} | " + " | ".join(auc_text(c) for c in cells) + f" | {positives} |")
    means = [mean_auc([block["targets"][lv][scope][who] for lv in LEVELS]) for scope, who in COLUMNS]
    means.append(mean_auc([PAPER_TABLE5[lv][3] for lv in LEVELS]))
    print("| mean of levels | " + " | ".join(auc_text(m) for m in means) + " | |")
    print("\n".join(count_warning(block)))


if __name__ == "__main__":
    main(parse_args())
