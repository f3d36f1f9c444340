"""Phantom rendering speed of each difficulty preset: images/s with 1 and with 2 worker processes, against the
bare cost of `cv2.imencode` of the same images (measured in the same run).

    python bench/phantom_speed.py --patients 400 --size 512x400

Prints a Markdown table for BENCHMARKS.md. Besides wall-clock rates it gives images per CPU-second of this
process (1 worker, and the encode baseline): on a machine shared with other jobs the wall clock measures the
neighbours, while CPU time still measures the renderer per core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2

from phantom.generate import PhantomConfig, generate, parse_size
from phantom.render import JPEG_QUALITY
from phantom.signs import DIFFICULTIES


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--size", default="512x400")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", action="append", choices=tuple(DIFFICULTIES),
                        help="preset(s) to time (repeatable; default: every preset)")
    return parser.parse_args()


def time_generate(config: PhantomConfig) -> tuple[int, float, float]:
    """(images written, wall seconds, CPU seconds of this process) for one full `generate` run, manifests
    included. The CPU time misses pool workers, so it means something for 1 worker only."""
    wall, cpu = time.perf_counter(), time.process_time()
    manifest = generate(config, progress=False)
    return len(manifest), time.perf_counter() - wall, time.process_time() - cpu


def time_encode(folder: Path) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) to JPEG-encode the decoded images of a phantom folder again: the floor
    of any JPEG writer."""
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((folder / "images").glob("*.jpg"))]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as generate holds it for 1 worker
    wall, cpu = time.perf_counter(), time.process_time()
    for image in images:
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    seconds = time.perf_counter() - wall, time.process_time() - cpu
    cv2.setNumThreads(threads)
    return len(images), *seconds


def main(args: argparse.Namespace) -> None:
    size = parse_size(args.size)
    rows = {}  # name -> (images/s wall, images/s per CPU-second or None)
    with tempfile.TemporaryDirectory() as tmp:
        # One-time costs (lazy imports, first calls: about 1.5 CPU-seconds) would be charged to the first preset.
        generate(PhantomConfig(out=Path(tmp) / "warmup", patients=5, seed=args.seed, size=size), progress=False)
        for difficulty in args.difficulty or tuple(DIFFICULTIES):
            for workers in (1, 2):
                config = PhantomConfig(out=Path(tmp) / f"{difficulty}{workers}", patients=args.patients,
                                       seed=args.seed, size=size, difficulty=difficulty, workers=workers)
                images, wall, cpu = time_generate(config)
                rows[f"hnp phantom --difficulty {difficulty}, {workers} worker(s)"] = (
                    images / wall, images / cpu if workers == 1 else None)
        images, wall, cpu = time_encode(Path(tmp) / f"{difficulty}1")
        rows["cv2.imencode alone (baseline)"] = (images / wall, images / cpu)
    print(f"{images} images of {size[0]}x{size[1]}, {args.patients} patients, seed {args.seed}")
    print("| measurement | images/s (wall) | images per CPU-second |")
    print("|---|---:|---:|")
    for name, (wall_rate, cpu_rate) in rows.items():
        print(f"| {name} | {wall_rate:.0f} | {'' if cpu_rate is None else f'{cpu_rate:.0f}'} |")
    encode_cpu = rows["cv2.imencode alone (baseline)"][1]
    for name, (_, cpu_rate) in rows.items():
        if cpu_rate is not None and name.startswith("hnp"):
            print(f"{name}: render + encode + write costs {encode_cpu / cpu_rate:.1f}x a bare encode (CPU time)")


if __name__ == "__main__":
    main(parse_args())
