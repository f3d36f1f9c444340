"""One fold's training: Adam + cosine warm restarts, AMP, channels_last, gradient accumulation, per-epoch
validation with per-level ROC AUC and Youden-J thresholds, crash-safe files and resume.

Kim et al. 2022, Methods 2.3: Adam at 3e-5 with cosine annealing and warm restarts, 4-fold cross-validation,
the best epoch kept per fold. The loop knows nothing about Ray: `train/ray_folds.py` calls `train_fold` on each
worker with the loaders it built and an `on_epoch_end` hook that reports to Ray and W&B. Under DDP (a process
group already initialized, as Ray's TorchTrainer does) the model is wrapped here.

    history = train_fold(cfg, Path("runs/x/fold0"), train_loader, val_loader, FoldContext(fold=0))

Files in the fold folder (rank 0 writes them, each atomically):
    best.pt                  the best epoch by mean validation AUC (see train.model.checkpoint_dict)
    val_predictions.parquet  that epoch's out-of-fold predictions: key, fold, label_<target>, prob_<target>
                             (hnp.predictions), plus age and pred_age for levels_age; one row per image, or
                             per study (its key) for a fusion model
    history.csv              one row per finished epoch: losses, lr, per-level validation AUC, img/s
    state.pt                 everything needed to resume after the last finished epoch
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hnp.bars import progress_bar
from hnp.config import ExperimentConfig, OptimConfig, TrainConfig, config_to_dict
from hnp.errors import HnpError
from hnp.files import atomic_write
from hnp.predictions import AGE, KEY, PRED_AGE, label_column, model_targets, prob_column
from hnp.scoring import roc_auc, youden_threshold
from pipeline.dataset import stream_seed
from train.checkpoint import atomic_torch_save, load_torch_file
from train.fusion import model_inputs, start_fold_from_image_run
from train.model import TaskLoss, build_model, checkpoint_dict, outputs_to_predictions, task_targets
from train.progress import FoldReporter

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATE_FILE = "state.pt"
# What resume() reads from state.pt (write_epoch_files also stores the config, for the reader's information).
STATE_KEYS = ("model_state", "optimizer", "scheduler", "scaler", "history", "best_auc_mean")


@dataclass(frozen=True)
class FoldContext:
    """Where this process sits: which fold, its rank in the fold's worker group, and its device."""

    fold: int
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class FoldLogger(logging.LoggerAdapter):
    """The "hnp.train" logger, with every line tagged by fold and rank: `[fold2 rank0] epoch 3: ...`."""

    def __init__(self, ctx: FoldContext) -> None:
        super().__init__(logging.getLogger("hnp.train"), {"fold": ctx.fold, "rank": ctx.rank})

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[fold{self.extra['fold']} rank{self.extra['rank']}] {msg}", kwargs


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, the paper's optimizer (lr 3e-5 in the paper config), over the parameters that train."""
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.Adam(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """Cosine annealing with warm restarts (Loshchilov & Hutter, SGDR), stepped once per optimizer step.

    Args:
        optimizer: the optimizer whose lr it drives.
        cfg: `t_0` (epochs to the first restart), `t_mult` (period growth) and `eta_min`.
        steps_per_epoch: optimizer steps per epoch, to turn `t_0` epochs into steps.
    """
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, cfg.t_0 * steps_per_epoch), T_mult=cfg.t_mult, eta_min=cfg.eta_min)


