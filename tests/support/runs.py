"""Tiny evaluable worlds for the eval tests: phantom radiographs, their shards, and a run of 4 fold checkpoints.

The checkpoints are `train.model.build_model` networks saved in the best.pt format with `checkpoint_dict`; their
val_predictions.parquet come from running each one on its held-out fold, written with the training loop's own
`prediction_frame`, so the files have exactly the layout `hnp train` writes. The weights are random unless
`train_steps` > 0 (then Adam steps on the fold's training shards through the real loader).

`build_trained_world` is the one briefly trained run the eval tests share (conftest.py's session fixture
`trained_world`): its numbers carry the phantom's planted signal, so a test can hold them to a floor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hnp.config import ExperimentConfig, load_config, save_config
from hnp.shard_format import read_dataset
from phantom.generate import PhantomConfig, generate
from pipeline import build_loader, split_shards
from sharding.build import ShardOptions, shard_manifest
from train.fusion import build_fold_loader
from train.loop import evaluate
from train.model import TaskLoss, build_model, checkpoint_dict, task_targets

# The trained world, measured on the shared 2-core machine (2026-12, load average 10-65; one torch thread while
# training): phantom, shards and 4 folds x 200 Adam steps of 16 images at 64 px, with each held-out fold's
# predictions, 49 CPU s (the wall time is the load's). Reached: per-patient test ROC AUC (18 test patients, bagged
# over the 4 folds) 0.97-1.00 at every level and 1.00 for "any"; each fold's out-of-fold mean AUC 0.87-0.94 (per
# image; per level 0.63-0.99). For comparison, 60 steps at lr 3e-3 reached 0.5-0.6, and 2 torch threads on the
# loaded machine took 8x the CPU time of one.
TRAINED_PATIENTS = 60
TRAINED_SIZE = (256, 200)  # phantom (height, width); the model sees 64 x 64
TRAINED_STEPS = 200
TRAINED_LR = 1e-2
# What every level's per-patient test AUC of the trained world must reach: well under what it reaches, well over
# what predictions paired with the wrong images or labels score (about 0.5, rarely above 0.7 at all five levels).
TRAINED_TEST_AUC_FLOOR = 0.75


def tiny_config(task: str = "levels", loader: str = "torch", batch_size: int = 8) -> ExperimentConfig:
    """The tiny config at 64 px, small batches, W&B off: seconds on one core."""
    overrides = [f"model.task={task}", f"data.loader={loader}", "data.image_size=64", f"data.batch_size={batch_size}",
                 "data.num_threads=1", "wandb.mode='off'", "name=evaltest"]
    return load_config("tiny", overrides)


def build_phantom_shards(folder: Path, patients: int = 24, seed: int = 0,
                         size: tuple[int, int] = (128, 100)) -> tuple[Path, Path]:
    """Phantom (balanced prevalence, `size` px) and its 4-fold shards; returns (shards folder, truth.parquet)."""
    phantom = folder / "phantom"
    generate(PhantomConfig(out=phantom, patients=patients, seed=seed, size=size, prevalence="balanced",
                           test_fraction=0.3, workers=1), progress=False)
    shards = folder / "shards"
    shard_manifest(ShardOptions(manifest=phantom / "manifest.parquet", out=shards, folds=4, seed=seed,
                                shard_bytes=64 * 2**10, progress=False))
    return shards, phantom / "truth.parquet"


def build_trained_world(folder: Path) -> dict[str, Path]:
    """The briefly trained run of the phantom that the eval tests share: shards, truth, run and phantom folders.

    Every fold model trains from scratch on its own 3 training folds (TRAINED_STEPS Adam steps at TRAINED_LR, the
    real torch loader), so its val_predictions are out-of-fold for real. Costs and reached AUCs are in the comment
    above TRAINED_PATIENTS; the eval tests hold the test AUCs to TRAINED_TEST_AUC_FLOOR.

    Args:
        folder: an empty folder to build in.
    """
    shards, truth = build_phantom_shards(folder, patients=TRAINED_PATIENTS, size=TRAINED_SIZE)
    run = build_run(folder, shards, tiny_config(batch_size=16), train_steps=TRAINED_STEPS, lr=TRAINED_LR)
    return {"folder": folder, "shards": shards, "truth": truth, "run": run, "phantom": truth.parent}


def build_run(folder: Path, shards: Path, cfg: ExperimentConfig, train_steps: int = 0,
              lr: float | None = None) -> Path:
    """fold{k}/best.pt and val_predictions.parquet for each fold, plus config.yaml; returns the run folder.

    Args:
        folder: the run goes to `folder/run`.
        shards: the shard folder.
        cfg: the run's config (saved as its config.yaml and in each best.pt).
        train_steps: Adam steps per fold on its training folds; 0 leaves the random initial weights.
        lr: the learning rate of those steps (default: the config's).
    """
    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    dataset = read_dataset(shards).identity
    for fold in range(cfg.folds):
        torch.manual_seed(fold)
        model = build_model(cfg.model, cfg.data.channels)
        loss_fn = TaskLoss(cfg.model)
        if train_steps:
            _train_briefly(model, loss_fn, cfg, shards, fold, train_steps, lr or cfg.optim.lr)
        held_out = build_fold_loader(cfg, shards, [f"fold{fold}"], training=False)  # images, or studies (fusion)
        val = evaluate(model.eval(), held_out, loss_fn, task=cfg.model.task, amp="off", device=torch.device("cpu"),
                       channels_last=False, progress=False)
        fold_dir = run / f"fold{fold}"
        fold_dir.mkdir(exist_ok=True)
        torch.save(checkpoint_dict(model, cfg, fold, 1, val.auc, val.thresholds, dataset), fold_dir / "best.pt")
        val.predictions.assign(fold=fold).to_parquet(fold_dir / "val_predictions.parquet", index=False)
    return run


def _train_briefly(model: torch.nn.Module, loss_fn: TaskLoss, cfg: ExperimentConfig, shards: Path, fold: int,
                   steps: int, lr: float) -> None:
    train_splits = [f"fold{k}" for k in range(cfg.folds) if k != fold]
    loader = build_loader(cfg.data, split_shards(shards, train_splits), training=True, seed=fold)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    done, epoch = 0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second thread only waits (8x the CPU time on a loaded machine)
    try:
        while done < steps:
            loader.set_epoch(epoch)
            epoch += 1
            for batch in loader:
                loss = loss_fn(model(batch["image"]), task_targets(batch, cfg.model.task))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                done += 1
                if done == steps:
                    break
    finally:
        torch.set_num_threads(threads)
