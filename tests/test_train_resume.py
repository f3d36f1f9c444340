"""A fold stopped after an epoch and resumed ends exactly where an uninterrupted run ends (on the CPU, where the
kernels are deterministic): same batches, same dropout and jitter draws, same weights."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from support.shards import build_shards

from hnp.config import ExperimentConfig, load_config
from pipeline import build_loader, split_shards
from train.loop import FoldContext, train_fold


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shards(tmp_path_factory.mktemp("resume"))


def resume_cfg(loader: str, epochs: int) -> ExperimentConfig:
    """The tiny config with every source of randomness switched on: shuffling, jitter and dropout."""
    overrides = [f"data.loader={loader}", "data.image_size=48", "data.batch_size=4", "data.shuffle_buffer=8",
                 f"data.num_threads={1 if loader == 'dali' else 0}", "data.augment.enabled=true",
                 "model.drop_rate=0.4", f"train.epochs={epochs}", "optim.t_0=1"]
    return load_config("tiny", overrides)


def train(cfg: ExperimentConfig, shards: Path, fold_dir: Path) -> list[dict[str, float]]:
    """One launch of fold 0 with new loaders, as a relaunched worker builds them."""
    train_loader = build_loader(cfg.data, split_shards(shards, ["fold1", "fold2", "fold3"]), training=True)
    val_loader = build_loader(cfg.data, split_shards(shards, ["fold0"]), training=False)
    return train_fold(cfg, fold_dir, train_loader, val_loader, FoldContext(fold=0))


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_a_resumed_fold_ends_with_the_weights_of_an_uninterrupted_one(shards_dir: Path, tmp_path: Path,
                                                                      loader: str) -> None:
    straight = train(resume_cfg(loader, epochs=3), shards_dir, tmp_path / "straight")
    train(resume_cfg(loader, epochs=1), shards_dir, tmp_path / "stopped")
    resumed = train(resume_cfg(loader, epochs=3), shards_dir, tmp_path / "stopped")
    columns = ["epoch", "train_loss", "val_loss", "val_auc_mean", "lr"]
    assert pd.DataFrame(resumed)[columns].equals(pd.DataFrame(straight)[columns])
    weights = [torch.load(folder / "state.pt", weights_only=True)["model_state"]
               for folder in (tmp_path / "straight", tmp_path / "stopped")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
