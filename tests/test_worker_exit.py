"""Workers end with the process they work for (`hnp.workers.exit_with`): when only the owner is SIGKILLed, as the
OOM killer does, its pool workers, forkserver and resource tracker are gone within seconds. Before, they waited
for work for good (each test fails so: all of them still there 30 s after the kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.processes import descendants, kill_tree
from test_train_ray import band_shards

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2

# `hnp shard` whose shard writes take a minute: its fork-context pool workers are busy when the owner dies
SLOW_SHARD = """
import sys, time
import sharding.shards as shards
def slow_write_tar(*args, **kwargs):
    time.sleep(60)
shards._write_tar = slow_write_tar
from hnp.cli import main
sys.exit(main(sys.argv[1:]))
"""
HNP = "import sys\nfrom hnp.cli import main\nsys.exit(main(sys.argv[1:]))\n"
# A torch loader with worker processes (forkserver) that has delivered a batch, then an owner that waits
TORCH_LOADER = """
import sys, time
from pathlib import Path
from hnp.config import DataConfig
from pipeline import build_loader, split_shards
shards = Path(sys.argv[1])
config = DataConfig(image_size=48, batch_size=4, num_threads={workers}, loader="torch")
batches = iter(build_loader(config, split_shards(shards, ["fold0"]), training=True))  # kept: its workers live on
next(batches)
print("delivered", flush=True)
time.sleep(600)
"""


def _ended(pid: int) -> bool:
    """Gone, or a zombie (ended; a reaper may not have collected it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _kill_the_owner_only(process: subprocess.Popen, helpers: int, within: float = 30) -> None:
    """Once the owner has `helpers` live descendants, SIGKILL the owner alone; each must end within `within` s."""
    deadline = time.monotonic() + 120
    while len(started := descendants(process.pid)) < helpers:
        assert process.poll() is None, f"the owner ended first: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"only {len(started)} of {helpers} helper processes started"
        time.sleep(0.1)
    time.sleep(1)  # the workers at work
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + within
    while left := [pid for pid in started if not _ended(pid)]:
        if time.monotonic() > deadline:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"{len(left)} of {len(started)} helpers outlived their owner by {within:.0f} s")
        time.sleep(0.2)


def _start(code: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_phantom_workers_end_with_a_killed_driver(tmp_path: Path) -> None:
    """A forkserver pool: the resource tracker, the forkserver and its 2 workers."""
    process = _start(HNP, ["phantom", "--out", str(tmp_path / "p"), "--patients", "5000", "--workers", str(WORKERS)])
    try:
        _kill_the_owner_only(process, helpers=2 + WORKERS)
    finally:
        kill_tree(process)


def test_shard_workers_end_with_a_killed_driver(tmp_path: Path) -> None:
    """A fork pool, its workers in the middle of a task."""
    manifest = band_shards(tmp_path / "data", patients=20).parent / "manifest.csv"
    process = _start(SLOW_SHARD, ["shard", "--manifest", str(manifest), "--out", str(tmp_path / "shards"),
                                  "--workers", str(WORKERS), "--no-progress"])
    try:
        _kill_the_owner_only(process, helpers=WORKERS)
    finally:
        kill_tree(process)


def test_torch_loader_workers_end_with_a_killed_owner(tmp_path: Path) -> None:
    """A DataLoader's forkserver workers: torch's own watchdog checks their parent, the forkserver, which they keep
    alive."""
    shards = band_shards(tmp_path / "data", patients=20)
    process = _start(TORCH_LOADER.format(workers=WORKERS), [str(shards)])
    try:
        assert process.stdout.readline().strip() == "delivered", process.stderr.read()[-2000:]
        _kill_the_owner_only(process, helpers=2 + WORKERS)
    finally:
        kill_tree(process)
