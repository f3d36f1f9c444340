"""Training throughput on one GPU: the bare timm step, our step, our step fed by DALI, and DALI alone.

    python bench/gpu_throughput.py --out $OUT                       # H100: efficientnet_b5, 456 px, batch 32
    python bench/gpu_throughput.py --out $OUT --quick               # (a)-(e) in bf16 channels_last eager only
    python bench/gpu_throughput.py --device cpu --model test_efficientnet --size 64 --steps 2 --warmup 1 \\
        --batch 4 --source-size 256x200 --patients 8 --no-compile --out /tmp/bench   # CPU smoke run

Measurements, most important first (each written to OUT as soon as it ends; `--time-budget` skips what would not
fit, from the longest measured cost of its kind):
    (a) bare   a textbook timm step on synthetic tensors: forward, BCE, backward, Adam (the model's ceiling)
    (b) ours   train.loop.train_one_epoch on the same synthetic tensors (TaskLoss, scaler, scheduler)
    (d) dali   the DALI training pipeline alone (pipeline.build_loader: `mixed` decode, GPU CLAHE, resize,
               normalize) over phantom shards of radiograph-sized JPEGs (--source-size, default 2000x1600)
    (c) ours+dali  train_one_epoch fed by that pipeline
    (e) eval   train.loop.evaluate (validation forward) on synthetic tensors
for bf16 / fp16, channels_last / NCHW, eager / torch.compile, plus a DALI thread sweep, (c) at 8 and 16 DALI
threads, (d) and (c) with DALI decoding and preprocessing on the CPU (data.dali_device "cpu", all cores but two:
the training kernels then have the GPU to themselves), and the bare step with cudnn.benchmark. (b) and (c) of one
variant use the same trainer. Derived: (c)/(a) (target >= 0.95), and the wall time of a paper-scale fold epoch and
of the whole 4-fold run on 1 and 4 GPUs next to Kim et al. 2022.

Writes OUT/gpu_throughput.json and OUT/gpu_throughput.md. Phantom data go to --data-dir (reused when present).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timm_step import bare_steps, synthetic_batch, timed  # noqa: E402
from hnp.config import ExperimentConfig, load_config  # noqa: E402
from train.loop import FoldContext, Trainer, build_trainer, evaluate, train_one_epoch  # noqa: E402

log = logging.getLogger("hnp.bench")

PAPER_CONFIG = "paper"
# Kim et al. 2022: 162,257 training images in 4 patient-grouped folds; a fold's model trains on 3/4 of them and
# validates on 1/4. One RTX 3090, about 50 minutes per epoch, 2 days 18 hours in all (Methods 2.3).
PAPER_TRAIN_IMAGES = 162_257
FOLD_TRAIN_IMAGES = 121_700
FOLD_VAL_IMAGES = PAPER_TRAIN_IMAGES - FOLD_TRAIN_IMAGES
PAPER_EPOCH_MINUTES = 50
PAPER_TOTAL_HOURS = 2 * 24 + 18
# timm's published RTX 3090 training benchmark, efficientnet_b5 at 456 px, AMP, channels_last.
TIMM_3090_IMAGES_PER_S = 114
TARGET_RATIO = 0.95
TRAIN_SPLITS = ("fold1", "fold2", "fold3")  # fold 0's training data
DALI_THREAD_SWEEP = (2, 8, 16)  # DALI CPU threads tried besides the config's (data.num_threads)
FED_THREADS = (8, 16)  # (c) again with more DALI threads: does the fed step still wait on the decode's CPU side?
# DALI threads when it decodes and preprocesses on the CPU (data.dali_device "cpu"): every core but the two that
# drive the training step and DALI's own executor.
CPU_PREPROCESS_THREADS = max(1, (os.cpu_count() or 1) - 2)
# First guesses of a measurement's cost in seconds, replaced by the longest measured cost of its kind.
FIRST_COST = {"step": 40.0, "compile": 180.0, "dali": 20.0, "data": 90.0, "eval": 20.0}


@dataclass(frozen=True)
class Variant:
    """Precision, memory format and compilation of a training measurement."""

    amp: str
    channels_last: bool
    compile: bool

    @property
    def name(self) -> str:
        return f"{self.amp}-{'cl' if self.channels_last else 'nchw'}-{'compile' if self.compile else 'eager'}"


@dataclass(frozen=True)
class Task:
    """One planned measurement."""

    kind: str  # bare | ours | dali | ours+dali | eval | data
    variant: Variant | None = None
    threads: int | None = None  # DALI threads (dali, ours+dali); None = the config's
    dali_device: str = "gpu"  # where DALI decodes and preprocesses (data.dali_device)
    cudnn_benchmark: bool = False

    @property
    def name(self) -> str:
        parts = [self.kind, self.variant.name if self.variant else ""]
        parts += [f"threads={self.threads}" if self.threads else "", "cudnn.benchmark" if self.cudnn_benchmark else ""]
        parts.append("preprocessing on the CPU" if self.dali_device == "cpu" else "")
        return " ".join(p for p in parts if p)

    @property
    def cost_kind(self) -> str:
        if self.variant is not None and self.variant.compile:
            return "compile"
        return {"bare": "step", "ours": "step", "ours+dali": "step"}.get(self.kind, self.kind)


@dataclass
class Result:
    """What one measurement gave (status ok), or why it has no figure (skipped, failed)."""

    name: str
    kind: str
    variant: str | None
    status: str
    note: str = ""
    images_per_s: float | None = None
    ms_per_batch: float | None = None
    batch: int | None = None
    steps: int | None = None
    threads: int | None = None
    dali_device: str | None = None  # where DALI decoded and preprocessed (dali, ours+dali)
    peak_allocated_gib: float | None = None  # torch.cuda.max_memory_allocated during the measurement
    device_used_gib: float | None = None  # whole device at the end (torch cache, DALI pools, context)
    seconds: float | None = None  # wall time including build, compile and warm-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_throughput.json and .md")
    parser.add_argument("--model", default="efficientnet_b5", help="timm model name (default %(default)s)")
    parser.add_argument("--size", type=int, default=456, help="training image side in pixels (default %(default)s)")
    parser.add_argument("--batch", type=int, default=32,
                        help="images per step; halved and retried on out-of-memory (default %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="(a), (b), (d), (c), (e) in bf16 channels_last eager, then (d), (c) with DALI on the CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default %(default)s)")
    parser.add_argument("--time-budget", type=float, default=400.0, metavar="SECONDS",
                        help="skip measurements that would end after this many seconds (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "hnp-gpu-bench",
                        help="phantom images and shards, reused when already there (default %(default)s)")
    parser.add_argument("--source-size", default="2000x1600", help="phantom JPEG size HxW (default %(default)s)")
    parser.add_argument("--patients", type=int, default=160,
                        help="phantom patients, 1-6 images each (default %(default)s)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="processes rendering and sharding the phantom data (default %(default)s)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def plan(args: argparse.Namespace) -> list[Task]:
    """The measurements in the order they run: what matters most first, compilation late (it costs minutes)."""
    head = Variant("bf16", channels_last=True, compile=False)
    tasks = [Task("bare", head), Task("ours", head), Task("data"), Task("dali"), Task("ours+dali", head),
             Task("eval", head)]
    cpu_preprocessing = [Task("dali", threads=CPU_PREPROCESS_THREADS, dali_device="cpu"),
                         Task("ours+dali", head, threads=CPU_PREPROCESS_THREADS, dali_device="cpu")]
    if args.quick:
        return tasks + cpu_preprocessing
    others = [Variant(amp, cl, False) for amp, cl in (("bf16", False), ("fp16", True), ("fp16", False))]
    compiled = [] if args.no_compile else [replace(v, compile=True) for v in (head, *others)]
    tasks += [Task(kind, v) for v in others for kind in ("bare", "ours")]
    tasks += [Task("dali", threads=n) for n in DALI_THREAD_SWEEP]
    tasks += [Task("ours+dali", head, threads=n) for n in FED_THREADS]
    tasks += cpu_preprocessing
    tasks += [Task(kind, v) for v in compiled[:1] for kind in ("ours", "ours+dali", "bare")]
    tasks += [Task("ours+dali", v) for v in others]
    tasks.append(Task("bare", head, cudnn_benchmark=True))
    tasks += [Task(kind, v) for v in compiled[1:] for kind in ("ours", "bare")]
    return tasks


def bench_config(args: argparse.Namespace, variant: Variant | None, batch: int,
                 threads: int | None = None, dali_device: str = "gpu") -> ExperimentConfig:
    """The paper config with the benchmark's model, size, batch and variant; random init (no download)."""
    overrides = [f"model.name={args.model}", 'model.pretrained="none"', f"data.image_size={args.size}",
                 f"data.batch_size={batch}", "train.grad_accum=1", 'wandb.mode="off"']
    if variant is not None:
        overrides += [f'train.amp="{variant.amp}"', f"train.channels_last={str(variant.channels_last).lower()}",
                      f"train.compile={str(variant.compile).lower()}"]
    if threads is not None:
        overrides.append(f"data.num_threads={threads}")
    overrides.append(f'data.dali_device="{dali_device}"')
    return load_config(PAPER_CONFIG, overrides)


