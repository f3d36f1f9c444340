"""Training a fusion model through `train.loop` (the loop Ray's workers run): study batches in, validation AUC and
out-of-fold predictions per study out, the fusion mode in the checkpoint; an exact resume, W&B, bf16 autocast."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from support.studies import build_study_shards
from support.wandb_files import completed_run_records

from hnp.config import ExperimentConfig, WandbConfig, load_config
from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.shard_format import read_dataset
from train.fusion import build_fold_loader, build_fusion_model, check_fusion_init
from train.loop import FoldContext, autocast, build_trainer, train_fold, train_one_epoch
from train.model import build_model, checkpoint_dict, load_checkpoint
from train.progress import FoldReporter
from train.wandb_log import start_fold_run


def fusion_cfg(mode: str, **model: object) -> ExperimentConfig:
    cfg = load_config("tiny", [f"model.fusion={mode}", "model.fusion_dim=32", "data.loader=torch",
                               "data.image_size=32", "data.batch_size=4", "data.num_threads=0", "data.view_dropout=0.3",
                               "train.epochs=1", "wandb.mode='off'"])
    return replace(cfg, model=replace(cfg.model, **model))


def test_a_fold_trains_on_study_batches_and_writes_per_study_predictions(tmp_path: Path) -> None:
    shards = build_study_shards(tmp_path / "data", copies=4)
    cfg = fusion_cfg("attention")
    train = build_fold_loader(cfg, shards, ["fold1"], training=True, seed=0)
    val = build_fold_loader(cfg, shards, ["fold0"], training=False)
    history = train_fold(cfg, tmp_path / "fold0", train, val, FoldContext(fold=0))
    assert [row["epoch"] for row in history] == [1]
    frame = pd.read_parquet(tmp_path / "fold0" / "val_predictions.parquet")
    expected = {study.key for study in read_dataset(shards).split_studies(["fold0"])}
    assert set(frame["key"]) == expected and len(frame) == len(expected)  # one row per study, each once
    assert {f"prob_{level}" for level in LEVELS} <= set(frame.columns)
    best = load_checkpoint(tmp_path / "fold0" / "best.pt")
    assert best.fusion == "attention" and best.config.model.fusion_dim == 32
    assert set(best.val_auc) == set(LEVELS)


def _fold(cfg: ExperimentConfig, shards: Path, fold_dir: Path, run: object = None) -> list[dict[str, float]]:
    """One launch of fold 0 on fold 1 with new loaders, as a relaunched worker builds them; each epoch to W&B."""
    from train.wandb_log import log_epoch

    train = build_fold_loader(cfg, shards, ["fold1"], training=True, seed=cfg.train.seed)
    val = build_fold_loader(cfg, shards, ["fold0"], training=False)
    return train_fold(cfg, fold_dir, train, val, FoldContext(fold=0), on_epoch_end=lambda row, _: log_epoch(run, row))


def test_a_resumed_fusion_fold_ends_with_the_weights_of_an_uninterrupted_one_and_logs_each_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    shards = build_study_shards(tmp_path / "data", copies=4)

    def cfg(epochs: int) -> ExperimentConfig:  # view dropout and head dropout on: the draws must replay too
        base = fusion_cfg("attention", drop_rate=0.3)
        return replace(base, train=replace(base.train, epochs=epochs), optim=replace(base.optim, t_0=1),
                       wandb=WandbConfig(mode="offline"))

    straight = _fold(cfg(2), shards, tmp_path / "straight")
    _fold(cfg(1), shards, tmp_path / "stopped")
    run = start_fold_run(cfg(2), fold=0, run_dir=tmp_path / "wandb_run")
    resumed = _fold(cfg(2), shards, tmp_path / "stopped", run)
    run.finish()
    columns = ["epoch", "train_loss", "val_loss", "val_auc_mean", "lr"]
    assert pd.DataFrame(resumed)[columns].equals(pd.DataFrame(straight)[columns])
    weights = [torch.load(folder / "state.pt", weights_only=True)["model_state"]
               for folder in (tmp_path / "straight", tmp_path / "stopped")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    logged = [item.key or "/".join(item.nested_key) for record in completed_run_records(tmp_path / "wandb_run")
              if record.HasField("history") for item in record.history.item]
    assert {f"val/auc/{level}" for level in LEVELS} <= set(logged)
    assert logged.count("val/auc_mean") == 1  # the resumed launch logs only the epoch it trained


def test_fusion_under_bf16_autocast_scores_as_in_float32_and_trains(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = fusion_cfg("attention")
    model = build_fusion_model(cfg.model, channels=1).eval()
    films = torch.randn(5, 1, 32, 32)
    views = torch.tensor([[0, 1, 4], [5, 2, -1]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        exact = model(films, views, mask)
        with autocast("bf16", torch.device("cpu")):
            low = model(films, views, mask)
    assert low.dtype == torch.bfloat16 and (low.float() - exact).abs().max() < 0.05
    shards = build_study_shards(tmp_path / "data", copies=4)
    history = _fold(replace(cfg, train=replace(cfg.train, amp="bf16")), shards, tmp_path / "fold0")
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_auc_mean"])


def test_the_running_loss_of_a_fusion_epoch_is_per_study_and_its_speed_per_film(tmp_path: Path) -> None:
    # The progress display showed a fusion fold's loss divided by its films instead of its studies (0.198 for an
    # epoch whose loss was 0.698): the step hook now gets both counts.
    shards = build_study_shards(tmp_path / "data", copies=4)
    cfg = fusion_cfg("attention")
    loader = build_fold_loader(cfg, shards, ["fold1"], training=True, seed=0)
    calls = []
    trainer = build_trainer(cfg, steps_per_epoch=len(loader), ctx=FoldContext(fold=0))
    stats = train_one_epoch(trainer, loader, progress=False,
                            on_step=lambda *args: calls.append((float(args[2]), *args[3:5])))
    loss_sum, studies, films = calls[-1]
    assert studies == len(loader) * cfg.data.batch_size and films == stats.images > studies
    assert loss_sum / studies == pytest.approx(stats.loss, rel=1e-6)
    sent = []
    reporter = FoldReporter("no-board", fold=0, epochs=1)
    reporter._board = SimpleNamespace(update=SimpleNamespace(remote=lambda fold, fields: sent.append(fields)))
    reporter.step(1, len(loader), len(loader), torch.tensor(loss_sum), studies, films, seconds=2.0)
    assert sent[-1]["loss"] == pytest.approx(stats.loss, rel=1e-6) and sent[-1]["images_per_s"] == films / 2.0


def _image_run(run_dir: Path, cfg: ExperimentConfig, dataset: str, **changes: object) -> None:
    """A run folder of image-level fold checkpoints as `hnp train` writes them: fold k's weights seeded k."""
    image_cfg = replace(cfg, model=replace(cfg.model, **{"fusion": "none", "fusion_init": "", "fusion_train": "all",
                                                         **changes}))
    for fold in range(cfg.folds):
        torch.manual_seed(fold)
        model = build_model(image_cfg.model, image_cfg.data.channels)
        (run_dir / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint_dict(model, image_cfg, fold, 1, {}, {}, dataset), run_dir / f"fold{fold}" / "best.pt")


