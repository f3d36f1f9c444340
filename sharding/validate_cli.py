"""Check a manifest against the contract (DESIGN.md) and summarise it, before `hnp shard`.

    hnp validate data/phantom/manifest.parquet --workers 8
    hnp validate manifest.csv --no-images --problems-csv problems.csv

Prints every problem (the first --show of them, all of them with --problems-csv), then patients, images,
views, per-level prevalence per split and the excluded rows by reason. Exit status 1 when the manifest has
errors; rows that would only be excluded (missing or broken images, X-ray and MRI too far apart) don't fail it.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hnp.errors import HnpError

if TYPE_CHECKING:
    from sharding.manifest import Problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="manifest file (.csv or .parquet)")
    parser.add_argument("--no-images", action="store_true", help="check the table only, don't open the images")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes for the image checks (default: %(default)s)",
    )
    parser.add_argument(
        "--show", type=int, default=50, metavar="N", help="print at most N problems (default: %(default)s)"
    )
    parser.add_argument("--problems-csv", type=Path, metavar="FILE", help="write every problem to this CSV file")


def run(args: argparse.Namespace) -> int:
    from sharding.manifest import validate_manifest

    if args.problems_csv and not args.problems_csv.parent.is_dir():
        # fail before the image checks, which can take minutes, rather than after them
        raise HnpError(f"{args.problems_csv}: cannot write the problems file: no folder {args.problems_csv.parent}")
    check = validate_manifest(args.manifest, check_images=not args.no_images, workers=args.workers)
    for problem in check.problems[: args.show]:
        print(("excluded: " if problem.excludable else "error: ") + str(problem))
    if len(check.problems) > args.show:
        print(
            f"... and {len(check.problems) - args.show:,} more"
            + ("" if args.problems_csv else " (--problems-csv FILE lists them all)")
        )
    if args.problems_csv:
        write_problems_csv(check.problems, args.problems_csv)
        print(f"wrote {len(check.problems):,} problems to {args.problems_csv}")
    print(check.summary())
    return 1 if check.errors else 0


def write_problems_csv(problems: list[Problem], path: Path) -> None:
    """One line per problem: row, CSV line, column, kind, excludable, reason (never a patient_id).

    Args:
        problems: the problems of one manifest.
        path: the CSV file to write.

    Raises:
        HnpError: the file cannot be written.
    """
    try:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "line", "column", "kind", "excludable", "reason"])
            writer.writerows([p.row, p.line, p.column, p.kind, p.excludable, p.reason] for p in problems)
    except OSError as err:
        raise HnpError(f"{path}: cannot write the problems file: {err.strerror or err}") from None