def autocast(amp: str, device: torch.device) -> AbstractContextManager:
    """Mixed precision for the forward pass: bf16, fp16 or off."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@dataclass
class Trainer:
    """What one optimizer step needs. `module` is the bare model (saved, evaluated); `model` is what the
    training forward runs (DDP- and/or torch.compile-wrapped `module`)."""

    module: nn.Module
    model: nn.Module
    loss_fn: TaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    task: str
    device: torch.device


def build_trainer(cfg: ExperimentConfig, steps_per_epoch: int, ctx: FoldContext) -> Trainer:
    """Model, loss, optimizer, scheduler and grad scaler for one worker of a fold.

    Args:
        cfg: the experiment config.
        steps_per_epoch: optimizer steps per epoch (batches / grad_accum, rounded up).
        ctx: fold, rank and device.
    """
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    module = build_model(cfg.model, cfg.data.channels)
    if cfg.model.fusion_init:  # a resumed fold's state.pt replaces these weights later
        start_fold_from_image_run(module, cfg.model, ctx.fold)
    module = module.to(ctx.device)
    if cfg.train.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model = module
    if ctx.world_size > 1 and dist.is_initialized():
        model = DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(module, cfg.optim)
    return Trainer(module=module, model=model, loss_fn=TaskLoss(cfg.model).to(ctx.device), optimizer=optimizer,
                   scheduler=build_scheduler(optimizer, cfg.optim, steps_per_epoch),
                   scaler=torch.amp.GradScaler(ctx.device.type, enabled=cfg.train.amp == "fp16"),
                   cfg=cfg.train, task=cfg.model.task, device=ctx.device)


def _targets(batch: dict[str, Any], task: str, device: torch.device) -> torch.Tensor:
    return task_targets(batch, task).to(device, non_blocking=True)  # (N, outputs)


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean training loss per sample (image, or study for fusion), over all ranks
    lr: float  # at the end of the epoch
    images: int  # images (films) across all ranks
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan


StepHook = Callable[[int, int, torch.Tensor, int, int, float], None]


def train_one_epoch(trainer: Trainer, loader: Iterable[dict[str, Any]], *, world_size: int = 1,
                    desc: str = "train", progress: bool = True, on_step: StepHook | None = None) -> EpochStats:
    """One pass over the training loader; the optimizer steps every `grad_accum` batches (and on the last).

    Args:
        trainer: from build_trainer.
        loader: yields batch dicts (pipeline.build_loader's format); must have len().
        world_size: workers in the fold, to count images across ranks.
        desc: progress bar label.
        progress: show a progress bar (rank 0 only).
        on_step: called after each batch with (batch number, batches, the epoch's summed loss so far as a device
            tensor, samples so far (images, or studies: what the loss is summed over), images so far (films of a
            study batch), seconds so far); reading the tensor syncs the device, so do it rarely
            (`train.progress.FoldReporter.step` does, once a second).
    """
    trainer.model.train()
    n_batches = len(loader)  # type: ignore[arg-type]
    accum = trainer.cfg.grad_accum
    total_loss = torch.zeros((), device=trainer.device)
    images = samples = 0
    start = time.perf_counter()
    bar = progress_bar(loader, total=n_batches, desc=desc, leave=False, disable=not progress, mininterval=1.0)
    for i, batch in enumerate(bar):
        step_now = (i + 1) % accum == 0 or i + 1 == n_batches
        loss = _forward_backward(trainer, batch, sync=step_now)
        n = batch["labels"].shape[0]  # images, or studies of a study batch
        total_loss += loss * n  # stays on the device: no host sync per batch
        samples += n
        images += batch["image"].shape[0]  # a study batch's films
        if step_now:
            _optimizer_step(trainer)
        if on_step is not None:
            on_step(i + 1, n_batches, total_loss, samples, images, time.perf_counter() - start)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    seconds = time.perf_counter() - start
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(total_loss)  # every rank ran the same number of equal batches: sum, then divide
    return EpochStats(loss=total_loss.item() / max(samples * world_size, 1),
                      lr=trainer.optimizer.param_groups[0]["lr"], images=images * world_size, seconds=seconds)


def _forward_backward(trainer: Trainer, batch: dict[str, Any], sync: bool) -> torch.Tensor:
    inputs = model_inputs(batch, trainer.device, trainer.cfg.channels_last)
    targets = _targets(batch, trainer.task, trainer.device)
    # Between optimizer steps DDP need not all-reduce gradients: skip it while accumulating.
    no_sync = not sync and isinstance(trainer.model, DistributedDataParallel)
    with trainer.model.no_sync() if no_sync else nullcontext():
        with autocast(trainer.cfg.amp, trainer.device):
            outputs = trainer.model(*inputs)
        loss = trainer.loss_fn(outputs, targets)  # computed in float32
        trainer.scaler.scale(loss / trainer.cfg.grad_accum).backward()
    return loss.detach()


def _optimizer_step(trainer: Trainer) -> None:
    trainer.scaler.step(trainer.optimizer)  # a plain optimizer.step() unless fp16
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()


@dataclass(frozen=True)
class Validation:
    loss: float
    auc: dict[str, float]  # {target: ROC AUC}, NaN where the fold lacks positives or negatives
    thresholds: dict[str, float]  # {target: Youden-J threshold}
    predictions: pd.DataFrame  # one row per validation image (per study for a fusion model)

    @property
    def auc_mean(self) -> float:
        values = [v for v in self.auc.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan


@torch.no_grad()
def evaluate(module: nn.Module, loader: Iterable[dict[str, Any]], loss_fn: TaskLoss, *, task: str, amp: str,
             device: torch.device, channels_last: bool, progress: bool = True) -> Validation:
    """Predict every validation image (study, for a fusion model), gather across ranks, and score each label column.

    Args:
        module: the bare model (not DDP-wrapped: ranks may hold different batch counts here).
        loader: the validation loader; each sample arrives once across ranks.
        loss_fn: the training loss, for the validation loss.
        task: the model task.
        amp: the autocast mode.
        device: this rank's device.
        channels_last: feed channels_last images.
        progress: show a progress bar.
    """
    module.eval()
    keys: list[str] = []
    outputs, targets = [], []
    loss_sum = 0.0
    for batch in progress_bar(loader, desc="validate", leave=False, disable=not progress, mininterval=1.0):
        with autocast(amp, device):
            out = module(*model_inputs(batch, device, channels_last))
        target = _targets(batch, task, device)
        loss_sum += loss_fn(out, target).item() * target.shape[0]
        keys.extend(batch["key"])
        outputs.append(out.float().cpu())
        targets.append(target.cpu())
    parts = _gather((keys, outputs, targets, loss_sum))
    keys = [key for part in parts for key in part[0]]
    if not keys:
        raise HnpError("validation loader yielded no samples: is the held-out fold empty?")
    out_all = torch.cat([t for part in parts for t in part[1]])
    target_all = torch.cat([t for part in parts for t in part[2]])
    frame = prediction_frame(keys, out_all, target_all, task)
    auc, thresholds = score_targets(frame, task)
    return Validation(loss=sum(part[3] for part in parts) / len(keys), auc=auc, thresholds=thresholds,
                      predictions=frame)


def _gather(local: Any) -> list[Any]:
    """Every rank's `local`, in rank order (just [local] without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


def prediction_frame(keys: list[str], outputs: torch.Tensor, targets: torch.Tensor, task: str) -> pd.DataFrame:
    """Per-image predictions in the `hnp.predictions` schema: key, label_<target>, prob_<target> (+ age)."""
    probs, age = outputs_to_predictions(outputs, task)
    columns = {KEY: keys}
    for i, target in enumerate(model_targets(task)):
        columns[label_column(target)] = targets[:, i].round().to(torch.int8).numpy()
        columns[prob_column(target)] = probs[:, i].numpy()
    if age is not None:
        _, true_age = outputs_to_predictions(targets, task)
        columns[AGE] = true_age.numpy()
        columns[PRED_AGE] = age.numpy()
    return pd.DataFrame(columns)


def score_targets(frame: pd.DataFrame, task: str) -> tuple[dict[str, float], dict[str, float]]:
    """ROC AUC and Youden-J threshold per model target (NaN when a target has one class only)."""
    auc, thresholds = {}, {}
    for target in model_targets(task):
        y, p = frame[label_column(target)].to_numpy(), frame[prob_column(target)].to_numpy()
        auc[target], thresholds[target] = roc_auc(y, p), youden_threshold(y, p)
    return auc, thresholds


def history_row(epoch: int, stats: EpochStats, val: Validation) -> dict[str, float]:
    """One history.csv row."""
    return {"epoch": epoch, "train_loss": stats.loss, "val_loss": val.loss, "lr": stats.lr,
            "val_auc_mean": val.auc_mean, **{f"val_auc_{name}": value for name, value in val.auc.items()},
            "img_per_s": stats.images_per_s, "seconds": stats.seconds}


EpochHook = Callable[[dict[str, float], Path], None]


def train_fold(cfg: ExperimentConfig, fold_dir: Path, train_loader: Iterable[dict[str, Any]],
               val_loader: Iterable[dict[str, Any]], ctx: FoldContext,
               on_epoch_end: EpochHook | None = None, dataset: str = "",
               reporter: FoldReporter | None = None, state_shown_as: str | None = None) -> list[dict[str, float]]:
    """Train one fold to `cfg.train.epochs`, resuming after the last epoch recorded in `fold_dir/state.pt`.

    Args:
        cfg: the experiment config.
        fold_dir: the fold's folder (rank 0 writes it; other ranks only read state.pt to resume).
        train_loader: this rank's training batches.
        val_loader: this rank's share of the held-out fold.
        ctx: fold, rank, world size and device.
        on_epoch_end: called on every rank after each epoch, with the history row and the fold folder,
            once rank 0 has written the epoch's files (Ray reporting and W&B hang here).
        dataset: the identity of the shards' dataset.json (`hnp.shard_format.Dataset.identity`), recorded in
            best.pt so that `hnp eval` can refuse other shards.
        reporter: rank 0's link to the driver's progress display (`train.progress`); None shows progress bars
            on rank 0 instead.
        state_shown_as: how messages name `fold_dir/state.pt` when it is a copy (Ray restores a checkpoint into
            a temporary folder: a damaged one is named where it is stored).

    Returns:
        The whole history, one row per epoch.
    """
    log = FoldLogger(ctx)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)  # type: ignore[arg-type]
    trainer = build_trainer(cfg, steps_per_epoch, ctx)
    history, best = resume(trainer, fold_dir / STATE_FILE, ctx, shown_as=state_shown_as)
    is_main = ctx.rank == 0
    if history and is_main:
        log.info("resuming after epoch %d of %d (best mean AUC %.4f)", len(history), cfg.train.epochs, best)
        if reporter is not None:
            reporter.resumed(len(history))
    for epoch in range(len(history) + 1, cfg.train.epochs + 1):
        # Every epoch draws from its own seeds (dropout per rank, the loader's order and jitter), so a resumed fold
        # trains its remaining epochs as an uninterrupted one would have.
        seed_everything(stream_seed(cfg.train.seed, ctx.rank, epoch))
        _set_epoch(train_loader, epoch)
        bars = is_main and reporter is None
        stats = train_one_epoch(trainer, train_loader, world_size=ctx.world_size, progress=bars,
                                desc=f"fold{ctx.fold} epoch {epoch}/{cfg.train.epochs}",
                                on_step=None if reporter is None else partial(reporter.step, epoch))
        if reporter is not None:
            reporter.validating(epoch)
        val = evaluate(trainer.module, val_loader, trainer.loss_fn, task=trainer.task, amp=cfg.train.amp,
                       device=ctx.device, channels_last=cfg.train.channels_last, progress=bars)
        history.append(history_row(epoch, stats, val))
        improved = not math.isnan(val.auc_mean) and not val.auc_mean <= best
        best = val.auc_mean if improved else best
        if is_main:
            write_epoch_files(fold_dir, trainer, cfg, ctx.fold, history, val if improved else None, best, dataset)
        if is_main:
            log.info("epoch %d: loss %.4f val_loss %.4f mean AUC %.4f%s, %.1f img/s", epoch, stats.loss, val.loss,
                     val.auc_mean, " (best)" if improved else "", stats.images_per_s)
        if reporter is not None:
            reporter.epoch_done(epoch, stats.loss, val.auc_mean, stats.images_per_s)
        if on_epoch_end is not None:
            on_epoch_end(history[-1], fold_dir)
    return history


