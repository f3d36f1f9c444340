"""Run the whole system on this machine with phantom radiographs: the embedded default.

    hnp demo                          # phantom -> validate -> shard -> train (4 folds, Ray) -> eval -> report
    hnp demo --out demo --patients 450 --workers 2

Each stage is the same command a user runs on real data (shown in the log), with the CPU test scale
(the built-in `tiny` config). Run it again with the same --out and it picks up where it stopped: the phantom and the
shards are kept, finished folds are not retrained. At the end a table says how long each stage took, the test
split's per-level ROC AUC, and which files to open.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hnp.errors import HnpError
from hnp.levels import LEVELS
from phantom.ceiling import CEILING_FILE

log = logging.getLogger("hnp.demo")


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def phantom(self) -> Path:
        return self.root / "phantom"

    @property
    def manifest(self) -> Path:
        return self.phantom / "manifest.parquet"

    @property
    def phantom_finished(self) -> bool:
        """`hnp phantom` writes ceiling.json last."""
        return (self.phantom / CEILING_FILE).is_file()

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def run(self) -> Path:
        return self.root / "runs" / "tiny"

    @property
    def report(self) -> Path:
        return self.root / "reports" / "tiny"


# The tiny config at 160 px instead of 128: HiResCAM at the auto layer (blocks.2, 20 x 20 cells) then points at the
# herniated disc in 81% of the top images against 56% at 128 px, for about 1.3x the training time (BENCHMARKS.md,
# "Explanations on the default demo"). 450 patients for 3 epochs in one cosine cycle: the maps meet the explanation
# targets at every level (69%; 300 patients x 4 epochs: 48%, 600 x 2: 57%) in about 1.1x the training of 300 x 4
# (BENCHMARKS.md, "hnp demo"). --set after these still wins. The checks run on 5 images per level, not 20.
DEMO_TRAINING = ("data.image_size=160", "train.epochs=3", "optim.t_0=3")
DEMO_EXPLANATIONS = ("--gradcam-method", "hirescam", "--explain-checks", "5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo"), help="demo folder (default: %(default)s)")
    parser.add_argument("--patients", type=int, default=450, help="phantom patients (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom and the folds (default: 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the phantom and the shards (default: all cores)")
    parser.add_argument("--difficulty", default="easy",
                        help="the phantom's preset, easy or paper (`hnp phantom --help`; default: %(default)s)")
    parser.add_argument("--config", default="tiny", help="training config, a name or a YAML file (default: tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config value (repeatable)")
    parser.add_argument("--gradcam-top", type=int, default=20, metavar="K",
                        help="Grad-CAM of the K most confident test images per level (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.patients < 8:
        raise HnpError(f"--patients {args.patients}: a 4-fold demo needs at least 8 patients")
    paths = DemoPaths(args.out)
    if paths.phantom.is_dir() and any(paths.phantom.iterdir()) and not paths.phantom_finished:  # a kill's leftovers
        log.warning("%s: an unfinished phantom of an earlier run; it is made again", paths.phantom)
        shutil.rmtree(paths.phantom)
    timings: list[tuple[str, float]] = []
    for stage, argv in demo_stages(args, paths):
        timings.append((stage, _run_stage(stage, argv, getattr(args, "verbose", False))))
    print(summary(paths, timings))
    return 0


def demo_stages(args: argparse.Namespace, paths: DemoPaths) -> list[tuple[str, list[str]]]:
    """The demo as the `hnp` commands a user would type, in order."""
    workers = str(max(1, args.workers))
    stages = []
    if not paths.phantom_finished:  # a rerun keeps the phantom it made before
        stages.append(("phantom", ["phantom", "--out", str(paths.phantom), "--patients", str(args.patients),
                                   "--seed", str(args.seed), "--difficulty", args.difficulty, "--prevalence",
                                   "balanced", "--workers", workers]))
    stages += [
        ("validate", ["validate", str(paths.manifest), "--workers", workers]),
        ("shard", ["shard", "--manifest", str(paths.manifest), "--out", str(paths.shards), "--seed", str(args.seed),
                   "--shard-size", "16MB", "--workers", workers]),
        ("train", ["train", "--config", str(args.config), "--shards", str(paths.shards), "--out", str(paths.run),
                   *[item for override in (*DEMO_TRAINING, *args.overrides) for item in ("--set", override)]]),
        ("eval", ["eval", "--run", str(paths.run), "--shards", str(paths.shards), "--out", str(paths.report),
                  "--gradcam-top", str(args.gradcam_top), *DEMO_EXPLANATIONS,
                  "--truth", str(paths.phantom / "truth.parquet")]),
    ]
    return stages


def _run_stage(stage: str, argv: list[str], verbose: bool) -> float:
    from hnp.cli import main

    log.info("── %s: hnp %s", stage, " ".join(argv))
    start = time.perf_counter()
    status = main(["-v", *argv] if verbose else argv)
    if status == 130:  # the stage was interrupted (Ctrl-C): no cause to fix
        log.warning("interrupted at `hnp %s`: run `hnp demo` again, finished stages are kept", argv[0])
        raise KeyboardInterrupt
    if status != 0:
        raise HnpError(f"the demo stopped at `hnp {argv[0]}` (exit status {status}); its messages are above. "
                       "Fix the cause and run `hnp demo` again: finished stages are kept.")
    return time.perf_counter() - start


def summary(paths: DemoPaths, timings: list[tuple[str, float]]) -> str:
    """The closing table: stage times, the test split's per-level AUC beside the paper's Table 5 and the phantom's
    per-patient ceiling, and the files to open."""
    from eval.report import PAPER_TABLE5

    metrics = json.loads((paths.report / "metrics.json").read_text())
    aucs = {level: metrics["metrics"][level]["roc_auc"] for level in LEVELS}
    ceilings = _patient_ceilings(metrics)
    lines = ["", "hnp demo finished", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings]
    lines += [f"| total | {sum(seconds for _, seconds in timings):.0f} |", "",
              "| level | test ROC AUC (per patient, 4-fold bagged) | phantom ceiling | paper (Table 5, real films) |",
              "|---|---:|---:|---:|"]
    # A level whose test patients are all positive or all negative has no AUC (tiny demos only).
    lines += [f"| {level} | {_format_auc(auc)} | {_format_auc(ceilings.get(level))} | {PAPER_TABLE5[level][3]:.2f} |"
              for level, auc in aucs.items()]
    lines += [f"| mean | {_format_auc(_mean(aucs.values()))} | {_format_auc(_mean(ceilings.values()))} | "
              f"{_mean(row[3] for row in PAPER_TABLE5.values()):.2f} |", ""]
    lines += ["The ceiling is the best AUC any model could reach on these test patients (from the phantom's own "
              "probabilities); the paper's figures are EfficientNet-B5 on 162k real radiographs.", ""]
    opens = [(paths.report / "report.html", "the report page: tables, calibration, ROC, Grad-CAM (open in a browser)"),
             (paths.report / "report.md", "the paper's tables beside ours, the phantom's ceiling, the pointing game"),
             (paths.report / "roc.png", "ROC curve per level"),
             (paths.report / "gradcam", "Grad-CAM overlays (index.csv lists them)"),
             (paths.run, "checkpoints and history.csv per fold; logs/ray.log holds Ray's own output"),
             (paths.phantom / "images", "the synthetic radiographs")]
    width = max(len(str(path)) for path, _ in opens)
    lines += ["Open:", *[f"  {str(path):<{width}}  {what}" for path, what in opens], ""]
    return "\n".join(lines)


def _patient_ceilings(metrics: dict) -> dict[str, float | None]:
    """Per level, the phantom's per-patient test ceiling from metrics.json's `ceiling` block (empty without one)."""
    targets = metrics.get("ceiling", {}).get("targets", {})
    return {level: targets[level]["patient"]["ceiling"] for level in LEVELS if level in targets}


def _mean(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _format_auc(auc: float | None) -> str:
    return "n/a (one class in test)" if auc is None else f"{auc:.3f}"
