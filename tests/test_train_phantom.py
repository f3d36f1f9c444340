"""The loop alone (no Ray) learns the phantom's planted signal from real shards through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnp.cli import main as hnp_main
from hnp.config import load_config
from pipeline.dataset import split_shards
from pipeline.loader import build_loader
from train.loop import FoldContext, train_fold
from train.model import load_checkpoint


@pytest.mark.slow
def test_loop_learns_lower_levels_on_phantom_shards(tmp_path: Path) -> None:
    assert hnp_main(["phantom", "--out", str(tmp_path / "data"), "--patients", "240", "--size", "256x200",
                     "--prevalence", "balanced"]) == 0
    assert hnp_main(["shard", "--manifest", str(tmp_path / "data" / "manifest.parquet"),
                     "--out", str(tmp_path / "shards"), "--no-progress"]) == 0
    cfg = load_config("tiny", ["train.epochs=4", "optim.t_0=4", "data.batch_size=32"])
    shards = tmp_path / "shards"
    train = build_loader(cfg.data, split_shards(shards, ["fold1", "fold2", "fold3"]), training=True)
    val = build_loader(cfg.data, split_shards(shards, ["fold0"]), training=False)
    history = train_fold(cfg, tmp_path / "run", train, val, FoldContext(fold=0))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    # The phantom narrows the herniated disc space: a from-scratch 0.1 M-parameter net sees it within epochs.
    assert best.val_auc["L4-5"] > 0.65 and best.val_auc["L5-S1"] > 0.65, best.val_auc
