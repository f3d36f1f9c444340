"""Shard a manifest into patient-grouped folds of WebDataset tars (with DALI indexes) for training.

    hnp shard --manifest data/phantom/manifest.parquet --out shards --workers 2
    hnp shard --manifest manifest.csv --out shards --folds 4 --seed 0 --shard-size 256MB \\
        --max-side 1024 --id-key secrets/hnp.key --strict

Writes OUT/fold{k}/fold{k}-NNNNNN.tar (+ .idx), OUT/test/test-NNNNNN.tar (+ .idx), OUT/dataset.json,
OUT/excluded.csv and OUT/table1.md; without --id-key, a new pseudonym key OUT/pseudonym.key (mode 0600), kept
for reruns. Run it again after an interruption: finished shards are checked against their sha256 and kept.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="manifest file (.csv or .parquet)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the sample order (default: 0)")
    parser.add_argument("--shard-size", default="256MB", metavar="SIZE",
                        help="target shard size, e.g. 256MB, 1GB (default: %(default)s)")
    parser.add_argument("--max-side", type=int, metavar="PX",
                        help="downscale images whose long side exceeds PX and re-encode them once")
    parser.add_argument("--jpeg-quality", type=int, default=95, metavar="Q",
                        help="JPEG quality of re-encoded images, with --max-side (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes writing shards in parallel (default: %(default)s)")
    parser.add_argument("--id-key", type=Path, metavar="FILE",
                        help="secret for the patient pseudonyms (default: OUT/pseudonym.key, created if absent)")
    parser.add_argument("--strict", action="store_true", help="fail instead of excluding any row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hnp.errors import HnpError
    from sharding.build import ShardOptions, shard_manifest
    from sharding.shards import parse_byte_size

    if args.folds < 2:
        raise HnpError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    if args.max_side is not None and args.max_side < 16:
        raise HnpError(f"--max-side {args.max_side}: too small for a radiograph (at least 16 pixels)")
    if not 1 <= args.jpeg_quality <= 100:
        raise HnpError(f"--jpeg-quality {args.jpeg_quality}: must be 1-100")
    options = ShardOptions(manifest=args.manifest, out=args.out, folds=args.folds, seed=args.seed,
                           shard_bytes=parse_byte_size(args.shard_size), max_side=args.max_side,
                           jpeg_quality=args.jpeg_quality, workers=max(1, args.workers), id_key=args.id_key,
                           strict=args.strict, progress=not args.no_progress)
    summary = shard_manifest(options)
    print(summary.report(), end="")
    return 0
