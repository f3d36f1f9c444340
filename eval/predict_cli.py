"""Predict HNP per lumbar level for one patient's radiographs with a trained run's bagged fold models.

    hnp predict --run runs/tiny xray_ap.jpg xray_lat.jpg
    hnp predict --run runs/paper --age 54 --gradcam gradcam_out/ *.jpg > result.json
    hnp predict --run runs/fusion --views AP,LAT,FLEX,EXT ap.jpg lat.jpg flex.jpg ext.jpg   # a fusion run

Prints a table (stderr) and the result as JSON (stdout): per level, and for "any", the probability (mean over
the fold models, then over the images), the threshold (mean of the folds' Youden-J thresholds unless
--threshold fixed:X) and the decision. The images get the same preprocessing as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.map_options import add_map_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="the patient's radiographs (JPEG)")
    # dest: `args.run` is taken by hnp.cli (the subcommand function)
    parser.add_argument("--run", dest="run_dir", metavar="RUN", type=Path, required=True,
                        help="run folder written by `hnp train` (fold*/best.pt)")
    parser.add_argument("--age", type=float, help="the patient's age in years (recorded; compared for levels_age)")
    parser.add_argument("--threshold", default="fold-mean", metavar="RULE",
                        help="fold-mean or fixed:X (default: %(default)s)")
    parser.add_argument("--gradcam", type=Path, metavar="DIR", help="write a Grad-CAM heatmap per image and level")
    add_map_arguments(parser)
    parser.add_argument("--views", type=lambda text: text.split(","), metavar="V1,V2,...",
                        help="each image's view in order (AP, LAT, OBL_L, OBL_R, FLEX, EXT, OTHER): a fusion run "
                             "scores the images together as one study")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from eval.predict import format_table, predict_patient

    result = predict_patient(args.run_dir, args.images, age=args.age, threshold=args.threshold, device=args.device,
                             gradcam_dir=args.gradcam, gradcam_method=args.gradcam_method,
                             gradcam_layer=args.gradcam_layer, views=args.views)
    print(format_table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0
