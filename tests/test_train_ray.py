"""Ray orchestration end to end on CPU: 4 folds at once on tiny shards, then relaunches that resume."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import ray

from hnp.config import builtin_configs
from hnp.levels import LEVEL_COLUMNS, LEVELS
from sharding.build import ShardOptions, shard_manifest
from train import cli
from train.model import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def band_shards(root: Path, patients: int = 40, size: int = 96, seed: int = 0) -> Path:
    """Shards of noisy gray JPEGs where level j positive brightens band j: every level is learnable."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for p in range(patients):
        labels = (rng.random(5) < 0.4).astype(int)
        for view in ("LAT", "AP"):
            image = rng.normal(100, 20, (size, size))
            band = size // 5
            for j in range(5):
                image[j * band:(j + 1) * band] += 80 * labels[j]
            path = root / "img" / f"{p}_{view}.jpg"
            cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
            rows.append({"patient_id": f"P{p:04d}", "image_path": str(path), "view": view,
                         "split": "test" if p % 10 == 9 else "train", "age": int(rng.integers(20, 80)),
                         **dict(zip(LEVEL_COLUMNS, labels.tolist(), strict=True))})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    shard_manifest(ShardOptions(manifest=root / "manifest.csv", out=root / "shards", folds=4, progress=False))
    return root / "shards"


def _args(shards: Path, out: Path, *overrides: str) -> argparse.Namespace:
    settings = ["data.image_size=64", "data.batch_size=8", *overrides]
    return argparse.Namespace(config="tiny", shards=shards, out=out, overrides=settings, address=None)


@pytest.mark.slow
def test_four_folds_train_concurrently_fail_by_name_and_relaunches_resume(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    shards, out = band_shards(tmp_path / "data"), tmp_path / "run"
    work_dirs = set(Path(tempfile.gettempdir()).glob("hnp-fold*-rank*-*"))  # the workers' scratch folders so far
    out.mkdir()
    (out / "fold3").write_text("in the way")  # fold3 cannot write its folder: it fails for good, the others finish
    try:
        with caplog.at_level("INFO", logger="hnp.train"):
            assert cli.run(_args(shards, out, "train.epochs=1")) == 1
        assert "failed for good: fold3" in caplog.text
        assert f"(Ray's own output: {out / 'logs' / 'ray.log'})" in caplog.text  # where to read the workers' side
        first = {k: pd.read_csv(out / f"fold{k}" / "history.csv") for k in range(3)}
        (out / "fold3").unlink()
        # Relaunch with more epochs: Ray Train restores each fold's last checkpoint (fold3's too, from Ray's
        # storage) and runs epoch 2 only.
        assert cli.run(_args(shards, out, "train.epochs=2")) == 0
    finally:
        ray.shutdown()
    assert set(Path(tempfile.gettempdir()).glob("hnp-fold*-rank*-*")) <= work_dirs  # removed, the failed fold's too
    assert (out / "config.yaml").is_file()
    for k in range(4):
        folder = out / f"fold{k}"
        history = pd.read_csv(folder / "history.csv")
        assert list(history["epoch"]) == [1, 2]
        if k in first:
            pd.testing.assert_frame_equal(history.iloc[:1], first[k])  # epoch 1 was not trained again
        best = load_checkpoint(folder / "best.pt")
        assert best.fold == k and set(best.val_auc) == set(LEVELS)
        predictions = pd.read_parquet(folder / "val_predictions.parquet")
        assert (predictions["fold"] == k).all() and predictions["key"].is_unique
    keys = [set(pd.read_parquet(out / f"fold{k}" / "val_predictions.parquet")["key"]) for k in range(4)]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 72  # each training image validated by one fold
    runs = [path.name.split("-", 3)[3] for path in (out / "wandb").glob("offline-run-*")]  # offline-run-<time>-<id>
    assert len(runs) == 8 and len(set(runs)) == 4  # 4 folds x 2 launches: the relaunch continued the same runs
    # The first launch trained its 4 folds side by side: from the first start to the last end took less time than the
    # folds' own times added up, which one after another would take (less a second per start, rounded down to whole
    # seconds). Not "a moment when all 4 ran": on 2 cores the last fold's workers started after the first 1-epoch fold
    # had ended (seen once in CI).
    intervals = _first_launch_intervals(out / "wandb")
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    assert len(intervals) == 4 and span < sum(end - start for start, end in intervals) - len(intervals), intervals
    # A third launch, through the script `ray job submit` runs, finds every fold finished and starts no Ray at all.
    ray_tmp = Path(tempfile.mkdtemp(prefix="hnpray", dir="/tmp"))  # short: Ray's unix sockets would live under it
    try:
        env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "WANDB_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        third = subprocess.run([sys.executable, str(REPO / "train" / "run_folds.py"), "--config", "tiny", "--shards",
                                str(shards), "--out", str(out), "--set", "data.image_size=64", "--set",
                                "data.batch_size=8", "--set", "train.epochs=2"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300, check=False)
        assert third.returncode == 0, third.stderr[-3000:]
        assert all(f"fold{k}: already finished" in third.stderr for k in range(4)), third.stderr[-3000:]
        assert list(ray_tmp.iterdir()) == []  # no Ray session was started
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _first_launch_intervals(wandb_dir: Path) -> list[tuple[float, float]]:
    """(start, end) in seconds of each fold's first launch, from its W&B offline run: the folder is named when the
    run starts (offline-run-YYYYMMDD_HHMMSS-<id>, local time, whole seconds) and its run file is last written
    when the fold finishes. A relaunch continues the same id in a later folder."""
    first: dict[str, Path] = {}
    for folder in sorted(wandb_dir.glob("offline-run-*")):  # the name starts with the time: sorted = by start
        first.setdefault(folder.name.split("-", 3)[3], folder)
    intervals = []
    for folder in first.values():
        start = datetime.datetime.strptime(folder.name.split("-")[2], "%Y%m%d_%H%M%S").timestamp()
        intervals.append((start, max(path.stat().st_mtime for path in folder.glob("run-*.wandb"))))
    return intervals