class Take:
    """The first `steps` batches of endlessly re-iterating `source` (a list, or a streaming loader); has len()."""

    def __init__(self, source: Iterable[dict[str, Any]], steps: int) -> None:
        self.source, self.steps = source, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        taken = 0
        while taken < self.steps:
            before = taken
            for batch in self.source:
                yield batch
                taken += 1
                if taken == self.steps:
                    return
            if taken == before:
                raise RuntimeError("the loader yielded no batch")


def our_step_seconds(trainer: Trainer, source: Iterable[dict[str, Any]], steps: int, warmup: int) -> float:
    """(b) and (c): train.loop.train_one_epoch over `steps` batches of `source`, after `warmup` batches."""
    train_one_epoch(trainer, Take(source, warmup), progress=False)
    return train_one_epoch(trainer, Take(source, steps), progress=False).seconds


def loader_seconds(loader: Iterable[dict[str, Any]], steps: int, warmup: int, device: torch.device) -> float:
    """(d): batches taken from the loader and dropped; the device drained at the end."""

    def run_steps(n: int) -> None:
        for _ in Take(loader, n):
            pass

    return timed(run_steps, steps, warmup, device)


def eval_seconds(trainer: Trainer, batch: dict[str, Any], steps: int, warmup: int) -> float:
    """(e): train.loop.evaluate over `steps` copies of a synthetic batch (forward, loss, gather, AUC)."""

    def run_steps(n: int) -> None:
        evaluate(trainer.module, Take([batch], n), trainer.loss_fn, task=trainer.task, amp=trainer.cfg.amp,
                 device=trainer.device, channels_last=trainer.cfg.channels_last, progress=False)

    return timed(run_steps, steps, warmup, trainer.device)


