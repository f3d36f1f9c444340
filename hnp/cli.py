"""The `hnp` command line: one subcommand per stage, each defined next to the code it runs.

    hnp phantom --out data/phantom --patients 200
    hnp validate data/phantom/manifest.parquet

Each stage's `cli` module offers `add_arguments(parser)` and `run(args) -> int`; heavy imports (torch, DALI,
Ray) happen inside `run`, so `hnp --help` and `hnp validate` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hnp.errors import HnpError
from hnp.files import STORAGE_FULL, write_failed

# subcommand -> (module holding add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("phantom.cli", "write synthetic lumbar radiographs with planted per-level HNP signal"),
    "import-dicom": ("ingest.cli", "a DICOM export (folder or DICOMDIR) to JPEGs and the manifest, with MRI labels"),
    "validate": ("sharding.validate_cli", "check a manifest against the contract and summarise it"),
    "shard": ("sharding.shard_cli", "patient-grouped folds of WebDataset shards (+ DALI indexes) from a manifest"),
    "preview": ("pipeline.preview_cli", "write the preprocessed model inputs (PNG grid + .npy) to check them by eye"),
    "train": ("train.cli", "train the cross-validation folds with Ray (one TorchTrainer per fold, several at once)"),
    "eval": ("eval.cli", "bagged per-patient test metrics, paper-layout tables, ROC plot and Grad-CAM of a run"),
    "compare": ("eval.compare_cli", "paired AUC differences of evaluations of the same patients (DeLong, bootstrap)"),
    "predict": ("eval.predict_cli", "per-level HNP probability and decision for one patient's radiographs"),
    "demo": ("hnp.demo", "phantom -> validate -> shard -> train -> eval on this machine, with a closing summary"),
}

log = logging.getLogger("hnp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hnp", description="Lumbar HNP prediction from plain X-rays.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray's own output on the console (hnp train, hnp demo)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.run(args)
    except HnpError as err:
        print(f"hnp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in STORAGE_FULL:
            raise
        # a write not made through hnp.files: name its file when the error knows it, else the output folder
        where = err.filename or (f"a file in {args.out}" if getattr(args, "out", None) else "a file")
        print(f"hnp {args.command}: error: {write_failed(where, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hnp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
