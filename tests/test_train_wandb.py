"""W&B: the offline run of a fold holds the per-level AUC keys, and a relaunch continues the same run."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.wandb_files import completed_run_records

from hnp.config import load_config
from hnp.levels import LEVELS
from train.wandb_log import epoch_metrics, fold_run_id, log_epoch, start_fold_run


def _row(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.6, "lr": 1e-3, "val_auc_mean": 0.7,
            **{f"val_auc_{level}": 0.6 + 0.01 * i for i, level in enumerate(LEVELS)}, "img_per_s": 100.0,
            "seconds": 1.0}


def test_offline_run_holds_per_level_auc_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config("tiny", ["name=wbtest"])
    run = start_fold_run(cfg, fold=3, run_dir=tmp_path)
    assert run.name == "wbtest-fold3" and run.group == "wbtest" and run.id == fold_run_id(cfg, 3, tmp_path)
    log_epoch(run, _row(1))
    run.finish()
    history = [record.history for record in completed_run_records(tmp_path) if record.HasField("history")]
    keys = {item.key or "/".join(item.nested_key) for entry in history for item in entry.item}
    assert {f"val/auc/{level}" for level in LEVELS} | {"val/auc_mean", "train/loss", "lr", "img_per_s"} <= keys
    assert not list(tmp_path.rglob("code/**/*.py"))  # no source code captured


def test_off_mode_logs_nothing_and_ids_are_stable(tmp_path: Path) -> None:
    cfg = load_config("tiny", ['wandb.mode="off"'])
    assert start_fold_run(cfg, fold=0, run_dir=tmp_path) is None
    log_epoch(None, _row(1))
    assert not (tmp_path / "wandb").exists()
    assert fold_run_id(cfg, 0, tmp_path) == fold_run_id(cfg, 0, tmp_path / ".")
    assert fold_run_id(cfg, 0, tmp_path) != fold_run_id(cfg, 1, tmp_path)
    assert epoch_metrics(_row(2))["val/auc/L5-S1"] == pytest.approx(0.64)