def dali_unavailable() -> str | None:
    """Why (c) and (d) cannot run, or None when nvidia.dali imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return f"DALI not installed ({err})"
    return None


def _data_stamp(args: argparse.Namespace) -> dict[str, Any]:
    return {"source_size": args.source_size, "patients": args.patients}


def start_data_job(args: argparse.Namespace) -> subprocess.Popen | None:
    """Start `hnp phantom` then `hnp shard` in a child process (None when --data-dir already holds them).

    A child, not this process: the first GPU measurements run meanwhile, and the generators' worker pools fork,
    which is unsafe in a process that has started CUDA. Niced, so it takes little from the measurements.
    """
    stamp_file = args.data_dir / "bench-data.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == _data_stamp(args):
        log.info("reusing the phantom shards in %s", args.data_dir / "shards")
        return None
    for old in ("phantom", "shards"):  # only what an earlier run of this script wrote there
        shutil.rmtree(args.data_dir / old, ignore_errors=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    hnp = f"nice -n 10 {shlex.quote(sys.executable)} -m hnp.cli"
    phantom, shards = shlex.quote(str(args.data_dir / "phantom")), shlex.quote(str(args.data_dir / "shards"))
    command = (f"{hnp} phantom --out {phantom} --patients {args.patients} --size {args.source_size} "
               f"--workers {args.workers} && {hnp} shard --manifest {phantom}/manifest.parquet --out {shards} "
               f"--workers {args.workers} --no-progress")
    log.info("preparing phantom shards in the background: %s", command)
    with open(args.data_dir / "prepare.log", "w") as out:
        # its own process group, so stop_data_job can end the worker pools too
        return subprocess.Popen(["sh", "-c", command], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_data_job(job: subprocess.Popen) -> None:
    """End the data job and its worker processes, if still running."""
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def finish_data_job(args: argparse.Namespace, job: subprocess.Popen | None, timeout: float) -> Path:
    """Wait for the job of `start_data_job` and return the shard folder.

    Raises:
        RuntimeError: the job failed or did not end within `timeout` seconds (then it is stopped).
    """
    shards = args.data_dir / "shards"
    if job is None:
        return shards
    try:
        code = job.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        stop_data_job(job)
        raise RuntimeError(f"phantom data not ready within the time budget ({timeout:.0f} s)") from None
    if code != 0:
        tail = (args.data_dir / "prepare.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"hnp phantom/shard exited with {code}: {' | '.join(tail)}")
    (args.data_dir / "bench-data.json").write_text(json.dumps(_data_stamp(args)))
    return shards


class Bench:
    """Runs the planned measurements within the time budget and keeps the report files up to date."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.batch = args.batch
        self.start = time.perf_counter()
        self.results: list[Result] = []
        self.measured_cost: dict[str, float] = {}  # longest wall time so far per cost kind
        self.no_dali = dali_unavailable()
        self.env = environment(self.device)
        self.config_threads = load_config(PAPER_CONFIG).data.num_threads
        self.shards: list[Path] | None = None
        self._trainer: tuple[tuple, Trainer] | None = None  # (key, trainer) of the last variant measured
        self._loader: tuple[tuple, Any] | None = None  # (key, loader) of the last DALI setup
        self._data_job: subprocess.Popen | None = None
        self._data_started = False

    def run(self, tasks: list[Task]) -> list[Result]:
        if any(t.kind == "data" for t in tasks) and not self.no_dali and self.time_left() > 0:
            self._data_job, self._data_started = start_data_job(self.args), True
        try:
            for task in tasks:
                self.results.append(self.run_one(task))
                write_report(self)
        finally:
            if self._data_job is not None:
                stop_data_job(self._data_job)
            self._release()
        return self.results

    def run_one(self, task: Task) -> Result:
        skip = self._skip_reason(task)
        if skip:
            log.info("%s: skipped (%s)", task.name, skip)
            return Result(task.name, task.kind, _variant_name(task), "skipped", skip)
        log.info("%s: running (%.0f s of the budget left)", task.name, self.time_left())
        began = time.perf_counter()
        result = self._attempt(task)
        if result.status == "failed" and "out of memory" in result.note and self.batch > 1:
            self._release()
            self.batch //= 2
            log.warning("%s: out of memory; batch halved to %d for this and later measurements", task.name, self.batch)
            result = self._attempt(task)
        result.seconds = time.perf_counter() - began
        if result.status == "ok":
            self.measured_cost[task.cost_kind] = max(self.measured_cost.get(task.cost_kind, 0.0), result.seconds)
        log.info("%s: %s %s", task.name, result.status,
                 f"{result.images_per_s:.1f} img/s" if result.images_per_s else result.note)
        return result

    def time_left(self) -> float:
        return self.args.time_budget - (time.perf_counter() - self.start)

    def _skip_reason(self, task: Task) -> str | None:
        if task.kind in ("data", "dali", "ours+dali") and self.no_dali:
            return self.no_dali
        if task.kind in ("dali", "ours+dali") and self.shards is None:
            return "no phantom shards (their preparation was skipped or failed)"
        if task.kind == "data" and self._data_started:
            return None  # already under way: waiting for it costs no more than its remainder
        estimate = self.measured_cost.get(task.cost_kind, FIRST_COST[task.cost_kind])
        if estimate > self.time_left():
            return f"would not fit in --time-budget (about {estimate:.0f} s, {max(self.time_left(), 0):.0f} s left)"
        return None

    def _attempt(self, task: Task) -> Result:
        fed = task.kind in ("dali", "ours+dali")
        threads = (task.threads or self.config_threads) if fed else None
        result = Result(task.name, task.kind, _variant_name(task), "ok", batch=self.batch, steps=self.args.steps,
                        threads=threads, dali_device=task.dali_device if fed else None)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            seconds = self._measure(task)
        except Exception as err:  # a failed measurement is recorded and the next one runs
            log.exception("%s failed", task.name)
            self._release()
            return replace(result, status="failed", note=_error_text(err))
        if seconds is None:  # data preparation: no throughput
            result.batch = result.steps = None
            return result
        self._memory(result)
        steps = self.args.steps
        result.images_per_s = steps * self.batch / seconds
        result.ms_per_batch = 1000 * seconds / steps
        return result

    def _measure(self, task: Task) -> float | None:
        args, variant = self.args, task.variant
        if task.kind == "data":
            from pipeline.dataset import split_shards

            shards_dir = finish_data_job(args, self._data_job, timeout=self.time_left())
            self._data_job = None
            self.shards = split_shards(shards_dir, TRAIN_SPLITS)
            return None
        cfg = bench_config(args, variant, self.batch, task.threads, task.dali_device)
        if task.kind == "bare":
            self._drop_trainer()  # no trainer of another variant in memory: the peak is the bare step's own
            torch.backends.cudnn.benchmark = task.cudnn_benchmark
            try:
                run = bare_steps(cfg, synthetic_batch(cfg, self.device), self.device)
                return timed(run, args.steps, self._warmup(variant), self.device)
            finally:
                torch.backends.cudnn.benchmark = False
        if task.kind == "dali":
            return loader_seconds(self._dali_loader(cfg), args.steps, args.warmup, self.device)
        trainer = self._trainer_for(cfg)
        if task.kind == "ours":
            return our_step_seconds(trainer, [synthetic_batch(cfg, self.device)], args.steps, self._warmup(variant))
        if task.kind == "ours+dali":
            return our_step_seconds(trainer, self._dali_loader(cfg), args.steps, self._warmup(variant))
        return eval_seconds(trainer, synthetic_batch(cfg, self.device), args.steps, args.warmup)

    def _warmup(self, variant: Variant | None) -> int:
        # compilation happens in the first steps, and a second graph may follow for the optimizer's first step
        return max(self.args.warmup, 3) if variant is not None and variant.compile else self.args.warmup

    def _trainer_for(self, cfg: ExperimentConfig) -> Trainer:
        key = (cfg.train, cfg.data.batch_size)
        if self._trainer is None or self._trainer[0] != key:
            self._drop_trainer()
            if cfg.train.compile:
                torch._dynamo.reset()  # a fresh cache per compiled model: no recompile limit hit, no stale guards
            self._trainer = (key, build_trainer(cfg, steps_per_epoch=1000, ctx=FoldContext(fold=0, device=self.device)))
        return self._trainer[1]

    def _dali_loader(self, cfg: ExperimentConfig) -> Any:
        from pipeline.loader import build_loader

        key = (cfg.data.batch_size, cfg.data.num_threads, cfg.data.dali_device)
        if self._loader is None or self._loader[0] != key:
            self._loader = None
            self._loader = (key, build_loader(cfg.data, self.shards, training=True, seed=0, device=self.device))
        return self._loader[1]

    def _memory(self, result: Result) -> None:
        if self.device.type != "cuda":
            return
        free, total = torch.cuda.mem_get_info(self.device)
        result.peak_allocated_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        result.device_used_gib = (total - free) / 2**30

    def _drop_trainer(self) -> None:
        self._trainer = None
        _free_memory(self.device)

    def _release(self) -> None:
        self._loader = None
        self._drop_trainer()


