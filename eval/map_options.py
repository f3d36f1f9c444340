"""The class activation map options of `hnp eval` and `hnp predict`, importable without torch or pytorch-grad-cam
(`eval.gradcam` implements them with both), so that building the command line (`hnp --help`) stays quick."""

from __future__ import annotations

import argparse

METHOD_NAMES = ("gradcam", "hirescam", "layercam", "gradcam++")  # eval.gradcam.METHODS, in this order
# BENCHMARKS.md, explanations: 81% pointing at 160 px against LayerCAM's 60%, and the randomization check passes it
DEFAULT_METHOD = "hirescam"
AUTO_LAYER, LAST_CONV = "auto", "last-conv"
MIN_CELLS = 16  # cells along each side of the map: about three per level along a lumbar spine filling 60% of it


def add_map_arguments(parser: argparse.ArgumentParser) -> None:
    """`--gradcam-method` and `--gradcam-layer`, shared by `hnp eval` and `hnp predict`."""
    parser.add_argument("--gradcam-method", choices=METHOD_NAMES, default=DEFAULT_METHOD,
                        help="class activation map method (default: %(default)s; gradcam = the paper's)")
    parser.add_argument("--gradcam-layer", metavar="NAME[,NAME]", default=AUTO_LAYER,
                        help=f"{AUTO_LAYER} = the deepest stage with at least {MIN_CELLS} map cells along each side at "
                             f"the model's input size; {LAST_CONV} = the last convolution layer (the paper's); or "
                             "module names (default: %(default)s)")
