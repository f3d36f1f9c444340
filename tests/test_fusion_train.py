"""Training a fusion model through `train.loop` (the loop Ray's workers run): study batches in, validation AUC and
out-of-fold predictions per study out, the fusion mode in the checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
from support.studies import build_study_shards

from hnp.config import ExperimentConfig, load_config
from hnp.levels import LEVELS
from hnp.shard_format import read_dataset
from train.fusion import build_fold_loader
from train.loop import FoldContext, train_fold
from train.model import load_checkpoint


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