def _variant_name(task: Task) -> str | None:
    if task.variant is None:
        return None
    return task.variant.name + ("+cudnn-benchmark" if task.cudnn_benchmark else "")


def _error_text(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return f"out of memory: {text[:200]}"
    return f"{type(err).__name__}: {text[:300]}"


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def best(results: list[Result], kind: str, variant: str | None = None) -> Result | None:
    """The fastest successful result of a kind (of one variant, if given)."""
    found = [r for r in results if r.kind == kind and r.status == "ok" and r.images_per_s
             and (variant is None or r.variant == variant)]
    return max(found, key=lambda r: r.images_per_s) if found else None


def derive(results: list[Result], epochs: int, folds: int) -> dict[str, Any]:
    """Ratios per variant, and wall times at paper scale from the fastest fed step (c), else (b).

    Args:
        results: the measurements so far.
        epochs: epochs per fold (the paper config).
        folds: cross-validation folds (the paper config).
    """
    ratios = {}
    for variant in dict.fromkeys(r.variant for r in results if r.variant):
        a, b, c = (best(results, kind, variant) for kind in ("bare", "ours", "ours+dali"))
        row = {"ours/bare": _ratio(b, a), "ours+dali/bare": _ratio(c, a), "ours+dali/ours": _ratio(c, b)}
        if any(v is not None for v in row.values()):
            ratios[variant] = row
    fed = best(results, "ours+dali") or best(results, "ours")
    derived: dict[str, Any] = {"ratios": ratios, "target_ours+dali/bare": TARGET_RATIO}
    head = ratios.get("bf16-cl-eager", {}).get("ours+dali/bare")
    derived["target_met_bf16-cl-eager"] = None if head is None else head >= TARGET_RATIO
    bare = best(results, "bare", "bf16-cl-eager")
    if bare is not None:
        derived["bare_bf16-cl-eager_vs_timm_3090"] = bare.images_per_s / TIMM_3090_IMAGES_PER_S
    if fed is None:
        return derived
    val_rate = _validation_rate(results)
    train_s = FOLD_TRAIN_IMAGES / fed.images_per_s
    val_s = FOLD_VAL_IMAGES / val_rate if val_rate else None
    epoch_s = train_s + (val_s or 0.0)
    derived["paper_scale"] = {
        "from": f"{fed.name} ({fed.images_per_s:.1f} img/s)" + ("" if fed.kind == "ours+dali" else
                                                                 ", synthetic input: an upper bound without DALI"),
        "fold_epoch_train_images": FOLD_TRAIN_IMAGES, "fold_epoch_val_images": FOLD_VAL_IMAGES,
        "fold_epoch_train_minutes": train_s / 60,
        "fold_epoch_val_minutes": None if val_s is None else val_s / 60,
        "fold_epoch_minutes": epoch_s / 60, "epochs": epochs, "folds": folds,
        "full_run_hours_1_gpu": folds * epochs * epoch_s / 3600,
        "full_run_hours_4_gpus": math.ceil(folds / 4) * epochs * epoch_s / 3600,
        "paper_epoch_minutes_rtx3090": PAPER_EPOCH_MINUTES, "paper_total_hours_rtx3090": PAPER_TOTAL_HOURS,
        "epoch_speedup_vs_paper": PAPER_EPOCH_MINUTES * 60 / epoch_s,
    }
    return derived


def _ratio(top: Result | None, bottom: Result | None) -> float | None:
    return top.images_per_s / bottom.images_per_s if top and bottom else None


def _validation_rate(results: list[Result]) -> float | None:
    """Validation images/s: our evaluate() on synthetic tensors, capped by what DALI delivers."""
    forward, dali = best(results, "eval"), best(results, "dali")
    if forward is None:
        return None
    return min(forward.images_per_s, dali.images_per_s) if dali else forward.images_per_s


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so every figure carries the GPU model and the software it ran with."""
    import timm

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                           "cpu_count": os.cpu_count(), "device": str(device)}
    try:
        import nvidia.dali

        env["dali"] = nvidia.dali.__version__
    except ImportError:
        env["dali"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def write_report(bench: Bench) -> None:
    """OUT/gpu_throughput.json and .md, rewritten after every measurement (a cut-off run keeps what it has)."""
    paper = load_config(PAPER_CONFIG)
    document = {"command": " ".join(["python bench/gpu_throughput.py", *bench.args.argv]),
                "args": {k: str(v) for k, v in vars(bench.args).items() if k != "argv"},
                "environment": bench.env, "elapsed_s": time.perf_counter() - bench.start,
                "results": [asdict(r) for r in bench.results],
                "derived": derive(bench.results, paper.train.epochs, paper.folds)}
    out = bench.args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "gpu_throughput.json", json.dumps(document, indent=2) + "\n")
    _write_atomic(out / "gpu_throughput.md", markdown(document))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


LABELS = {"bare": "(a) bare timm step", "ours": "(b) our step", "dali": "(d) DALI alone",
          "ours+dali": "(c) our step + DALI", "eval": "(e) our validation forward", "data": "phantom shards"}


def markdown(document: dict[str, Any]) -> str:
    """The report as BENCHMARKS.md shows it: environment, one row per measurement, derived figures."""
    env, derived = document["environment"], document["derived"]
    lines = [f"GPU: {env.get('gpu', env['device'])}; torch {env['torch']}, timm {env['timm']}, DALI {env['dali']}, "
             f"CUDA {env.get('cuda')}, {env['cpu_count']} CPUs.", "", f"Command: `{document['command']}`", "",
             "| measurement | variant | img/s | ms/batch | batch | peak alloc GiB | GPU used GiB | wall s | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in document["results"]:
        extra = f"threads={r['threads']}" if r["threads"] else ""
        extra += ", preprocessing on the CPU" if r.get("dali_device") == "cpu" else ""
        note = "; ".join(x for x in (extra, r["status"] if r["status"] != "ok" else "", r["note"]) if x)
        note = note.replace("|", "\\|")  # error texts may hold table separators
        lines.append(f"| {LABELS[r['kind']]} | {r['variant'] or ''} | {_num(r['images_per_s'])} | "
                     f"{_num(r['ms_per_batch'])} | {r['batch'] or ''} | {_num(r['peak_allocated_gib'], 2)} | "
                     f"{_num(r['device_used_gib'], 2)} | {_num(r['seconds'])} | {note} |")
    lines += ["", "| variant | (b)/(a) | (c)/(a) | (c)/(b) |", "|---|---:|---:|---:|"]
    for variant, row in derived["ratios"].items():
        lines.append(f"| {variant} | {_num(row['ours/bare'], 3)} | {_num(row['ours+dali/bare'], 3)} | "
                     f"{_num(row['ours+dali/ours'], 3)} |")
    met = derived.get("target_met_bf16-cl-eager")
    lines += ["", f"Target (c)/(a) >= {TARGET_RATIO} in bf16 channels_last eager: "
              f"{'not measured' if met is None else 'met' if met else 'NOT met'}."]
    if "bare_bf16-cl-eager_vs_timm_3090" in derived:
        lines.append(f"(a) bf16 channels_last is {derived['bare_bf16-cl-eager_vs_timm_3090']:.2f} x timm's "
                     f"RTX 3090 figure ({TIMM_3090_IMAGES_PER_S} img/s).")
    scale = derived.get("paper_scale")
    if scale:
        val = scale["fold_epoch_val_minutes"]
        lines += ["", f"Paper scale, from {scale['from']}:", "",
                  "| | this GPU | Kim et al. 2022, one RTX 3090 |", "|---|---:|---:|",
                  f"| one fold epoch: {FOLD_TRAIN_IMAGES:,} training images + {FOLD_VAL_IMAGES:,} validation "
                  f"| {scale['fold_epoch_minutes']:.1f} min (train {scale['fold_epoch_train_minutes']:.1f}"
                  f"{'' if val is None else f', validation {val:.1f}'}) | about {PAPER_EPOCH_MINUTES} min |",
                  f"| {scale['folds']} folds x {scale['epochs']} epochs, 1 GPU | {scale['full_run_hours_1_gpu']:.1f} h "
                  f"| {PAPER_TOTAL_HOURS} h (2 days 18 hours) |",
                  f"| {scale['folds']} folds x {scale['epochs']} epochs, 4 GPUs (one fold each) "
                  f"| {scale['full_run_hours_4_gpus']:.1f} h | |"]
    return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    bench = Bench(args)
    log.info("%s", bench.env)
    results = bench.run(plan(args))
    print(markdown(json.loads((args.out / "gpu_throughput.json").read_text())))
    return 0 if any(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
