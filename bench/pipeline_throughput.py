"""Input pipeline throughput at 456 px: the DALI CPU pipeline, the torch loader and the raw OpenCV limit, in one
run on the same shards of radiograph-sized JPEGs.

    python bench/pipeline_throughput.py --data-dir /tmp/hnp-bench --patients 30 --size 2000x1600 --repeat 3
    python bench/pipeline_throughput.py --data-dir /tmp/hnp-bench --device cuda   # adds the `mixed` GPU pipeline

Data: `hnp phantom` radiographs (1-6 images per patient) sharded by `hnp shard`, made once in --data-dir and
reused. Every split's shards are read.

Measured, each `--repeat` times in rotation (the best of each is kept: on a shared machine, neighbours only ever
slow a measurement down):
- raw limit: one thread decoding the JPEG bytes already in memory (cv2.imdecode to gray), CLAHE
  (cv2.createCLAHE(2.0, 8x8)) and cv2.resize to 456x456 (INTER_AREA) in a loop; images/s x usable cores.
- DALI CPU pipeline: the training pipeline of the paper config (batch 16, stretch, CLAHE, shuffle buffer, no
  augmentation) on num_threads = usable cores, its uint8 batches taken as they come: what the raw limit does.
- DALI CPU loader: `build_loader` on that pipeline with device cpu: plus the conversion to float32 (N, 3, S, S)
  normalized tensors on the CPU (on a GPU that step runs on the GPU).
- torch loader: `build_loader` with data.loader=torch (num_threads worker processes), the same output.
- DALI GPU (with --device cuda): the DALI loader with `mixed` decode and GPU operators.
The loaders run whole epochs after one warm-up epoch (pipeline build, worker start-up).

Prints a Markdown table and writes `<out>/pipeline_throughput.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from hnp.config import DataConfig, load_config
from pipeline.dali import build_dali_pipeline
from pipeline.dataset import IMAGE_EXT, read_samples, split_shards
from pipeline.loader import build_loader

log = logging.getLogger("bench.pipeline")
REPO = Path(__file__).resolve().parent.parent
SPLITS = ("fold0", "fold1", "fold2", "fold3", "test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/hnp-pipeline-bench"),
                        help="phantom images and shards, reused when present (default %(default)s)")
    parser.add_argument("--patients", type=int, default=30, help="phantom patients (default %(default)s)")
    parser.add_argument("--size", default="2000x1600", help="phantom image size HxW (default %(default)s)")
    parser.add_argument("--config", default="paper",
                        help="config name or YAML file; its data section is used (default paper)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all measurements (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader measurement (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add the DALI GPU pipeline")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for pipeline_throughput.json")
    return parser.parse_args()


def prepare_shards(args: argparse.Namespace) -> Path:
    """Phantom JPEGs and their shards in --data-dir, made once (a stamp records what was asked)."""
    from phantom.generate import PhantomConfig, generate, parse_size
    from sharding.build import ShardOptions, shard_manifest

    stamp_file, stamp = args.data_dir / "bench-data.json", {"patients": args.patients, "size": args.size}
    shards = args.data_dir / "shards"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return shards
    args.data_dir.mkdir(parents=True, exist_ok=True)
    phantom = args.data_dir / "phantom"
    workers = usable_cores()
    generate(PhantomConfig(out=phantom, patients=args.patients, size=parse_size(args.size), workers=workers))
    shard_manifest(ShardOptions(manifest=phantom / "manifest.parquet", out=shards, workers=workers))
    stamp_file.write_text(json.dumps(stamp))
    return shards


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclasses.dataclass
class Run:
    """One timed measurement: images processed, wall seconds, CPU seconds of this process and its descendants."""

    images: int = 0
    wall: float = 0.0
    cpu: float = 0.0

    def rate(self, scale: float = 1.0) -> float:
        return self.images / self.wall * scale

    def cpu_ms_per_image(self) -> float:
        return self.cpu / self.images * 1000


@contextlib.contextmanager
def timed(run: Run) -> Iterator[None]:
    """Time the block into `run`. CPU time counts every thread of this process and of its live descendants
    (DataLoader workers): on a shared machine it stays put while wall time swings with the neighbours' load."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield
    run.wall, run.cpu = time.perf_counter() - wall, cpu_seconds() - cpu


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendant processes (Linux /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for pid in times:
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if ancestor == os.getpid():
            total += times[pid]
    return total


def raw_single_thread(jpegs: list[bytes], cfg: DataConfig) -> Run:
    """One thread: decode to gray, CLAHE, resize, on bytes already in memory."""
    cv2.setNumThreads(1)  # one thread: the limit is this rate times the cores
    clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip_limit, tileGridSize=(cfg.clahe_tiles, cfg.clahe_tiles))
    size = (cfg.image_size, cfg.image_size)
    run = Run(images=len(jpegs))
    with timed(run):
        for data in jpegs:
            gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            cv2.resize(clahe.apply(gray), size, interpolation=cv2.INTER_AREA)
    return run