def _set_epoch(loader: Any, epoch: int) -> None:
    # Loaders that reshuffle per epoch from a seed (DistributedSampler style) expose set_epoch.
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def write_epoch_files(fold_dir: Path, trainer: Trainer, cfg: ExperimentConfig, fold: int,
                      history: list[dict[str, float]], best_val: Validation | None, best_auc: float,
                      dataset: str = "") -> None:
    """Write the epoch's files; state.pt goes last, so a crash leaves the previous epoch resumable."""
    epoch = len(history)
    if best_val is not None:
        atomic_torch_save(checkpoint_dict(trainer.module, cfg, fold, epoch, best_val.auc, best_val.thresholds,
                                          dataset), fold_dir / "best.pt")
        predictions = best_val.predictions.assign(fold=fold)
        atomic_write(fold_dir / "val_predictions.parquet", lambda tmp: predictions.to_parquet(tmp, index=False))
    frame = pd.DataFrame(history)
    atomic_write(fold_dir / "history.csv", lambda tmp: frame.to_csv(tmp, index=False))
    atomic_torch_save({"model_state": trainer.module.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                       "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
                       "history": history, "best_auc_mean": best_auc, "config": config_to_dict(cfg)},
                      fold_dir / STATE_FILE)


def resume(trainer: Trainer, state_path: Path, ctx: FoldContext,
           shown_as: str | None = None) -> tuple[list[dict[str, float]], float]:
    """Load `state.pt` into the trainer if it exists; return the history so far and the best mean AUC.

    Args:
        shown_as: the name messages give the file (its stored original when `state_path` is a copy).
    """
    if not state_path.is_file():
        return [], -math.inf
    name = shown_as or str(state_path)
    restart = "delete it (or the fold folder) to train the fold again from epoch 1"
    state = load_torch_file(state_path, map_location=ctx.device, hint=f"the fold cannot resume from it; {restart}",
                            shown_as=name)
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise HnpError(f"{name}: not a training state (no {', '.join(missing)}); {restart}")
    try:
        trainer.module.load_state_dict(state["model_state"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise HnpError(f"{name}: cannot resume from it ({err}); was it written by another config? "
                       "Delete the fold folder to start the fold again") from err
    return list(state["history"]), float(state["best_auc_mean"])
