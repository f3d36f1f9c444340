r"""Train the folds with Ray: the script form of `hnp train` (same flags), for `ray job submit`.

On a Ray cluster (the head's job API, token auth on, see cluster/):
    ray job submit --working-dir . -- python train/run_folds.py --config paper \
        --shards /data/shards --out /data/runs/paper

The job runs in Ray's copy of the working directory, so give --shards and --out as absolute paths, on storage
every node reaches when the cluster has several.

On this machine (starts a local Ray):
    python train/run_folds.py --config tiny --shards shards/ --out runs/tiny --set train.epochs=2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run as a file from the repository root (as `ray job submit` does), the repository's packages must import
# without an install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnp.errors import HnpError  # noqa: E402
from train import cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's and the workers' own output (default: to <out>/logs/ray.log)")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return cli.run(args)
    except HnpError as err:
        print(f"run_folds: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(parse_args()))
