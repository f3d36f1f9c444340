"""The training loop without Ray, on synthetic in-memory batches in pipeline.build_loader's format."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import train.loop
from hnp.config import ExperimentConfig, load_config
from hnp.levels import LEVELS
from train.loop import FoldContext, Trainer, Validation, build_scheduler, score_targets, train_fold, train_one_epoch
from train.model import TaskLoss, load_checkpoint


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
    csv = pd.read_csv(tmp_path / "history.csv")
    assert list(csv["epoch"]) == [1, 2, 3]
    assert {"train_loss", "val_loss", "lr", "val_auc_mean", "img_per_s", f"val_auc_{names[0]}"} <= set(csv.columns)
    # best.pt is the epoch of the highest mean validation AUC, with that epoch's per-level AUCs
    assert best.fold == 1 and best.epoch == 1 + int(csv["val_auc_mean"].to_numpy().argmax())
    assert best.val_auc == pytest.approx({name: csv[f"val_auc_{name}"][best.epoch - 1] for name in names})
    frame = pd.read_parquet(tmp_path / "val_predictions.parquet")
    assert len(frame) == 64 and frame["key"].is_unique and (frame["fold"] == 1).all()
    assert ("pred_age" in frame) == (task == "levels_age")
    # ... and its out-of-fold predictions are that model's: scoring them gives best.pt's AUCs
    assert score_targets(frame, task)[0] == pytest.approx(best.val_auc)


# Validation results of successive epochs (mean AUC over the levels that have one), scripted so that the best epoch
# is neither the first nor the last: a NaN epoch, an epoch with one level undefined, and a later tie.
SCRIPTED_AUC = [dict.fromkeys(LEVELS, 0.6), dict.fromkeys(LEVELS, math.nan),
                {**dict.fromkeys(LEVELS, 0.8), "L1-2": math.nan},
                dict.fromkeys(LEVELS, 0.8), dict.fromkeys(LEVELS, 0.7)]


def test_best_checkpoint_is_the_first_epoch_of_highest_mean_auc_across_a_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint choice alone: each epoch's validation is scripted (SCRIPTED_AUC); the fold trains 3 epochs,
    then a relaunch resumes it to 5. best.pt must follow epoch 1, 1, 3, 3, 3: a NaN mean never wins, a level
    without an AUC does not spoil the mean, a tie keeps the earlier epoch, and the resumed run remembers the best."""
    epochs = iter(range(len(SCRIPTED_AUC)))

    def scripted(module, loader, loss_fn, **kwargs) -> Validation:
        epoch = next(epochs)
        return Validation(loss=0.5, auc=SCRIPTED_AUC[epoch], thresholds=dict.fromkeys(LEVELS, epoch / 10),
                          predictions=pd.DataFrame({"key": ["r0000000"], "epoch": [epoch + 1]}))

    monkeypatch.setattr(train.loop, "evaluate", scripted)
    chosen, weights = [], []

    def after_epoch(row: dict[str, float], fold_dir: Path) -> None:
        chosen.append((torch.load(fold_dir / "best.pt", weights_only=True)["epoch"],
                       int(pd.read_parquet(fold_dir / "val_predictions.parquet")["epoch"][0])))
        weights.append(torch.load(fold_dir / "state.pt", weights_only=False)["model_state"])

    batches, held_out = BandLoader(32, 16, seed=1), BandLoader(16, 16, seed=2)
    for epochs_now in (3, 5):
        train_fold(_cfg("levels", epochs=epochs_now), tmp_path, batches, held_out, FoldContext(fold=0),
                   on_epoch_end=after_epoch)
    assert chosen == [(1, 1), (1, 1), (3, 3), (3, 3), (3, 3)]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["thresholds"] == pytest.approx(dict.fromkeys(LEVELS, 0.2))
    assert math.isnan(best["val_auc"]["L1-2"]) and best["val_auc"]["L4-5"] == 0.8
    assert all(torch.equal(best["model_state"][name], weights[2][name]) for name in weights[2])  # epoch 3's weights
    assert pd.read_csv(tmp_path / "history.csv")["val_auc_mean"].tolist() == pytest.approx(
        [0.6, math.nan, 0.8, 0.8, 0.7], nan_ok=True)


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
    """The real model under AMP with accumulation over 2 batches: 7 batches make 4 optimizer steps (the last one
    alone), counted by the scheduler and the optimizer saved in state.pt; fp16's grad scaler skips the steps whose
    scaled gradients overflowed, halving its scale for each."""
    cfg = _cfg("levels", amp=amp, grad_accum=2, channels_last=True, epochs=1)
    history = train_fold(cfg, tmp_path, BandLoader(56, 8, seed=1), BandLoader(32, 16, seed=2), FoldContext(fold=0))
    assert math.isfinite(history[0]["train_loss"]) and history[0]["img_per_s"] > 0
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    skipped = round(math.log2(2.0**16 / state["scaler"]["scale"])) if amp == "fp16" else 0  # from the initial 2**16
    assert {int(param["step"]) + skipped for param in state["optimizer"]["state"].values()} == {4}
    assert state["scheduler"]["last_epoch"] == 4


def _linear_trainer(grad_accum: int) -> Trainer:
    """A Trainer around a batch-norm-free linear model and plain SGD, whose step is linear in the gradient (Adam's
    is nearly scale-free, and batch norm makes 2 x 8 images differ from 16 in the forward pass itself)."""
    cfg = _cfg("levels", grad_accum=grad_accum)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, len(LEVELS)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return Trainer(module=model, model=model, loss_fn=TaskLoss(cfg.model), optimizer=optimizer,
                   scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                   scaler=torch.amp.GradScaler("cpu", enabled=False), cfg=cfg.train, task="levels",
                   device=torch.device("cpu"))


def test_accumulating_two_batches_is_one_step_of_the_batch_twice_as_large() -> None:
    small, large = _linear_trainer(grad_accum=2), _linear_trainer(grad_accum=1)
    stats = train_one_epoch(small, BandLoader(48, 8, seed=1), progress=False)  # 6 batches: 3 steps
    train_one_epoch(large, BandLoader(48, 16, seed=1), progress=False)  # the same images, 3 batches: 3 steps
    assert small.scheduler.last_epoch == large.scheduler.last_epoch == 3
    for accumulated, whole in zip(small.module.parameters(), large.module.parameters(), strict=True):
        torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-6)
    assert stats.images == 48 and math.isfinite(stats.loss)


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
