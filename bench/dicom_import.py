"""Benchmark `hnp import-dicom` against a bare pydicom + OpenCV decode-and-write loop on the same DX files.

    python bench/dicom_import.py make --work /tmp/hnp-dicom-bench --files 120 --copies 5 --encoding mono1_12bit
    python bench/dicom_import.py compare --work /tmp/hnp-dicom-bench --workers 2 --rounds 5
    python bench/dicom_import.py bare --work /tmp/hnp-dicom-bench          # one run of each side, as a whole
    python bench/dicom_import.py import --work /tmp/hnp-dicom-bench --workers 2   # process (for an outside timer)

`make` writes lumbar-radiograph-sized DX files (default 2500 x 2048, 12 bits: a 35 x 43 cm detector at ~0.17 mm)
from phantom radiographs, upscaled, in one of the test encodings (tests/support/dicom.py), each under --copies
names (hard links: 600 files to convert from 1.2 GB of disk and page cache; the import converts every one, and
only then sets the copies aside as duplicate SOP instances, so the work measured is the work of 600 files).
The bare loop is what anyone would write first, in one process: `dcmread`, `pixel_array`, a min-max stretch to 8 bits
(`cv2.normalize`), `cv2.imwrite` at quality 95. `import` is the whole import (`import_dicom`: listing, header checks,
the display pipeline, JPEGs, journal, inventory) with --workers N. Both write into a fresh folder, deleted after.

`compare` runs bare and import alternately, each in a fresh process, and prints per pair the ratio
bare / (workers x import) of the seconds each side spends on the files (the target: at least 0.9; with --workers 1
it is the import's efficiency per core), the same ratio of whole-process wall times (interpreter start-up and
imports included: a fixed cost), with --workers 1 the ratio of CPU seconds on the files (robust when neighbours
load the machine), and the driver's CPU milliseconds per file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the DX writer of the tests: one copy of that logic

from support.dicom import ENCODINGS, PatientHeader, dx_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["make", "bare", "import", "compare"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hnp-dicom-bench"))
    parser.add_argument("--files", type=int, default=120, help="make: DX files to write")
    parser.add_argument("--copies", type=int, default=5, help="make: names (hard links) per file")
    parser.add_argument("--size", default="2500x2048", help="make: image HxW (default: %(default)s)")
    parser.add_argument("--encoding", default="mono1_12bit", choices=sorted(ENCODINGS), help="make: file encoding")
    parser.add_argument("--workers", type=int, default=2, help="import: worker processes")
    parser.add_argument("--rounds", type=int, default=5, help="compare: bare/import pairs")
    return parser.parse_args()


def make(work: Path, files: int, copies: int, size: tuple[int, int], encoding: str) -> None:
    """Phantom radiographs upscaled to `size` (H, W), written as DX files under work/export/, each under `copies`
    names (hard links)."""
    from phantom.generate import PhantomConfig, generate

    if work.exists():
        shutil.rmtree(work)
    manifest = generate(PhantomConfig(out=work / "phantom", patients=max(1, files // 3), seed=0, size=(512, 416)),
                        progress=False)
    rng = np.random.default_rng(0)
    export = work / "export"
    export.mkdir(parents=True)
    for i in range(files):
        small = cv2.imread(str(work / "phantom" / manifest["image_path"].iloc[i % len(manifest)]), cv2.IMREAD_GRAYSCALE)
        large = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        noisy = np.clip(large + rng.normal(0, 2, large.shape), 0, 255).astype(np.uint8)  # detector noise
        header = PatientHeader(patient_id=f"BENCH{i // 3:05d}", study_uid=f"2.25.{10**20 + i // 3}",
                               study_date=dt.date(2019, 1, 1), age=50, view="AP")
        dx_dataset(noisy, encoding, header).save_as(export / f"IM{i:05d}.dcm", enforce_file_format=True)
    shutil.rmtree(work / "phantom")
    total = sum(p.stat().st_size for p in export.iterdir())
    for copy in range(1, copies):  # hard links: more paths to convert, no more disk or page cache
        for i in range(files):
            os.link(export / f"IM{i:05d}.dcm", export / f"IM{i:05d}-{copy}.dcm")
    print(json.dumps({"files": files, "paths": files * copies, "size": list(size), "encoding": encoding,
                      "bytes": total}))


def bare(work: Path) -> None:
    """The baseline: one process, dcmread -> pixel_array -> min-max to 8 bits -> imwrite."""
    import pydicom

    out = Path(tempfile.mkdtemp(dir=work, prefix="bare-"))
    start, cpu = time.perf_counter(), time.process_time()
    try:
        for i, path in enumerate(sorted((work / "export").iterdir())):
            pixels = pydicom.dcmread(path).pixel_array
            gray = cv2.normalize(pixels, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
            cv2.imwrite(str(out / f"{i:07d}.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        shutil.rmtree(out)
    print(json.dumps({"side": "bare", "seconds": elapsed, "cpu_s": cpu}))


def run_import(work: Path, workers: int) -> None:
    """The whole import (`ingest.importer.import_dicom`: listing, checks, display, JPEGs, journal, inventory) into a
    fresh folder. Called directly rather than through `hnp.cli`, whose parser imports every stage's CLI module and
    with them torch (about 2 s and 550 MB, once per command): a fixed start-up cost, not the import's per file."""
    from ingest.convert import ConvertSettings
    from ingest.importer import ImportOptions, import_dicom

    out = Path(tempfile.mkdtemp(dir=work, prefix="import-")) / "out"
    start, cpu = time.perf_counter(), time.process_time()
    try:
        summary = import_dicom(ImportOptions(src=work / "export", out=out, workers=workers,
                                             settings=ConvertSettings(), progress=False))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        shutil.rmtree(out.parent)
    # cpu_s: this process's CPU time, all of the work with --workers 1; with workers, the driver's alone, which says
    # whether it could keep up with many more of them
    print(json.dumps({"side": "import", "workers": workers, "seconds": elapsed, "cpu_s": cpu, "files": summary.files,
                      "driver_cpu_ms_per_file": round(1000 * cpu / summary.files, 3)}))


