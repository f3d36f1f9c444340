"""The training loop without Ray, on synthetic in-memory batches in pipeline.build_loader's format."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from hnp.config import ExperimentConfig, load_config
from hnp.levels import LEVELS
from train.loop import FoldContext, build_scheduler, train_fold
from train.model import load_checkpoint


class BandLoader:
    """A fixed set of batches: level j positive brightens horizontal band j of a noisy gray image,
    so each level is learnable on its own. Age shifts the overall brightness."""

    def __init__(self, n: int, batch_size: int, seed: int, size: int = 32) -> None:
        gen = torch.Generator().manual_seed(seed)
        labels = (torch.rand(n, 5, generator=gen) < 0.4).float()
        age = 20 + 60 * torch.rand(n, generator=gen)
        images = torch.randn(n, 1, size, size, generator=gen) * 0.5 + (age / 80)[:, None, None, None]
        band = size // 5
        for j in range(5):
            images[:, 0, j * band:(j + 1) * band, :] += 1.5 * labels[:, j, None, None]
        self.batches = [{"image": images[i:i + batch_size], "labels": labels[i:i + batch_size],
                         "any": labels[i:i + batch_size].amax(dim=1), "age": age[i:i + batch_size],
                         "key": [f"r{k:07d}" for k in range(i, min(i + batch_size, n))]}
                        for i in range(0, n, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _cfg(task: str, **train: object) -> ExperimentConfig:
    cfg = load_config("tiny", [f"model.task={task}", "train.epochs=3", "optim.t_0=3"])
    return replace(cfg, train=replace(cfg.train, **train))


@pytest.mark.parametrize("task", ["any", "levels", "levels_age"])
def test_every_task_learns_and_writes_the_run_contract(task: str, tmp_path: Path) -> None:
    cfg = _cfg(task)
    history = train_fold(cfg, tmp_path, BandLoader(96, 16, seed=1), BandLoader(64, 16, seed=2), FoldContext(fold=1))
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = load_checkpoint(tmp_path / "best.pt")
    names = ("any",) if task == "any" else LEVELS
    assert set(best.val_auc) == set(names) == set(best.thresholds)
    assert sum(best.val_auc.values()) / len(names) > 0.75, best.val_auc
    assert best.fold == 1 and 1 <= best.epoch <= 3
    frame = pd.read_parquet(tmp_path / "val_predictions.parquet")
    assert len(frame) == 64 and frame["key"].is_unique and (frame["fold"] == 1).all()
    assert ("pred_age" in frame) == (task == "levels_age")
    csv = pd.read_csv(tmp_path / "history.csv")
    assert list(csv["epoch"]) == [1, 2, 3]
    assert {"train_loss", "val_loss", "lr", "val_auc_mean", "img_per_s", f"val_auc_{names[0]}"} <= set(csv.columns)


def test_resume_skips_finished_epochs(tmp_path: Path) -> None:
    cfg = _cfg("levels")
    train, val = BandLoader(32, 16, seed=1), BandLoader(32, 16, seed=2)
    seen: list[int] = []
    first = train_fold(replace(cfg, train=replace(cfg.train, epochs=2)), tmp_path, train, val, FoldContext(fold=0),
                       on_epoch_end=lambda row, _: seen.append(row["epoch"]))
    resumed = train_fold(cfg, tmp_path, train, val, FoldContext(fold=0),
                         on_epoch_end=lambda row, _: seen.append(row["epoch"]))
    assert seen == [1, 2, 3]  # the relaunch ran epoch 3 only
    assert resumed[:2] == first and len(resumed) == 3
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2, 3]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_accumulation_train(amp: str, tmp_path: Path) -> None:
    cfg = _cfg("levels", amp=amp, grad_accum=2, channels_last=True, epochs=1)
    history = train_fold(cfg, tmp_path, BandLoader(48, 8, seed=1), BandLoader(32, 16, seed=2), FoldContext(fold=0))
    assert math.isfinite(history[0]["train_loss"]) and history[0]["img_per_s"] > 0


def test_scheduler_restarts_after_t0_epochs() -> None:
    cfg = load_config("tiny", ["optim.t_0=1", "optim.t_mult=1", "optim.lr=1.0e-3"])
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[2] < lrs[1] and lrs[3] == pytest.approx(1e-3)  # back to the top after 4 steps
