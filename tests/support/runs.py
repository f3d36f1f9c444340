"""A tiny evaluable world for the eval tests: phantom radiographs, their shards, and a run of 4 fold checkpoints.

The checkpoints are `train.model.build_model` networks saved in the best.pt format with `checkpoint_dict`; their
val_predictions.parquet come from running each one on its held-out fold, written with the training loop's own
`prediction_frame`, so the files have exactly the layout `hnp train` writes. The weights are random unless
`train_steps` > 0 (then a few Adam steps on the fold's training shards): the eval tests check the plumbing, the
benchmark (BENCHMARKS.md) measures what a trained run scores.
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
from train.model import TaskLoss, build_model, checkpoint_dict


def tiny_config(task: str = "levels", loader: str = "torch") -> ExperimentConfig:
    """The tiny config at 64 px, small batches, W&B off: seconds on one core."""
    overrides = [f"model.task={task}", f"data.loader={loader}", "data.image_size=64", "data.batch_size=8",
                 "data.num_threads=1", "wandb.mode='off'", "name=evaltest"]
    return load_config("tiny", overrides)


def build_phantom_shards(folder: Path, patients: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Phantom (balanced prevalence, 128x100 px) and its 4-fold shards; returns (shards folder, truth.parquet)."""
    phantom = folder / "phantom"
    generate(PhantomConfig(out=phantom, patients=patients, seed=seed, size=(128, 100), prevalence="balanced",
                           test_fraction=0.3, workers=1), progress=False)
    shards = folder / "shards"
    shard_manifest(ShardOptions(manifest=phantom / "manifest.parquet", out=shards, folds=4, seed=seed,
                                shard_bytes=64 * 2**10, progress=False))
    return shards, phantom / "truth.parquet"


def build_run(folder: Path, shards: Path, cfg: ExperimentConfig, train_steps: int = 0) -> Path:
    """fold{k}/best.pt and val_predictions.parquet for each fold, plus config.yaml; returns the run folder."""
    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    dataset = read_dataset(shards).identity
    for fold in range(cfg.folds):
        torch.manual_seed(fold)
        model = build_model(cfg.model, cfg.data.channels)
        loss_fn = TaskLoss(cfg.model)
        if train_steps:
            _train_briefly(model, loss_fn, cfg, shards, fold, train_steps)
        held_out = build_fold_loader(cfg, shards, [f"fold{fold}"], training=False)  # images, or studies (fusion)
        val = evaluate(model.eval(), held_out, loss_fn, task=cfg.model.task, amp="off", device=torch.device("cpu"),
                       channels_last=False, progress=False)
        fold_dir = run / f"fold{fold}"
        fold_dir.mkdir(exist_ok=True)
        torch.save(checkpoint_dict(model, cfg, fold, 1, val.auc, val.thresholds, dataset), fold_dir / "best.pt")
        val.predictions.assign(fold=fold).to_parquet(fold_dir / "val_predictions.parquet", index=False)
    return run


def _train_briefly(model: torch.nn.Module, loss_fn: TaskLoss, cfg: ExperimentConfig, shards: Path, fold: int,
                   steps: int) -> None:
    from train.model import task_targets

    train_splits = [f"fold{k}" for k in range(cfg.folds) if k != fold]
    loader = build_loader(cfg.data, split_shards(shards, train_splits), training=True, seed=fold)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            loss = loss_fn(model(batch["image"]), task_targets(batch, cfg.model.task))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
