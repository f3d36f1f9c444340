r"""Pointing game, energy share and randomization check of several map methods and layers on one evaluated run.

    python bench/explain_methods.py --run demo/runs/tiny --shards demo/shards --report demo/reports/tiny \
        --truth demo/phantom/truth.parquet --specs gradcam:last-conv layercam:auto hirescam:blocks.2

The images are those `hnp eval --gradcam-top K --truth ...` scores (the true-positive top K per level, from the
report's predictions_images.parquet and metrics.json thresholds); each METHOD:LAYER spec gets the bagged maps of
the run's fold models, scored exactly as `hnp eval` scores them (`eval.pointing`), without writing overlays. The
randomization check runs on every fourth image. CPU ms per map is the process time of the map computation alone,
per image and fold model. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.explain import RANDOM_SEED  # noqa: E402
from eval.faithfulness import randomized_copy, rank_correlations  # noqa: E402
from eval.gradcam import (  # noqa: E402
    ClassActivationMap,
    bagged_maps,
    map_targets,
    resolve_layers,
    select_top,
    to_image_resolution,
)
from eval.pointing import counted_images, score_map, summarise  # noqa: E402
from eval.run_eval import eval_data_config, load_folds  # noqa: E402
from eval.samples import GrayImages  # noqa: E402
from eval.truth import PhantomTruth  # noqa: E402
from hnp.levels import LEVELS  # noqa: E402
from pipeline import preprocess, split_shards  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True, help="the run's hnp eval report folder")
    parser.add_argument("--truth", type=Path, required=True)
    parser.add_argument("--specs", nargs="+", required=True, metavar="METHOD:LAYER")
    parser.add_argument("--top", type=int, default=20, help="top images per level (default: %(default)s)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    folds = load_folds(args.run)
    data = eval_data_config(folds, None, None)
    images = pd.read_parquet(args.report / "predictions_images.parquet")
    metrics = json.loads((args.report / "metrics.json").read_text())["metrics"]
    truth = PhantomTruth(args.truth, images)
    selection = select_top(images, map_targets(folds[0].config.model.task), args.top)
    selection = selection.merge(images[["key", "view"]], on="key")
    counted = counted_images(selection, {level: metrics[level]["threshold"] for level in LEVELS}, truth)
    counted = counted.reset_index(drop=True)
    grays = GrayImages(split_shards(args.shards, ["test"]), counted["key"].unique())
    gray = {key: grays[key] for key in counted["key"].unique()}
    inputs = torch.from_numpy(np.stack([preprocess(gray[key], data) for key in counted["key"]]))
    print("| Maps | Hit rate (chance) | " + " | ".join(LEVELS) + " | Energy × chance | Median rho (random models) "
          "| CPU ms per map |")
    print("|---|---|" + "---|" * len(LEVELS) + "---|---|---|")
    for spec in args.specs:
        method, layer = spec.split(":", 1)
        layers = resolve_layers(folds[0].model, layer, (data.channels, data.image_size, data.image_size))
        cams = [ClassActivationMap(fold.model, method, layers) for fold in folds]
        start = time.process_time()
        maps = batched(cams, inputs, counted["output"].tolist())
        cpu_ms = (time.process_time() - start) / len(inputs) / len(folds) * 1000
        rows = [{"level": row.level, "view": row.view,
                 **score_map(to_image_resolution(heat, *gray[row.key].shape, data.resize), truth.levels(row.key),
                             row.level, truth.image_size(row.key), row.key)}
                for row, heat in zip(counted.itertuples(), maps.numpy(), strict=True)]
        result = summarise(pd.DataFrame(rows))
        randomized = [ClassActivationMap(randomized_copy(fold.model, RANDOM_SEED + fold.fold), method, layers)
                      for fold in folds]
        every_fourth = slice(0, len(inputs), 4)
        rho = np.median(rank_correlations(maps[every_fourth], batched(randomized, inputs[every_fourth],
                                                                      counted["output"].tolist()[every_fourth])))
        overall, per_level = result["overall"], result["levels"]
        print(f"| {cams[0].describe()} | {overall['hit_rate']:.0%} ({overall['chance_rate']:.1%}) | "
              + " | ".join(f"{per_level[level]['hits']}/{per_level[level]['n']}" for level in LEVELS)
              + f" | {overall['energy_ratio']:.1f} | {rho:.2f} | {cpu_ms:.0f} |", flush=True)


def batched(cams: list[ClassActivationMap], inputs: torch.Tensor, outputs: list[int], size: int = 16) -> torch.Tensor:
    return torch.cat([bagged_maps(cams, inputs[i:i + size], outputs[i:i + size]) for i in range(0, len(inputs), size)])


if __name__ == "__main__":
    main(parse_args())
