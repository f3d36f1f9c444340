"""A trained run's test AUC on a phantom beside the phantom's ceiling and the paper's Table 5, per level, per image
and per patient: the table of BENCHMARKS.md's "phantom difficulty" section.

    hnp phantom --out B/phantom --patients 2000 --difficulty paper --prevalence paper --test-fraction 0.4
    hnp shard --manifest B/phantom/manifest.parquet --out B/shards
    hnp train --config configs/tiny.yaml --shards B/shards --out B/run
    hnp eval --run B/run --shards B/shards --out B/report --gradcam-top 0
    python bench/phantom_benchmark.py --phantom B/phantom --report B/report

Per image: the 4-fold bagged probability of each test radiograph (report/predictions_images.parquet); per patient:
the mean over the patient's radiographs (report/predictions_patients.parquet), as `hnp eval` scores it. The
ceiling is that of the same test split (phantom/ceiling.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from eval.report import PAPER_TABLE5
from hnp.levels import LEVEL_COLUMNS, LEVELS
from phantom.ceiling import ceiling_auc, read_ceiling, target_auc


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", type=Path, required=True, help="the phantom folder (ceiling.json)")
    parser.add_argument("--report", type=Path, required=True, help="the report folder of hnp eval")
    return parser.parse_args()


def model_aucs(frame: pd.DataFrame) -> dict[str, dict]:
    """Per level, the AUC (with counts) of `prob_<c>` against `label_<c>`."""
    return {level: target_auc(frame[f"label_{c}"], frame[f"prob_{c}"])
            for level, c in zip(LEVELS, LEVEL_COLUMNS, strict=True)}


def main(args: argparse.Namespace) -> None:
    ceiling = read_ceiling(args.phantom / "ceiling.json")
    model = {"image": model_aucs(pd.read_parquet(args.report / "predictions_images.parquet")),
             "patient": model_aucs(pd.read_parquet(args.report / "predictions_patients.parquet"))}
    print(f"difficulty {ceiling['difficulty']}, prevalence {ceiling['prevalence']}, {ceiling['patients']} patients, "
          f"seed {ceiling['seed']}; test split")
    print("| level | model per image | ceiling per image | model per patient | ceiling per patient "
          "| paper Table 5 (per patient) | test images (HNP) | test patients (HNP) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for level in LEVELS:
        cells = [model["image"][level]["auc"], ceiling_auc(ceiling, level, "image"),
                 model["patient"][level]["auc"], ceiling_auc(ceiling, level, "patient"), PAPER_TABLE5[level][3]]
        image, patient = model["image"][level], model["patient"][level]
        print(f"| {level} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
              + f" | {image['n']} ({image['n_pos']}) | {patient['n']} ({patient['n_pos']}) |")
    means = [sum(model[s][lv]["auc"] for lv in LEVELS) / len(LEVELS) for s in ("image",)]
    means += [sum(ceiling_auc(ceiling, lv, "image") for lv in LEVELS) / len(LEVELS)]
    means += [sum(model["patient"][lv]["auc"] for lv in LEVELS) / len(LEVELS)]
    means += [sum(ceiling_auc(ceiling, lv, "patient") for lv in LEVELS) / len(LEVELS)]
    means += [sum(PAPER_TABLE5[lv][3] for lv in LEVELS) / len(LEVELS)]
    print("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " | | |")


if __name__ == "__main__":
    main(parse_args())