def test_a_fusion_fold_starts_from_the_same_fold_of_an_image_run(tmp_path: Path) -> None:
    cfg = fusion_cfg("attention", fusion_init=str(tmp_path / "image"))
    _image_run(tmp_path / "image", cfg, dataset="shards-1")
    check_fusion_init(cfg, "shards-1")
    trainer = build_trainer(cfg, steps_per_epoch=1, ctx=FoldContext(fold=1))
    fold1 = load_checkpoint(tmp_path / "image" / "fold1" / "best.pt").model
    torch.testing.assert_close(trainer.module.film_head[-1].weight, fold1.get_classifier().weight)
    torch.testing.assert_close(trainer.module.backbone.conv_stem.weight, fold1.conv_stem.weight)


def test_training_the_head_only_leaves_the_image_runs_backbone_and_film_head_as_they_were(tmp_path: Path) -> None:
    shards = build_study_shards(tmp_path / "data", copies=4)
    cfg = fusion_cfg("attention", fusion_init=str(tmp_path / "image"), fusion_train="head")
    _image_run(tmp_path / "image", cfg, dataset=read_dataset(shards).identity)
    loader = build_fold_loader(cfg, shards, ["fold1"], training=True, seed=0)
    trainer = build_trainer(cfg, steps_per_epoch=len(loader), ctx=FoldContext(fold=0))
    before = {name: value.clone() for name, value in trainer.module.state_dict().items()}
    train_one_epoch(trainer, loader, progress=False)
    after = trainer.module.state_dict()
    frozen = [name for name in before if name.startswith(("backbone.", "film_head."))]
    assert any("running_mean" in name for name in frozen)  # batch norm statistics are among them
    changed = [name for name in frozen if not torch.equal(before[name], after[name])]
    assert not changed
    assert not torch.equal(before["head.4.weight"], after["head.4.weight"])  # the fusion head learned


@pytest.mark.parametrize(("change", "dataset", "message"), [
    ({"name": "resnet18"}, "shards-1", "model.name is 'resnet18' there"),
    ({"task": "any"}, "shards-1", "model.task is 'any' there"),
    ({}, "shards-2", "trained on shards shards-2, not these (shards-1)"),
    ({"fusion": "mean"}, "shards-1", "a fusion model (model.fusion: mean)"),
])
def test_a_fusion_run_refuses_to_start_from_a_run_that_does_not_fit(tmp_path: Path, change: dict, dataset: str,
                                                                    message: str) -> None:
    cfg = fusion_cfg("attention", fusion_init=str(tmp_path / "image"))
    _image_run(tmp_path / "image", cfg, dataset=dataset, **change)
    with pytest.raises(HnpError, match=rf"model.fusion_init: .*fold0.best.pt: {re.escape(message)}"):
        check_fusion_init(cfg, "shards-1")


def test_a_fusion_run_names_the_missing_checkpoint_of_its_image_run(tmp_path: Path) -> None:
    cfg = fusion_cfg("attention", fusion_init=str(tmp_path / "image"))
    _image_run(tmp_path / "image", cfg, dataset="shards-1")
    (tmp_path / "image" / "fold1" / "best.pt").unlink()
    with pytest.raises(HnpError, match=r"model.fusion_init: .*fold1.best.pt: checkpoint not found"):
        check_fusion_init(cfg, "shards-1")
