"""Benchmark `hnp shard` at 10k, 45k and the paper's 180,271 rows against `tar -cf` over the same files.

    python bench/shard_scale.py                       # all three sizes, 2 workers, ~4 min, writes under /tmp
    python bench/shard_scale.py --repeat 2 --markdown # as recorded in BENCHMARKS.md (~8 min)
    python bench/shard_scale.py --rows 10000 --workers 2 --work /tmp/hnp-shard-bench --markdown

A handful of phantom-like radiographs (smooth anatomy-like shading, bone-like texture and quantum noise, JPEG
quality 92) are hard-linked under a new name for every row: the manifest forbids two rows naming one file, a
hard link is a distinct path, and the page cache holds the few distinct images, so the bench measures sharding,
not image generation or cold reads. `tar` is run with --hard-dereference so it copies every file's bytes too.

Each size runs `shard_manifest` (validation, folds, planning, writing, dataset.json: the whole `hnp shard`) in a
fresh subprocess, for a per-size peak RSS of the driver and of the largest worker. Throughput is source image
bytes per second, for both tools. Outputs are deleted (and `sync`ed) between runs to stay within the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hnp.levels import LEVEL_COLUMNS, PAPER_PREVALENCE  # noqa: E402

PAPER_ROWS = 180_271
IMAGES_PER_PATIENT = 5  # the paper: 180,271 images of 34,661 patients
LINKS_PER_FOLDER = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 45_000, PAPER_ROWS])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--distinct", type=int, default=8, help="distinct images reused across rows")
    parser.add_argument("--size", default="768x624", help="image HxW (default: %(default)s)")
    parser.add_argument("--shard-size", default="256MB")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hnp-shard-bench"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate hnp shard and tar this many times per size and keep the best of each: "
                             "the machine is shared, and a neighbour's burst can halve one measurement")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for BENCHMARKS.md")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: shard one manifest, print JSON
    return parser.parse_args()


def phantom_like(rng: np.random.Generator, height: int, width: int) -> bytes:
    """A grayscale JPEG with the texture statistics of a lumbar radiograph (not anatomy: only bytes matter)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    body = 90 + 70 * np.exp(-(((x - width / 2) / (0.35 * width)) ** 2))
    spine = 60 * np.exp(-(((x - width * rng.uniform(0.45, 0.55)) / (0.08 * width)) ** 2))
    discs = 0.5 + 0.5 * np.cos(2 * np.pi * y / (height / rng.uniform(5.5, 6.5)))
    texture = cv2.GaussianBlur(rng.normal(0, 12, (height, width)).astype(np.float32), (0, 0), 2.0)
    noise = rng.normal(0, 4, (height, width)).astype(np.float32)
    pixels = np.clip(body + spine * discs + texture + noise, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return encoded.tobytes()


def make_dataset(root: Path, rows: int, distinct: int, size: tuple[int, int]) -> tuple[Path, int]:
    """Manifest of `rows` rows, each image a hard link to one of `distinct` phantom-like JPEGs.

    Returns:
        The manifest path and the total image bytes.
    """
    rng = np.random.default_rng(0)
    sources = root / "sources"
    sources.mkdir(parents=True)
    files = []
    for k in range(distinct):
        path = sources / f"src{k}.jpg"
        path.write_bytes(phantom_like(rng, *size))
        files.append(path)
    patients = -(-rows // IMAGES_PER_PATIENT)
    patient_labels = (rng.random((patients, len(LEVEL_COLUMNS))) < np.array(PAPER_PREVALENCE)).astype(int)
    patient_test = rng.random(patients) < 0.1
    owner = np.arange(rows) // IMAGES_PER_PATIENT
    paths, total = [], 0
    for row in range(rows):
        relative = f"img/{row // LINKS_PER_FOLDER:04d}/{row:07d}.jpg"
        target = root / relative
        if row % LINKS_PER_FOLDER == 0:
            target.parent.mkdir(parents=True)
        source = files[row % distinct]
        os.link(source, target)
        total += source.stat().st_size
        paths.append(relative)
    table = pd.DataFrame({"patient_id": [f"MRN{p:08d}" for p in owner], "image_path": paths,
                          "split": np.where(patient_test[owner], "test", "train"),
                          "age": 20 + owner % 60, **{c: patient_labels[owner, i] for i, c in enumerate(LEVEL_COLUMNS)}})
    manifest = root / "manifest.parquet"
    table.to_parquet(manifest, index=False)
    return manifest, total


def shard_once(manifest: Path, out: Path, workers: int, shard_size: str) -> dict:
    """Run the whole `hnp shard` in this process; report seconds, phases and peak RSS (driver, worker)."""
    from sharding import build
    from sharding.shards import parse_byte_size

    phases = {}
    write_shards = build.write_shards

    def timed_write_shards(*args, **kwargs):  # the parallel writing phase, timed on its own
        start = time.perf_counter()
        result = write_shards(*args, **kwargs)
        phases["write"] = time.perf_counter() - start
        return result

    build.write_shards = timed_write_shards
    start, cpu = time.perf_counter(), time.process_time()
    summary = build.shard_manifest(build.ShardOptions(manifest=manifest, out=out, workers=workers,
                                                      shard_bytes=parse_byte_size(shard_size), progress=False))
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    shards = [s for split in summary.dataset["splits"].values() for s in split["shards"]]
    # CPU seconds tell a change's effect apart from a neighbour's load, which only moves the wall time
    return {"seconds": seconds, "write_seconds": phases["write"], "shards": len(shards),
            "cpu_driver": time.process_time() - cpu, "cpu_workers": children.ru_utime + children.ru_stime,
            "out_bytes": sum(s["bytes"] for s in shards), "sharded": summary.rows_sharded,
            "rss_driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def tar_once(root: Path, manifest: Path, out: Path) -> tuple[float, float]:
    """Seconds and CPU seconds of `tar -cf` over the manifest's image files (hard links dereferenced: every byte
    copied)."""
    listing = root / "files.txt"
    listing.write_text("\n".join(pd.read_parquet(manifest)["image_path"]) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["tar", "--hard-dereference", "-cf", str(out), "-C", str(root), "-T", str(listing)], check=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def drop_output(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    os.sync()  # flush and forget the previous run's writes before the next one is timed


def bench_size(args: argparse.Namespace, rows: int) -> dict:
    root = args.work / f"rows{rows}"
    drop_output(root)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    start = time.perf_counter()
    manifest, image_bytes = make_dataset(root, rows, args.distinct, size)
    setup = time.perf_counter() - start
    command = [sys.executable, __file__, "--one", str(rows), "--work", str(args.work), "--workers", str(args.workers),
               "--shard-size", args.shard_size]
    runs, tar_runs, tar_cpu, loads = [], [], [], []
    for _ in range(args.repeat):
        loads.append(os.getloadavg()[0])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(output.splitlines()[-1]))
        drop_output(root / "shards")
        seconds, cpu = tar_once(root, manifest, root / "baseline.tar")
        tar_runs.append(seconds)
        tar_cpu.append(cpu)
        drop_output(root / "baseline.tar")
    ours = min(runs, key=lambda run: run["seconds"])
    ours["write_seconds"] = min(run["write_seconds"] for run in runs)
    tar_seconds = min(tar_runs)
    mb = image_bytes / 2**20
    result = {"rows": rows, "image_mb": mb, "setup_seconds": setup, **ours, "tar_seconds": tar_seconds,
              "all_seconds": [run["seconds"] for run in runs], "all_tar_seconds": tar_runs, "load_1min": loads,
              "all_cpu": [run["cpu_driver"] + run["cpu_workers"] for run in runs], "all_tar_cpu": tar_cpu,
              "mb_s": mb / ours["seconds"], "write_mb_s": mb / ours["write_seconds"], "tar_mb_s": mb / tar_seconds}
    result["ratio"] = result["mb_s"] / result["tar_mb_s"]
    result["write_ratio"] = result["write_mb_s"] / result["tar_mb_s"]
    drop_output(root)
    return result


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["| rows | images GB | shards | hnp shard s | write phase s | s per 10k rows | MB/s (all / write) "
             "| tar -cf s | tar MB/s | ratio to tar (all / write) | peak RSS MB (driver / worker) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['image_mb'] / 1024:.2f} | {r['shards']} | {r['seconds']:.1f} "
                     f"| {r['write_seconds']:.1f} | {r['seconds'] / r['rows'] * 1e4:.2f} "
                     f"| {r['mb_s']:.0f} / {r['write_mb_s']:.0f} | {r['tar_seconds']:.1f} | {r['tar_mb_s']:.0f} "
                     f"| {r['ratio']:.2f} / {r['write_ratio']:.2f} "
                     f"| {r['rss_driver_mb']:.0f} / {r['rss_worker_mb']:.0f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    if args.one is not None:
        root = args.work / f"rows{args.one}"
        print(json.dumps(shard_once(root / "manifest.parquet", root / "shards", args.workers, args.shard_size)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        results.append(bench_size(args, rows))
        print(json.dumps(results[-1]), flush=True)
    if args.markdown:
        print(markdown(results, args))


if __name__ == "__main__":
    main(parse_args())
