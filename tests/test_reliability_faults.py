"""Real kills (SIGKILL, not an exception the code raises on itself) of `hnp eval`, of a Ray Train worker mid-epoch,
and of the `hnp train` driver mid-run; then the rerun or the restart must end where an unbroken run ends.

Every command runs in a subprocess of its own session; only that process and its descendants (found through
/proc, by parent PID) are ever killed, so Ray sessions of other users of the machine are left alone. Ray gets a
private temp folder (RAY_TMPDIR) for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support.processes import descendants, kill_tree
from test_train_loop import BandLoader
from test_train_ray import band_shards

from hnp.cli import main
from hnp.config import load_config
from hnp.errors import HnpError
from hnp.files import atomic_write
from sharding.build import ShardOptions, shard_manifest
from train.loop import FoldContext, train_fold

REPO = Path(__file__).resolve().parents[1]


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            kill_tree(process)
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.2)


def _hnp_process(argv: list[str], env: dict[str, str], log: Path, patch: str = "") -> subprocess.Popen:
    """`hnp ARGV` in its own session, output to `log`; `patch` is Python run first (to slow a step down)."""
    code = f"import sys\n{patch}\nfrom hnp.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def private_env() -> Iterator[dict[str, str]]:
    """The environment for our subprocesses: the repo importable, W&B off, Ray in a private temp folder."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="hnpray", dir="/tmp"))  # short: Ray's unix sockets live under it
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- checkpoints are written atomically -------------------------------------------------------------------------


# Writes half of a new best.pt through atomic_write, says so, and waits to be killed.
HALF_WRITE = """
import sys, time
from pathlib import Path
from hnp.files import atomic_write

def half_then_wait(tmp):
    with tmp.open("wb") as handle:
        handle.write(b"epoch 2, half")
        handle.flush()
        print("half written", flush=True)
        time.sleep(120)
        handle.write(b" and the rest")

atomic_write(Path(sys.argv[1]), half_then_wait)
"""


def test_a_write_killed_half_way_leaves_the_old_file_whole(tmp_path: Path, private_env: dict[str, str]) -> None:
    """atomic_write (best.pt, state.pt, history.csv, predictions) writes a temporary file and renames it: a writer
    SIGKILLed half way leaves the target holding the previous complete file; only its temporary is left over."""
    target = tmp_path / "best.pt"
    target.write_bytes(b"epoch 1, complete")
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITE, str(target)], env=private_env, stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert writer.stdout.readline() == b"half written\n"
        assert target.read_bytes() == b"epoch 1, complete"
    finally:
        kill_tree(writer)
    assert writer.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"epoch 1, complete"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != target)
    assert len(leftovers) == 1 and leftovers[0].startswith(".best.pt.") and leftovers[0].endswith(".tmp"), leftovers
    atomic_write(target, lambda tmp: tmp.write_bytes(b"epoch 2, complete"))
    assert target.read_bytes() == b"epoch 2, complete"