def loader_run(cfg: DataConfig, shards: list[Path], epochs: int, device: str) -> Run:
    """The training loader over whole epochs, after a warm-up epoch (pipeline build, worker start-up)."""
    loader = build_loader(cfg, shards, training=True, device=device)
    for _ in loader:
        pass
    run = Run()
    with timed(run):
        for _ in range(epochs):
            for batch in loader:
                run.images += batch["image"].shape[0]
        if device != "cpu":
            import torch

            torch.cuda.synchronize()
    return run


def dali_pipeline_run(cfg: DataConfig, shards: list[Path], epochs: int) -> Run:
    """The DALI CPU pipeline itself (uint8 (N, S, S, 1) batches, no torch conversion), training mode, as many
    batches as the loader's epochs, after one epoch's worth of warm-up batches."""
    per_epoch = len(read_samples(shards)) // cfg.batch_size
    pipe = build_dali_pipeline(cfg, shards, training=True, rank=0, world_size=1, seed=0, device_id=None)
    pipe.build()
    for _ in range(per_epoch):
        pipe.run()
    run = Run(images=epochs * per_epoch * cfg.batch_size)
    with timed(run):
        for _ in range(epochs * per_epoch):
            pipe.run()
    return run


RAW = "raw limit (1 thread x cores)"


def measurements(args: argparse.Namespace, cfg: DataConfig, shards: list[Path]) -> dict[str, Callable[[], Run]]:
    jpegs = [sample.read(IMAGE_EXT) for sample in read_samples(shards)]
    dali = dataclasses.replace(cfg, loader="dali", num_threads=usable_cores())
    torch_cfg = dataclasses.replace(cfg, loader="torch", num_threads=usable_cores())
    runs: dict[str, Callable[[], Run]] = {
        RAW: lambda: raw_single_thread(jpegs, cfg),
        "DALI CPU pipeline (uint8 batches)": lambda: dali_pipeline_run(dali, shards, args.epochs),
        "DALI CPU loader (float tensors, CPU)": lambda: loader_run(dali, shards, args.epochs, "cpu"),
        "torch loader (float tensors, CPU)": lambda: loader_run(torch_cfg, shards, args.epochs, "cpu"),
    }
    if args.device != "cpu":
        runs["DALI GPU (mixed)"] = lambda: loader_run(dali, shards, args.epochs, args.device)
    return runs


def summary(results: dict[str, list[Run]], cores: int) -> dict[str, dict[str, float]]:
    """Per measurement: best wall img/s (the raw one times the cores), median CPU ms per image, and both as
    ratios to the raw limit (CPU: raw ms / its ms, i.e. the img/s it would reach on `cores` idle cores)."""
    raw_rate = max(run.rate(cores) for run in results[RAW])
    raw_cpu = float(np.median([run.cpu_ms_per_image() for run in results[RAW]]))
    table = {}
    for name, runs in results.items():
        rate = max(run.rate(cores if name == RAW else 1.0) for run in runs)
        cpu = float(np.median([run.cpu_ms_per_image() for run in runs]))
        table[name] = {"img_s": rate, "img_s_runs": [run.rate(cores if name == RAW else 1.0) for run in runs],
                       "wall_ratio": rate / raw_rate, "cpu_ms_per_img": cpu, "cpu_ratio": raw_cpu / cpu}
    return table


def markdown(table: dict[str, dict], context: dict) -> str:
    lines = [f"{context['images']} images of {context['size']} px ({context['mean_jpeg_kb']:.0f} KB JPEG on average) "
             f"-> {context['image_size']} px, {context['cores']} cores, {context['repeat']} rounds; load average "
             f"{context['load_before']} before, {context['load_after']} after.", "",
             "| pipeline | img/s (best) | img/s (all rounds) | wall ratio to raw | CPU ms/img (median) "
             "| CPU ratio to raw |", "|---|---:|---|---:|---:|---:|"]
    for name, row in table.items():
        runs = ", ".join(f"{rate:.1f}" for rate in row["img_s_runs"])
        lines.append(f"| {name} | {row['img_s']:.1f} | {runs} | {row['wall_ratio']:.2f} | "
                     f"{row['cpu_ms_per_img']:.1f} | {row['cpu_ratio']:.2f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config).data
    shards = split_shards(prepare_shards(args), SPLITS)
    samples = read_samples(shards)
    runs = measurements(args, cfg, shards)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results: dict[str, list[Run]] = {name: [] for name in runs}
    for round_number in range(args.repeat):
        for name, measure in runs.items():
            results[name].append(measure())
            log.info("round %d: %s %.1f img/s, %.1f CPU ms/img", round_number + 1, name, results[name][-1].rate(),
                     results[name][-1].cpu_ms_per_image())
    context = {"images": len(samples), "size": args.size, "cores": usable_cores(), "repeat": args.repeat,
               "mean_jpeg_kb": float(np.mean([s.components[IMAGE_EXT][1] for s in samples]) / 1024),
               "load_before": load_before, "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
               "cpu": platform.processor() or platform.machine(), "image_size": cfg.image_size}
    table = summary(results, usable_cores())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_throughput.json").write_text(json.dumps({"context": context, "results": table}, indent=2))
    print(markdown(table, context))


if __name__ == "__main__":
    main(parse_args())
