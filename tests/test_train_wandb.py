"""W&B: the offline run of a fold holds the per-level AUC keys, and a relaunch continues the same run."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hnp.config import load_config
from hnp.levels import LEVELS
from train.wandb_log import epoch_metrics, fold_run_id, log_epoch, start_fold_run

wandb = pytest.importorskip("wandb")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BLOCK = 32 * 1024


def read_wandb_records(path: Path) -> list:
    """Decode a `run-*.wandb` file: a 7-byte header, then LevelDB-log framing (32 KiB blocks, 7-byte record
    headers: crc32, length, type full/first/middle/last) of wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    records, chunks, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += BLOCK - pos % BLOCK
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last: a whole record is assembled
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _row(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.6, "lr": 1e-3, "val_auc_mean": 0.7,
            **{f"val_auc_{level}": 0.6 + 0.01 * i for i, level in enumerate(LEVELS)}, "img_per_s": 100.0,
            "seconds": 1.0}


def test_offline_run_holds_per_level_auc_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(CONFIGS / "tiny.yaml", ["name=wbtest"])
    run = start_fold_run(cfg, fold=3, run_dir=tmp_path)
    assert run.name == "wbtest-fold3" and run.group == "wbtest" and run.id == fold_run_id(cfg, 3, tmp_path)
    log_epoch(run, _row(1))
    run.finish()
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history = [record.history for record in read_wandb_records(files[0]) if record.HasField("history")]
    keys = {item.key or "/".join(item.nested_key) for entry in history for item in entry.item}
    assert {f"val/auc/{level}" for level in LEVELS} | {"val/auc_mean", "train/loss", "lr", "img_per_s"} <= keys
    assert not list(tmp_path.rglob("code/**/*.py"))  # no source code captured


def test_off_mode_logs_nothing_and_ids_are_stable(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "tiny.yaml", ['wandb.mode="off"'])
    assert start_fold_run(cfg, fold=0, run_dir=tmp_path) is None
    log_epoch(None, _row(1))
    assert not (tmp_path / "wandb").exists()
    assert fold_run_id(cfg, 0, tmp_path) == fold_run_id(cfg, 0, tmp_path / ".")
    assert fold_run_id(cfg, 0, tmp_path) != fold_run_id(cfg, 1, tmp_path)
    assert epoch_metrics(_row(2))["val/auc/L5-S1"] == pytest.approx(0.64)