def test_training_writes_every_fold_file_by_renaming_a_finished_temporary(tmp_path: Path) -> None:
    """What train_fold does on disk, watched through Python's audit events: every file of the fold folder (best.pt,
    val_predictions.parquet, history.csv, state.pt) gets its final bytes by a rename of a finished temporary file in
    the same folder, never by writing to its own name (a kill mid-write would leave half a file there)."""
    fold_dir = (tmp_path / "fold0").resolve()
    renamed: dict[str, tuple[int, int, int]] = {}  # final name -> (inode, size, mtime) of what was renamed onto it

    def watch(event: str, args: tuple) -> None:
        if event == "os.rename" and Path(os.fsdecode(args[1])).parent == fold_dir:
            source = os.stat(args[0])
            renamed[Path(os.fsdecode(args[1])).name] = (source.st_ino, source.st_size, source.st_mtime_ns)

    watching = True
    sys.addaudithook(lambda event, args: watching and watch(event, args))  # hooks cannot be removed: switched off
    try:
        train_fold(load_config("tiny", ["train.epochs=2"]), fold_dir, BandLoader(32, 16, seed=1),
                   BandLoader(32, 16, seed=2), FoldContext(fold=0))
    finally:
        watching = False
    files = {path.name: path.stat() for path in fold_dir.iterdir()}
    assert set(files) == {"best.pt", "val_predictions.parquet", "history.csv", "state.pt"}
    for name, stat in files.items():
        assert renamed.get(name) == (stat.st_ino, stat.st_size, stat.st_mtime_ns), name  # unchanged since


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "flipped bytes", "not a state"])
def test_a_corrupt_resume_state_is_refused_naming_the_file_and_why(tmp_path: Path, damage: str) -> None:
    """A damaged state.pt (a killed writer cannot leave one, see above; a disk error or a partial copy of the run
    folder can) stops the fold's restart with an error naming the file and what is wrong, before any epoch runs:
    not torch's traceback, not a silent restart from epoch 1 over the fold's files, not flipped weights."""
    train, val = BandLoader(32, 16, seed=1), BandLoader(32, 16, seed=2)
    train_fold(load_config("tiny", ["train.epochs=1"]), tmp_path, train, val, FoldContext(fold=0))
    state = tmp_path / "state.pt"
    intact = state.read_bytes()
    middle = len(intact) // 2  # inside the model weights, the archive's largest member
    flipped = bytes(b ^ 0xFF for b in intact[middle : middle + 16])
    damaged = {
        "truncated": intact[:middle],
        "garbage": np.random.default_rng(0).bytes(len(intact)),
        "empty": b"",
        "flipped bytes": intact[:middle] + flipped + intact[middle + 16 :],
    }
    if damage == "not a state":
        torch.save({"weights": torch.zeros(3)}, state)
    else:
        state.write_bytes(damaged[damage])
    left = state.read_bytes()
    fold_files = {name: _digest(tmp_path / name) for name in ("best.pt", "history.csv")}
    epochs: list[float] = []
    with pytest.raises(HnpError) as caught:
        train_fold(load_config("tiny", ["train.epochs=2"]), tmp_path, train, val, FoldContext(fold=0),
                   on_epoch_end=lambda row, _: epochs.append(row["epoch"]))
    message = str(caught.value)
    reason = {"truncated": "not a torch.save archive", "garbage": "not a torch.save archive",
              "empty": "empty file (0 bytes)", "flipped bytes": "fails its CRC-32 check",
              "not a state": "not a training state (no model_state"}[damage]
    assert message.startswith(f"{state}: ") and reason in message, message
    assert "from epoch 1" in message and "weights_only" not in message, message  # what to do; not torch's advice
    assert epochs == []  # refused before training anything
    assert state.read_bytes() == left  # left for inspection, not overwritten
    assert {name: _digest(tmp_path / name) for name in fold_files} == fold_files


# ---- hnp eval killed and rerun ------------------------------------------------------------------------------------

# Marks the start of the explanation step (Grad-CAM) and slows it down, so the kill lands after the predictions, ROC
# and calibration files are written and before the summary files (metrics, report) are.
SLOW_EXPLANATIONS = """
import pathlib, time
import eval.run_eval as run_eval
_explain_test_set = run_eval.explain_test_set
def explain_test_set(*args, **kwargs):
    pathlib.Path({started!r}).touch()
    time.sleep(60)
    return _explain_test_set(*args, **kwargs)
run_eval.explain_test_set = explain_test_set
"""


@pytest.mark.slow
def test_eval_killed_midway_over_an_earlier_report_then_rerun_gives_the_same_report(
        tmp_path: Path, private_env: dict[str, str], trained_world: dict[str, Path]) -> None:
    """A second `hnp eval` into a finished report folder, killed during Grad-CAM: the folder must not read as a
    finished report (no metrics.json, whose presence says so, and no report of the earlier evaluation beside the new
    predictions); the rerun gives the uninterrupted run's report."""
    shards, run = trained_world["shards"], trained_world["run"]  # read only: the reports go to tmp_path
    args = ["--run", str(run), "--shards", str(shards), "--gradcam-top", "2", "--no-wandb"]
    reference = tmp_path / "reference"
    assert main(["eval", *args, "--out", str(reference)]) == 0

    out = tmp_path / "report"
    shutil.copytree(reference, out)
    started = tmp_path / "explaining"
    process = _hnp_process(["eval", *args, "--out", str(out)], private_env, tmp_path / "eval.log",
                           SLOW_EXPLANATIONS.format(started=str(started)))
    _wait_for(started.exists, process, "the explanation step")
    kill_tree(process)
    assert process.returncode == -signal.SIGKILL
    summary = ("metrics.json", "metrics.csv", "report.md", "report.html")
    assert [name for name in summary if (out / name).exists()] == []  # visibly unfinished, not the earlier report

    assert main(["eval", *args, "--out", str(out)]) == 0
    for name in ("metrics.json", "metrics.csv", "report.md", "gradcam/index.csv"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    for name in ("predictions_images.parquet", "predictions_patients.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(reference / name))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(reference)
                                                                        for p in reference.rglob("*"))


# ---- a Ray Train worker killed mid-epoch, then the driver killed mid-run ------------------------------------------

EPOCHS = 5


def _registered_history(out: Path, fold: int) -> pd.DataFrame:
    """The history of a fold's latest checkpoint that Ray Train's controller has registered (so it would restore
    it after a worker failure); empty before the first. A checkpoint merely persisted by the worker is not enough:
    killed before the controller polls its report, the worker loses it (seen here: epoch 1 trained again)."""
    snapshot = out / "ray" / f"tiny-fold{fold}" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, json.JSONDecodeError):
        return pd.DataFrame()  # not written yet, or being written
    name = latest.get("checkpoint_dir_name")
    return pd.read_csv(out / "ray" / f"tiny-fold{fold}" / name / "history.csv") if name else pd.DataFrame()