def _timed(argv: list[str]) -> tuple[dict, float]:
    """(what the side reports: its seconds on the files..., wall seconds of the whole process) of one run."""
    start = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def compare(work: Path, workers: int, rounds: int) -> None:
    """Bare and import in turn, each a fresh process; the ratios per pair, then their medians."""
    script = [sys.executable, str(Path(__file__).resolve())]
    _timed([*script, "bare", "--work", str(work)])  # warm-up: the page cache, the imports' .pyc files
    pairs = []
    for _ in range(rounds):
        bare, bare_process = _timed([*script, "bare", "--work", str(work)])
        done, import_process = _timed([*script, "import", "--work", str(work), "--workers", str(workers)])
        pairs.append({"bare_s": bare["seconds"], "import_s": done["seconds"],
                      "ratio": bare["seconds"] / (workers * done["seconds"]), "bare_process_s": bare_process,
                      "import_process_s": import_process, "process_ratio": bare_process / (workers * import_process),
                      "driver_cpu_ms_per_file": done["driver_cpu_ms_per_file"]})
        if workers == 1:  # every bit of the import's work is in its process: CPU seconds compare, whatever the load
            pairs[-1]["cpu_ratio"] = bare["cpu_s"] / done["cpu_s"]
        print(json.dumps({k: round(v, 3) for k, v in pairs[-1].items()}))
    print(json.dumps({"workers": workers, "rounds": rounds,
                      **{f"median_{k}": round(statistics.median(p[k] for p in pairs), 3) for k in pairs[0]}}))


def main(args: argparse.Namespace) -> None:
    if args.mode == "make":
        height, width = (int(v) for v in args.size.lower().split("x"))
        make(args.work, args.files, args.copies, (height, width), args.encoding)
    elif args.mode == "bare":
        bare(args.work)
    elif args.mode == "import":
        run_import(args.work, args.workers)
    else:
        compare(args.work, args.workers, args.rounds)


if __name__ == "__main__":
    main(parse_args())
