"""One fold of the demo-scale model on a phantom, without Ray, scored beside the phantom's ceiling: the cheap way
to see where a difficulty preset puts a model (the full measurement is `hnp train` + `hnp eval --truth`,
docs/phantom.md).

    python bench/phantom_fold.py --out /tmp/fold --patients 1600 --difficulty paper --prevalence paper

Makes OUT/phantom (`hnp phantom`) and OUT/shards (`hnp shard`) unless they exist, trains fold 0 of the built-in
`tiny` config (`test_efficientnet`, 128 px, 4 epochs; `--set` overrides) on folds 1-3 with `train.loop`, and prints
per level the best epoch's validation ROC AUC per image and per patient (mean of the patient's images) next to the
ideal observer's on the same images and patients (phantom.ceiling). Validation images are matched to the
phantom's truth through the manifest row of their sample key (`hnp.shard_format.key_row`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hnp.cli import main as hnp_main
from hnp.config import load_config
from hnp.levels import LEVELS
from hnp.shard_format import key_row
from phantom.ceiling import scope_aucs
from phantom.truth import read_truth_table
from pipeline.dataset import split_shards
from pipeline.loader import build_loader
from train.loop import FoldContext, train_fold


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=1600)
    parser.add_argument("--difficulty", default="paper")
    parser.add_argument("--prevalence", default="paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args()


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The phantom and its shards (reused when present)."""
    phantom, shards = args.out / "phantom", args.out / "shards"
    if not (phantom / "ceiling.json").is_file():
        assert hnp_main(["phantom", "--out", str(phantom), "--patients", str(args.patients), "--seed", str(args.seed),
                         "--difficulty", args.difficulty, "--prevalence", args.prevalence,
                         "--workers", str(args.workers)]) == 0
    if not (shards / "dataset.json").is_file():
        assert hnp_main(["shard", "--manifest", str(phantom / "manifest.parquet"), "--out", str(shards),
                         "--workers", str(args.workers), "--no-progress"]) == 0
    return phantom, shards


def scored_frames(predictions: pd.DataFrame, phantom: Path) -> dict[str, pd.DataFrame]:
    """Model and ceiling frames (label_<level>, posterior_<level>) per image and per patient."""
    images = read_truth_table(phantom / "truth.parquet", "images").set_index("row")
    patients = read_truth_table(phantom / "truth_patients.parquet", "patients")
    patient_posterior = patients.drop_duplicates(["patient", "level"]).pivot(index="patient", columns="level",
                                                                            values="posterior")
    frame = predictions.assign(row=predictions["key"].map(key_row))
    frame["patient"] = images.loc[frame["row"], "patient"].to_numpy()
    labels = {f"label_{lv}": frame[f"label_{lv}"].to_numpy() for lv in LEVELS}
    model_images = pd.DataFrame({**labels, **{f"posterior_{lv}": frame[f"prob_{lv}"].to_numpy() for lv in LEVELS}})
    ceiling_images = pd.DataFrame({**labels, **{f"posterior_{lv}": images.loc[frame["row"], f"posterior_{lv}"]
                                                .to_numpy() for lv in LEVELS}})
    by_patient = model_images.assign(patient=frame["patient"].to_numpy()).groupby("patient")
    model_patients = by_patient.mean()
    ceiling_patients = model_patients[[f"label_{lv}" for lv in LEVELS]].join(
        patient_posterior.loc[model_patients.index].rename(columns=lambda lv: f"posterior_{lv}"))
    return {"model image": model_images, "ceiling image": ceiling_images, "model patient": model_patients,
            "ceiling patient": ceiling_patients}


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    phantom, shards = prepare(args)
    cfg = load_config("tiny", ["wandb.mode='off'", *args.overrides])
    train_shards = split_shards(shards, ["fold1", "fold2", "fold3"])
    train = build_loader(cfg.data, train_shards, training=True, seed=cfg.train.seed)
    val = build_loader(cfg.data, split_shards(shards, ["fold0"]), training=False, seed=cfg.train.seed)
    fold_dir = args.out / "fold0"
    history = train_fold(cfg, fold_dir, train, val, FoldContext(fold=0))
    predictions = pd.read_parquet(fold_dir / "val_predictions.parquet")
    aucs = {name: scope_aucs(frame) for name, frame in scored_frames(predictions, phantom).items()}
    print(f"{args.difficulty} difficulty, {args.prevalence} prevalence, {args.patients} patients; fold 0 validation, "
          f"best of {len(history)} epochs; overrides {args.overrides}")
    print("| target | " + " | ".join(aucs) + " | positives (images / patients) |")
    print("|---|" + "---:|" * (len(aucs) + 1))
    for target in (*LEVELS, "any"):
        cells = ["–" if a[target]["auc"] is None else f"{a[target]['auc']:.3f}" for a in aucs.values()]
        counts = f"{aucs['model image'][target]['n_pos']} / {aucs['model patient'][target]['n_pos']}"
        print(f"| {target} | " + " | ".join(cells) + f" | {counts} |")
    means = {name: np.mean([a[lv]["auc"] for lv in LEVELS if a[lv]["auc"] is not None]) for name, a in aucs.items()}
    print("| mean of levels | " + " | ".join(f"{m:.3f}" for m in means.values()) + " | |")


if __name__ == "__main__":
    main(parse_args())
