"""Paired comparison of evaluations of the same test patients: per target, the ROC AUC difference with DeLong's
test and a paired patient bootstrap beside it.

    hnp compare reports/any reports/levels reports/levels_age --out reports/compare
    hnp compare reports/fusion reports/levels --bootstrap 2000

Each folder needs `predictions_patients.parquet` (written by `hnp eval`). Every pair of folders is compared on the
targets both hold; folders whose test patients or labels differ are refused, saying how. Writes compare.md (the
table), compare.csv (the same numbers) and compare.png (a forest plot per pair) into --out, and prints the table.
p-values are two-sided and not corrected for the several levels and pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", metavar="REPORT_DIR", type=Path, nargs="+",
                        help="two or more report folders of `hnp eval` (predictions_patients.parquet)")
    parser.add_argument("--out", type=Path, default=Path("reports") / "compare",
                        help="folder for compare.md, compare.csv, compare.png (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="paired patient bootstrap resamples; 0 = DeLong only (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from eval.compare import compare_reports, comparison_markdown, plot_comparison
    from hnp.errors import HnpError
    from hnp.files import atomic_write, atomic_write_text

    if args.bootstrap < 0:
        raise HnpError("--bootstrap must be 0 or more")
    table = compare_reports(args.reports, n_boot=args.bootstrap, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(table)
    intro = (f"Paired comparison of {len(args.reports)} evaluations of the same {int(table['n'].iloc[0])} test "
             f"patients: ROC AUC difference A - B per target, DeLong's test and a {args.bootstrap}-resample paired "
             f"patient bootstrap (seed {args.seed}). Two-sided p-values, not corrected for multiple comparisons.")
    figure = "![AUC differences per target](compare.png)"
    atomic_write_text(args.out / "compare.md", f"# Comparison\n\n{intro}\n\n{text}\n\n{figure}\n")
    atomic_write(args.out / "compare.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    atomic_write(args.out / "compare.png", lambda tmp: plot_comparison(table, tmp))
    print(text)
    print(f"comparison: {args.out / 'compare.md'}")
    return 0
