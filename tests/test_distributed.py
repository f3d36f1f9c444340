"""Distributed training under faults, on a multi-node Ray cluster simulated on this machine (Ray's own
`ray.cluster_utils.Cluster`: a head and two worker nodes, each its own raylet, loopback only), shared by every
test here because Ray start-up dominates on two cores.

- DDP per fold (gloo on the CPU): 2 workers per fold, one of them SIGKILLed mid-run; the fold resumes and ends
  close to the same fold trained by one worker with twice the batch.
- `ray job submit` of the tiny config to the cluster with token auth, a worker node removed mid-fold; a
  submission without the token is refused.
- `ray.storage_path` on a tmpfs too small for the next checkpoint, then a corrupt stored checkpoint.

In the default run (`python -m pytest`) the cluster tests run in a pytest process of their own, started by
`test_the_cluster_tests_pass_in_a_process_of_their_own` (`support.ray_process`): what Ray keeps per process, and
a failed test's training thread, then stay out of every other test. To run them in this process instead:

    HNP_CLUSTER_TESTS=1 python -m pytest tests/test_distributed.py
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
from ray.cluster_utils import Cluster
from support.ray_process import run_pytest_module
from test_train_ray import band_shards

from hnp.config import load_config
from sharding.build import ShardOptions, shard_manifest
from train import cli
from train.checkpoint import load_torch_file
from train.progress import board_name, start_board
from train.ray_folds import FAULTS_FILE, RAY_NAMESPACE, progress_board_name

REPO = Path(__file__).resolve().parents[1]
# Set in the process that runs the cluster tests itself (the child the default run starts sets it).
IN_THIS_PROCESS = os.environ.get("HNP_CLUSTER_TESTS") == "1"
pytestmark = pytest.mark.slow
# Small enough to train in seconds, large enough that a fault can land between two epochs' checkpoints.
SETTINGS = ("data.image_size=64", "data.batch_size=8", "data.loader=torch", "train.epochs=4", "optim.t_0=4",
            "ray.cpus_per_worker=1", "wandb.mode=off")


# What the fixture changes in this process's environment (its nodes, workers and `ray job submit` inherit it):
# Ray's temp folder (its sessions, and the `ray_current_cluster` address file that a plain `ray.init()` on this
# machine would join, /tmp/ray's otherwise), and token auth with a token file of the cluster's own (not the
# user's ~/.ray/auth_token, which a fresh machine does not have and which other programs share).
CLUSTER_ENV = ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "PATH")


def _reload_auth_config() -> None:
    """Make this process see the auth settings now in its environment: Ray reads RAY_AUTH_MODE into a cached
    config when it is imported, and caches the token once read (the order is Ray's own test helper's:
    `ray._private.authentication_test_utils.reset_auth_token_state`)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _free_port() -> int:
    """A TCP port free now on loopback (Ray's default dashboard port may be another Ray's on a shared machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _add_worker_node(head: Cluster) -> object:
    """A worker node of 2 CPUs. Each node's dashboard agent (through which the head runs submitted jobs) gets a
    port of its own: on one machine they would all try Ray's default and only the first would start."""
    return head.add_node(num_cpus=2, dashboard_agent_listen_port=_free_port())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Head (1 CPU: the drivers' fold controllers take none) and two worker nodes of 2 CPUs, token auth on."""
    if not IN_THIS_PROCESS:
        pytest.skip("run in a process of their own by test_the_cluster_tests_pass_in_a_process_of_their_own "
                    "(HNP_CLUSTER_TESTS=1 runs them in this one)")
    saved = {key: os.environ.get(key) for key in CLUSTER_ENV}
    temp = Path(tempfile.mkdtemp(prefix="hnpray", dir="/tmp"))  # short: Ray's unix sockets live under it
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    os.environ.update(RAY_TMPDIR=str(temp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    for key in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        os.environ.pop(key, None)
    # The nodes run a submitted job's `python` from their PATH: this environment's, as for a user who activated it
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    head = None
    try:
        _reload_auth_config()
        head = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": _free_port(),
            "dashboard_agent_listen_port": _free_port(), "temp_dir": str(temp / "ray")})
        workers = [_add_worker_node(head) for _ in range(2)]
        head.wait_for_nodes()
        ray.init(address=head.address, namespace=RAY_NAMESPACE, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        data = tmp_path_factory.mktemp("distributed")
        manifest = band_shards(data / "bands", patients=40).parent / "manifest.csv"
        shards = {}
        for folds in (2, 4):
            shards[folds] = data / f"shards{folds}"
            shard_manifest(ShardOptions(manifest=manifest, out=shards[folds], folds=folds, progress=False))
        yield {"cluster": head, "workers": workers, "shards": shards, "temp": temp, "token": token.read_text()}
    finally:  # also when the cluster did not start: this process's environment and Ray's config go back
        ray.shutdown()
        try:
            if head is not None:
                head.shutdown()
        except ValueError:  # a training thread reconnected after ray.shutdown(); the processes still go at exit
            pass
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth_config()


def _args(shards: Path, out: Path, *settings: str) -> argparse.Namespace:
    return argparse.Namespace(config="tiny", shards=shards, out=out, overrides=[*SETTINGS, *settings], address=None,
                              verbose=False)


def _registered_epochs(storage: Path, fold: int) -> int:
    """Epochs in the latest checkpoint Ray Train's controller has registered for a fold (0 before the first)."""
    try:
        snapshot = json.loads((storage / f"tiny-fold{fold}" / "checkpoint_manager_snapshot.json").read_text())
        name = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        return len(pd.read_csv(storage / f"tiny-fold{fold}" / name / "history.csv")) if name else 0
    except (OSError, json.JSONDecodeError, pd.errors.EmptyDataError):
        return 0  # not written yet, or being written


def _latest_checkpoint(storage: Path, fold: int) -> Path:
    snapshot = json.loads((storage / f"tiny-fold{fold}" / "checkpoint_manager_snapshot.json").read_text())
    return storage / f"tiny-fold{fold}" / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]


def _wait_for(condition: Callable[[], bool], alive: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive(), f"training ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.2)


@contextmanager
def _in_background(args: argparse.Namespace) -> Iterator[tuple[threading.Thread, dict]]:
    """`hnp train` (train.cli.run) in a thread of this process, the cluster's driver; its exit status lands in
    the yielded dict. The test waits for its training before it ends, failed or not: a training thread left
    running drove the cluster into the next test and held the console (`tests/test_train_ray_console.py`)."""
    result: dict = {}

    def run() -> None:
        try:
            result["status"] = cli.run(args)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread, result
    finally:
        thread.join(timeout=900)


def _train_worker_pids() -> list[int]:
    """PIDs of the live Ray Train workers of the cluster (Ray's State API, served by the head's dashboard)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [actor.pid for actor in actors]


def _node_logs(cluster: dict) -> str:
    """Everything the cluster's nodes logged so far (their workers' stdout and stderr included)."""
    nodes = [cluster["cluster"].head_node, *cluster["workers"]]
    folders = {Path(node.get_logs_dir_path()) for node in nodes}
    return "".join(path.read_text(errors="replace") for folder in folders for path in sorted(folder.rglob("*"))
                   if path.is_file())


def _faults(out: Path) -> list[dict]:
    path = out / FAULTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# Hang guard only: the tests took 310-372 s alone on this VM; a loaded CI machine is slower several times over.
CLUSTER_TESTS_TIMEOUT_S = 2400


@pytest.mark.skipif(IN_THIS_PROCESS, reason="this process runs the cluster tests itself")
def test_the_cluster_tests_pass_in_a_process_of_their_own(tmp_path: Path) -> None:
    """The cluster tests below, in a child pytest; each of their failures is reported here in full, read from the
    child's JUnit report (a file: a child that lost its console still tells)."""
    run = run_pytest_module(Path(__file__), tmp_path, {"HNP_CLUSTER_TESTS": "1"}, CLUSTER_TESTS_TIMEOUT_S)
    assert run.ok, run.explain()
    cluster_tests = {name for name, item in globals().items() if name.startswith("test_") and callable(item)
                     and "cluster" in inspect.signature(item).parameters}
    passed = {test.rsplit("::", 1)[-1] for test in run.passed}
    skipped = {test.rsplit("::", 1)[-1]: reason for test, reason in run.skipped.items()}
    assert passed | skipped.keys() == cluster_tests | {test_the_cluster_tests_pass_in_a_process_of_their_own.__name__}
    for test in skipped.keys() & cluster_tests:  # the tmpfs test needs root: said in this run's summary, not hidden
        warnings.warn(f"{test} skipped in the cluster tests' process: {skipped[test]}", stacklevel=1)


def test_the_progress_board_lives_on_the_drivers_node(cluster: dict) -> None:
    """The driver reads the fold restarts from its board when the folds end. Left to Ray's scheduler, the zero-CPU
    board landed on a worker node (7 probes of 8 here), whose loss took it along and failed a job whose folds had
    all finished (`ActorDiedError` in `record_resumes`)."""
    from ray.util.state import list_actors

    head = cluster["cluster"].head_node.node_id
    assert ray.get_runtime_context().get_node_id() == head  # this process is the driver, on the head
    boards = [start_board(f"placement-probe-{k}") for k in range(6)]
    try:
        ray.get([board.snapshot.remote() for board in boards], timeout=120)
        placed = {actor.name: actor.node_id for actor in list_actors(filters=[("class_name", "=", "ProgressBoard")])
                  if actor.name.startswith(board_name("placement-probe-"))}
        assert len(placed) == 6 and set(placed.values()) == {head}, placed
    finally:
        for board in boards:
            ray.kill(board)


def test_ddp_folds_survive_a_killed_worker_and_match_one_worker_with_twice_the_batch(
        cluster: dict, tmp_path: Path) -> None:
    shards = cluster["shards"][2]
    out = tmp_path / "ddp"
    storage = out / "ray"
    with _in_background(_args(shards, out, "folds=2", "ray.workers_per_fold=2", "ray.max_concurrent_folds=2",
                              "wandb.mode=offline")) as (thread, result):
        _wait_for(lambda: min(_registered_epochs(storage, k) for k in (0, 1)) >= 1
                  and len(_train_worker_pids()) == 4, thread.is_alive, "a registered checkpoint of both folds")
        before = {k: _registered_epochs(storage, k) for k in (0, 1)}
        victim = _train_worker_pids()[0]
        os.kill(victim, signal.SIGKILL)  # one rank of one fold's two, mid-run
        thread.join(timeout=600)
    assert result.get("status") == 0, result

    (fault,) = _faults(out)  # exactly the fold that lost a worker restarted, and it is recorded
    assert fault["event"] == "restarted after a worker failure"
    assert before[fault["fold"]] <= fault["after_epoch"] < 4
    ddp = {}
    for fold in (0, 1):
        history = pd.read_csv(out / f"fold{fold}" / "history.csv")
        assert history["epoch"].tolist() == [1, 2, 3, 4]  # each epoch once: resumed, not restarted from zero
        ddp[fold] = pd.read_parquet(out / f"fold{fold}" / "val_predictions.parquet").set_index("key")
    # only rank 0 logs its epochs (read where Ray keeps the workers' output: each node's session logs), and W&B
    # holds one run per fold
    workers_said = _node_logs(cluster)
    assert "[fold0 rank0] epoch 1:" in workers_said and "rank1] epoch" not in workers_said
    # The restarted fold's new worker resumes its W&B run: a second offline folder with the same run id, which
    # `wandb sync` (and the online dashboard) keep as one run.
    run_ids = {path.name.split("-", 3)[-1] for path in (out / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 2 and all("-fold" in run_id for run_id in run_ids), run_ids

    # The same folds with one worker and the whole batch of 16, and again with another seed: how far an equally
    # valid training lands, the yardstick for "close".
    single = {}
    for seed in (0, 1):
        single[seed] = tmp_path / f"single-seed{seed}"
        assert cli.run(_args(shards, single[seed], "folds=2", "ray.workers_per_fold=1", "data.batch_size=16",
                             "ray.max_concurrent_folds=2", f"train.seed={seed}")) == 0
    for fold in (0, 1):
        one, reseeded = (pd.read_parquet(single[seed] / f"fold{fold}" / "val_predictions.parquet").set_index("key")
                         for seed in (0, 1))
        assert sorted(one.index) == sorted(ddp[fold].index)  # validation gathered every sample exactly once
        columns = [c for c in one.columns if c.startswith("prob_")]
        gap = np.abs(one.loc[ddp[fold].index, columns].to_numpy() - ddp[fold][columns].to_numpy())
        seed_gap = np.abs(one.loc[reseeded.index, columns].to_numpy() - reseeded[columns].to_numpy())
        # Same samples per optimizer step (the torch loader deals one permutation to the ranks) and averaged
        # gradients, but batch-norm statistics over 8 images per rank instead of 16: close, not equal.
        assert gap.max() < 0.1 and gap.mean() < 0.03, (gap.max(), gap.mean())
        assert gap.mean() < 0.5 * seed_gap.mean(), (gap.mean(), seed_gap.mean())


def _job(address: str, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """`ray job submit`, submitted again while the head's job agent is still starting (Ray answers 500 "No
    available agent to submit job, please try again later" for the first seconds of a fresh cluster)."""
    for _ in range(12):
        done = subprocess.run(["ray", "job", "submit", "--address", address, "--working-dir", str(REPO), "--", *argv],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in done.stderr:
            return done
        time.sleep(5)
    return done


def test_a_job_on_the_cluster_survives_a_lost_worker_node_and_needs_the_token(cluster: dict,
                                                                               tmp_path: Path) -> None:
    shards, out = cluster["shards"][4], tmp_path / "job"
    address = f"http://{cluster['cluster'].webui_url}"
    env = dict(os.environ)

    # The job API refuses a request without the token, and serves one with it.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=30)
    assert refused.value.code in (401, 403)
    allowed = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {cluster['token']}"})
    assert urllib.request.urlopen(allowed, timeout=30).status == 200

    argv = ["python", "train/run_folds.py", "--config", "tiny", "--shards", str(shards), "--out", str(out),
            *[item for setting in (*SETTINGS, "train.epochs=5", "optim.t_0=5", "ray.max_concurrent_folds=4")
              for item in ("--set", setting)]]
    job: dict = {}
    runner = threading.Thread(target=lambda: job.update(done=_job(address, env, *argv)), daemon=True)
    runner.start()
    cfg = load_config("tiny", [*SETTINGS, "train.epochs=5"])
    storage = out / "ray"

    def fold_on_a_worker_node() -> tuple[int, str] | None:
        """A fold with a registered checkpoint, not finished, whose rank 0 runs on a worker node."""
        try:
            board = ray.get_actor(board_name(progress_board_name(cfg, out.resolve())), namespace=RAY_NAMESPACE)
            states = ray.get(board.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the job's driver has not made its board yet
            return None
        worker_ids = {node.node_id for node in cluster["workers"]}
        for fold, state in states.items():
            if state.get("node") in worker_ids and 1 <= _registered_epochs(storage, fold) < 4:
                return fold, state["node"]
        return None

    def job_running() -> bool:
        if not runner.is_alive() and "done" in job:
            pytest.fail(f"the job ended early:\n{job['done'].stdout[-3000:]}\n{job['done'].stderr[-3000:]}")
        return runner.is_alive()

    # 600 s: the job's start and a first epoch took over 300 s at load 19 (2026-12-07); the guard is for hangs only
    _wait_for(lambda: fold_on_a_worker_node() is not None, job_running, "a checkpointed fold on a worker node",
              timeout=600)
    fold, node_id = fold_on_a_worker_node()
    before = _registered_epochs(storage, fold)
    lost = next(node for node in cluster["workers"] if node.node_id == node_id)
    cluster["cluster"].remove_node(lost, allow_graceful=False)  # the node and every process on it
    runner.join(timeout=900)
    assert job["done"].returncode == 0, job["done"].stdout[-3000:] + job["done"].stderr[-3000:]

    restarted = {fault["fold"] for fault in _faults(out)}
    assert fold in restarted, _faults(out)
    for k in range(4):
        assert pd.read_csv(out / f"fold{k}" / "history.csv")["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert next(f for f in _faults(out) if f["fold"] == fold)["after_epoch"] >= before
    assert len(restarted) <= 2  # a node held at most two of the four folds: the others were not disturbed
    cluster["workers"].remove(lost)
    cluster["workers"].append(_add_worker_node(cluster["cluster"]))  # capacity back for the next test


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own for ray.storage_path, which the test fills up while the folds train."""
    mount = tmp_path / "storage"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the file system but for a few KB, far less than a checkpoint (the tiny model's state.pt is ~1 MB).
    Written until the disk says it is full: the folds write checkpoints meanwhile, so the free space read before
    is no measure (a filler of that size once ran out of space itself)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        chunk, size = bytes(1 << 20), 0
        while True:
            try:
                written = os.write(fd, chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
            size += written
            if written < len(chunk):
                break
        os.ftruncate(fd, max(0, size - 16 * 1024))
    finally:
        os.close(fd)
    return filler


FULL_DISK_EPOCHS = 10


def test_a_full_storage_path_then_a_corrupt_checkpoint_are_named_and_a_relaunch_resumes(
        cluster: dict, tmp_path: Path, disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hnp.train")  # the resume lines are INFO
    shards, out = cluster["shards"][2], tmp_path / "run"
    # 10 epochs, not 4: the two folds' workers start seconds apart on a loaded machine, and with 4 one fold had
    # finished before the other stored its first checkpoint, so the disk filled too late for it (seen here)
    settings = ("folds=2", "ray.max_concurrent_folds=2", "ray.max_failures=0", f"ray.storage_path={disk}",
                f"train.epochs={FULL_DISK_EPOCHS}", f"optim.t_0={FULL_DISK_EPOCHS}")
    with _in_background(_args(shards, out, *settings)) as (thread, result):
        _wait_for(lambda: min(_registered_epochs(disk, k) for k in (0, 1)) >= 1, thread.is_alive,
                  "a stored checkpoint of both folds")
        filler = _fill(disk)  # the disk fills up while both folds train on
        thread.join(timeout=600)
    assert result.get("status") == 1, result  # both folds fail for good at their next checkpoint
    assert f"ray.storage_path {disk}: could not store fold" in caplog.text
    assert "No space left on device" in caplog.text and "relaunch to resume" in caplog.text
    stored = {k: _registered_epochs(disk, k) for k in (0, 1)}
    assert min(stored.values()) >= 1 and max(stored.values()) < FULL_DISK_EPOCHS
    for k in (0, 1):  # the last stored checkpoints are whole
        load_torch_file(_latest_checkpoint(disk, k) / "state.pt")

    filler.unlink()  # the user frees space
    state = _latest_checkpoint(disk, 0) / "state.pt"
    intact = state.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2:len(damaged) // 2 + 16] = bytes(16)
    state.write_bytes(bytes(damaged))
    caplog.clear()
    assert cli.run(_args(shards, out, *settings)) == 1
    assert f"{state}: not a readable checkpoint" in caplog.text  # the stored file, not the worker's copy
    assert "/hnp-fold0-rank0-" not in caplog.text
    # fold1's stored checkpoint is whole: it continued from it in that launch while fold0 was refused
    assert f"fold1 resumed from an earlier launch: resumed after epoch {stored[1]}" in caplog.text

    state.write_bytes(intact)
    caplog.clear()
    assert cli.run(_args(shards, out, *settings)) == 0
    for k in (0, 1):
        assert pd.read_csv(out / f"fold{k}" / "history.csv")["epoch"].tolist() == list(range(1, FULL_DISK_EPOCHS + 1))
    assert f"fold0 resumed from an earlier launch: resumed after epoch {stored[0]}" in caplog.text
    assert "fold1: already finished" in caplog.text