def test_relaunch_with_another_config_is_refused(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "dataset.json").write_text("{}")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(builtin_configs()["tiny"].read_text())
    with pytest.raises(cli.HnpError, match=r"differs in .*optim.lr"):
        cli.run(_args(shards, out, "optim.lr=0.5"))
    with pytest.raises(cli.HnpError, match="dataset.json: not found"):
        cli.run(_args(tmp_path, tmp_path / "new-run"))


def test_folds_come_from_the_shards_and_a_run_stays_on_its_shards(make_manifest, tmp_path: Path) -> None:
    from sharding.build import ShardOptions, shard_manifest

    five = tmp_path / "five"
    shard_manifest(ShardOptions(manifest=make_manifest(patients=20), out=five, folds=5, progress=False))
    with pytest.raises(cli.HnpError, match=r"the config says folds: 4 but .*five/dataset.json holds 5 folds"):
        cli.run(_args(five, tmp_path / "run"))
    # a run folder that started on other shards (its run.json names them) is refused, naming both identities
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"dataset": "0000000000000000"}')
    started_elsewhere = r"trained on shards 0000000000000000, but .*five/dataset.json is [0-9a-f]{16}"
    with pytest.raises(cli.HnpError, match=started_elsewhere):
        cli.run(_args(five, run, "folds=5"))


def test_fold_bookkeeping(tmp_path: Path) -> None:
    from hnp.config import load_config
    from train.ray_folds import fold_finished, fold_splits

    cfg = load_config("tiny")
    assert fold_splits(cfg, 2) == (["fold0", "fold1", "fold3"], ["fold2"])
    assert not fold_finished(tmp_path, epochs=2)
    pd.DataFrame({"epoch": [1]}).to_csv(tmp_path / "history.csv", index=False)
    (tmp_path / "best.pt").write_bytes(b"")
    assert not fold_finished(tmp_path, epochs=2) and fold_finished(tmp_path, epochs=1)
