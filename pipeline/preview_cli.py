"""Write what the model will see, to check the preprocessing by eye before a long run.

    hnp preview --shards shards/ --split fold0 --n 16 --out preview/
    hnp preview --shards shards/ --split test --config paper --set data.resize=pad --out preview/
    hnp preview --shards shards/ --split fold1 --training --set data.augment.enabled=true --out preview_aug/

Writes preview.png (a grid of the preprocessed inputs titled with key, positive levels and age), images.npy
(the exact float32 (N, C, S, S) tensors), labels.npy ((N, 7): 5 levels, any, age) and keys.txt.
Runs the configured loader (data.loader) on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="output folder of hnp shard (has dataset.json)")
    parser.add_argument("--split", default="fold0", help="fold0..fold{k-1} or test (default: %(default)s)")
    parser.add_argument("--n", type=int, default=16, help="number of images (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="folder for preview.png and the .npy files")
    parser.add_argument("--config", help="config name (paper, tiny, ...) or YAML file; its data section is used "
                        "(default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.image_size=380 (repeatable)")
    parser.add_argument("--training", action="store_true",
                        help="show the training transform (shuffled; jittered when data.augment.enabled)")


def run(args: argparse.Namespace) -> int:
    from hnp.config import load_config
    from hnp.errors import HnpError
    from pipeline.dataset import split_shards
    from pipeline.preview import write_preview

    if args.n <= 0:
        raise HnpError(f"--n must be positive, got {args.n}")
    cfg = load_config(args.config, args.overrides)
    paths = write_preview(cfg.data, split_shards(args.shards, [args.split]), args.out, count=args.n,
                          training=args.training)
    count = len(paths["keys"].read_text().split())
    if count < args.n:
        print(f"split {args.split} has only {count} images")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
