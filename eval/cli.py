"""Evaluate a trained run on the test shards: fold bagging, per-patient metrics, tables, ROC and Grad-CAM.

    hnp eval --run runs/tiny --shards shards --out reports/tiny
    hnp eval --run runs/paper --shards /data/shards --gradcam-top 300 --threshold fixed:0.5
    hnp eval --run runs/demo --shards demo/shards --truth demo/phantom/truth.parquet   # + pointing games
    hnp eval --run runs/paper --shards /data/shards --gradcam-method gradcam --gradcam-layer last-conv  # the paper's
    hnp eval --run runs/paper --shards /data/shards --calibrate isotonic --prevalence 0.1 --prevalence L4-5=0.3

Writes predictions_images.parquet, predictions_patients.parquet, metrics.json, metrics.csv, report.md, report.html
(one offline page with the tables, plots and a Grad-CAM gallery), roc.png, pr.png, calibration.png,
operating_points.csv, gradcam/ (index.csv, overlays, heatmaps), explanations.json and, with --truth,
explanations/ (a figure per level) into --out (default: reports/<run folder name>).

Calibration (ECE, Brier, reliability diagrams) and operating points (sensitivity at 90/95% specificity,
specificity at 90/95% sensitivity, PPV/NPV) are computed per patient; thresholds and the optional recalibration
(--calibrate) are fitted on the out-of-fold predictions and applied to test, never fitted on test.

Thresholds (--threshold): fold-mean = mean of the folds' Youden-J thresholds (default, as in the paper);
fixed:X = X for every level; youden-oof = Youden's J on the pooled out-of-fold predictions per patient.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.map_options import add_map_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # dest: `args.run` is taken by hnp.cli (the subcommand function)
    parser.add_argument("--run", dest="run_dir", metavar="RUN", type=Path, required=True,
                        help="run folder written by `hnp train` (fold*/best.pt)")
    parser.add_argument("--shards", type=Path, required=True, help="shard folder (dataset.json, test/*.tar)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<run folder name>)")
    parser.add_argument("--threshold", default="fold-mean", metavar="RULE",
                        help="fold-mean, youden-oof or fixed:X (default: %(default)s)")
    parser.add_argument("--gradcam-top", type=int, default=300, metavar="K",
                        help="Grad-CAM of the K most confident test images per level; 0 = none (default: %(default)s)")
    add_map_arguments(parser)
    parser.add_argument("--explain-checks", type=int, default=20, metavar="N",
                        help="deletion and randomization checks of the maps on the N most confident images per "
                             "level; 0 = none (default: %(default)s)")
    parser.add_argument("--truth", type=Path, metavar="FILE",
                        help="the phantom's truth.parquet: adds the pointing games, per-level figures and the "
                        "phantom's ceiling (ceiling.json beside it) to the report")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="patient bootstrap resamples for the ROC AUC interval (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--calibrate", choices=("platt", "isotonic"),
                        help="recalibrate the test probabilities with a map fitted on the out-of-fold predictions; "
                             "the report shows calibration before and after")
    parser.add_argument("--prevalence", action="append", default=[], metavar="P|TARGET=P",
                        help="a prevalence for PPV/NPV beside the test set's own: P for every target or TARGET=P "
                             "(e.g. L4-5=0.3); repeatable")
    parser.add_argument("--calibration-bins", type=int, default=10, metavar="N",
                        help="equal-width bins of the reliability diagrams and ECE (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--loader", choices=("dali", "torch"), help="override the run's data loader")
    parser.add_argument("--batch-size", type=int, metavar="N", help="override the run's batch size")
    parser.add_argument("--no-wandb", action="store_true", help="don't log the test metrics to W&B")


def run(args: argparse.Namespace) -> int:
    from eval.run_eval import EvalOptions, run_eval
    from hnp.errors import HnpError

    if min(args.gradcam_top, args.bootstrap, args.explain_checks) < 0 or (
            args.batch_size is not None and args.batch_size <= 0):
        raise HnpError("--gradcam-top, --explain-checks and --bootstrap must be 0 or more, --batch-size positive")
    if args.calibration_bins < 1:
        raise HnpError("--calibration-bins must be 1 or more")
    if args.truth is not None and not args.truth.is_file():
        raise HnpError(f"--truth {args.truth}: no such file")
    options = EvalOptions(
        run=args.run_dir, shards=args.shards, out=args.out or Path("reports") / args.run_dir.resolve().name,
        threshold=args.threshold, gradcam_top=args.gradcam_top, gradcam_method=args.gradcam_method,
        gradcam_layer=args.gradcam_layer, truth=args.truth, explain_checks=args.explain_checks,
        bootstrap=args.bootstrap, seed=args.seed, calibrate=args.calibrate, prevalence=tuple(args.prevalence),
        calibration_bins=args.calibration_bins, device=args.device, loader=args.loader,
        batch_size=args.batch_size, wandb=not args.no_wandb,
    )
    result = run_eval(options)
    for name, row in result["metrics"].items():
        print(f"{name:>6}  AUC {row['roc_auc']:.3f}  F1 {row['f1']:.3f}  threshold {row['threshold']:.3f}")
    if result["ceiling"] is not None:
        from phantom.ceiling import ceiling_lines

        print("\n".join(ceiling_lines(result["ceiling"])))
    print(f"report: {options.out / 'report.md'} (in a browser: {options.out / 'report.html'})")
    return 0