def _train_workers(driver: int) -> list[int]:
    return [pid for pid in descendants(driver) if "RayTrainWorker" in _cmdline(pid)]


@pytest.mark.slow
def test_killed_worker_restores_its_fold_and_killed_driver_resumes_the_run(tmp_path: Path,
                                                                           private_env: dict[str, str]) -> None:
    """Two folds trained one after the other (5 epochs each). Once fold0 has a registered checkpoint, its Ray Train
    worker gets SIGKILL mid-run: Ray restarts the worker group, which restores that checkpoint and finishes.
    While fold1 trains, the driver and everything it started get SIGKILL: the relaunched command skips fold0 and
    finishes fold1."""
    manifest = band_shards(tmp_path / "data", patients=40).parent / "manifest.csv"
    shards = tmp_path / "shards2"
    shard_manifest(ShardOptions(manifest=manifest, out=shards, folds=2, progress=False))
    out = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--shards", str(shards), "--out", str(out),
            *[item for setting in ("folds=2", "data.image_size=128", "data.batch_size=8", f"train.epochs={EPOCHS}",
                                   "ray.max_concurrent_folds=1", "wandb.mode=off") for item in ("--set", setting)]]

    first = _hnp_process(argv, private_env, tmp_path / "train1.log")
    try:
        _wait_for(lambda: len(_registered_history(out, 0)) >= 1, first, "fold0's first registered checkpoint")
        workers = _train_workers(first.pid)
        assert len(workers) == 1, [_cmdline(pid) for pid in descendants(first.pid)]
        before_kill = _registered_history(out, 0)
        os.kill(workers[0], signal.SIGKILL)  # mid-epoch 2 of fold0
        _wait_for(lambda: (out / "fold0" / "best.pt").is_file() and len(_registered_history(out, 1)) >= 1, first,
                  "fold0 finished and fold1's first checkpoint", timeout=300)
        kill_tree(first)
    finally:
        if first.poll() is None:
            kill_tree(first)
    log = (tmp_path / "train1.log").read_text(errors="replace")
    assert 1 <= len(before_kill) < EPOCHS and first.returncode == -signal.SIGKILL, log[-3000:]
    fold0 = pd.read_csv(out / "fold0" / "history.csv")
    assert fold0["epoch"].tolist() == list(range(1, EPOCHS + 1)), log[-3000:]  # each epoch once, none lost
    # Restored, not retrained: the epochs checkpointed before the kill are kept as they were (their measured
    # img/s and losses would differ if they had been trained again).
    pd.testing.assert_frame_equal(fold0.iloc[:len(before_kill)], before_kill)
    assert not (out / "fold1" / "best.pt").exists()
    fold0_files = {name: _digest(out / "fold0" / name) for name in ("best.pt", "history.csv")}

    second = _hnp_process(argv, private_env, tmp_path / "train2.log")
    try:
        assert second.wait(timeout=400) == 0, (tmp_path / "train2.log").read_text(errors="replace")[-3000:]
    finally:
        if second.poll() is None:
            kill_tree(second)
    log = (tmp_path / "train2.log").read_text(errors="replace")
    assert "fold0: already finished" in log
    assert {name: _digest(out / "fold0" / name) for name in fold0_files} == fold0_files  # not retrained
    fold1 = pd.read_csv(out / "fold1" / "history.csv")
    assert fold1["epoch"].tolist() == list(range(1, EPOCHS + 1))
