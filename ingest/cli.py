"""Import a DICOM export (a folder tree or a DICOMDIR): one 8-bit JPEG per lumbar radiograph and the manifest.

    hnp import-dicom /mnt/pacs-export --out data --labels mri_labels.csv --workers 8
    hnp import-dicom /media/cd/DICOMDIR --out data --labels mri_labels.csv --test-from 2020-03-01
    hnp import-dicom /mnt/pacs-export --out inventory          # no labels: OUT/inventory.csv, what the export holds

Keeps CR and DX images of the lumbar spine (--any-body-part: every radiograph), shown as a viewer shows them
(Modality LUT, VOI LUT or window, MONOCHROME1 inverted, padding black). Writes OUT/images/NNNNNNN.jpg,
OUT/manifest.csv and .parquet (the manifest contract: `hnp validate`, then `hnp shard`), and OUT/skipped.csv: every
other input file with its reason. Labels: a CSV of MRI reads, columns patient_id, mri_date, L1_2, L2_3, L3_4, L4_5,
L5_S1; an image takes its patient's read nearest in time, if within 90 days. Split: patients first X-rayed on or
after --test-from are test patients; without it, the latest --test-fraction of the patients. Interrupted? Run the
same command again: converted files are kept. The manifest holds patient IDs and dates (PHI); nothing else does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

from hnp.errors import HnpError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, metavar="SRC", help="the export: a folder (walked) or a DICOMDIR file")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty, or one to finish)")
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="MRI reads: patient_id, mri_date, L1_2..L5_S1 (without: an inventory, no manifest)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--test-from", type=_date, metavar="YYYY-MM-DD",
                       help="patients first X-rayed on or after this date are the test split")
    split.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                       help="without --test-from: the latest F of the patients are the test split (default: 0.1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="conversion processes (default: all cores, %(default)s)")
    parser.add_argument("--any-body-part", action="store_true",
                        help="keep every CR/DX radiograph, whatever its body part and descriptions say")
    parser.add_argument("--keep-burned-in", action="store_true",
                        help="keep images flagged BurnedInAnnotation = YES (their pixels may show names)")
    parser.add_argument("--jpeg-quality", type=int, default=95, metavar="Q", help="JPEG quality (default: 95)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def run(args: argparse.Namespace) -> int:
    from ingest.convert import ConvertSettings
    from ingest.importer import ImportOptions, import_dicom
    from ingest.outputs import SplitRule

    if not 0.0 <= args.test_fraction < 1.0:
        raise HnpError(f"--test-fraction {args.test_fraction}: must be in [0, 1)")
    if not 1 <= args.jpeg_quality <= 100:
        raise HnpError(f"--jpeg-quality {args.jpeg_quality}: must be 1-100")
    if args.workers < 1:
        raise HnpError(f"--workers {args.workers}: must be at least 1")
    settings = ConvertSettings(any_body_part=args.any_body_part, keep_burned_in=args.keep_burned_in,
                               jpeg_quality=args.jpeg_quality)
    options = ImportOptions(src=args.src, out=args.out, labels=args.labels, workers=args.workers,
                            split=SplitRule(test_from=args.test_from, test_fraction=args.test_fraction),
                            settings=settings, progress=not args.no_progress)
    print(import_dicom(options).report(), end="")
    return 0
