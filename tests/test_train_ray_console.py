"""The console comes back after training: `train_folds` redirects the process's descriptors 1 and 2 to the run's
`logs/ray.log` (train/console.py) and must give them back when training fails, and when two trainings overlap in
threads of one process. In CI a cluster test's training thread outlived its test, a second training started
beside it, and pytest's summary went into a log file instead of the console."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ray_process import run_pytest_module

from hnp.config import load_config
from train import ray_folds


def _where(fd: int) -> tuple[int, int]:
    """What a descriptor points at (device, inode): the console, or a log file."""
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


def _file(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


@pytest.fixture
def without_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, threading.Event]]:
    """`train_folds` with Ray's parts replaced (no Ray starts here): the folds' fits wait for the events a test
    sets, so the test decides when each training ends; a training whose out folder is named `fails` raises.
    The descriptors are put back afterwards, whatever the test found, so that a failure stays in its test."""
    events = {name: threading.Event() for name in ("first inside", "second inside", "first may end",
                                                    "second may end")}

    def run_folds(cfg, dataset, out_dir, folds, board, display, ray_log):  # noqa: ANN001, ANN202 - a stand-in
        if out_dir.name == "fails":
            raise RuntimeError("a fold's fit failed")
        if out_dir.name == "first":
            events["first inside"].set()
            assert events["first may end"].wait(30)
        else:
            events["second inside"].set()
            assert events["second may end"].wait(30)
        return {k: ray_folds.FoldOutcome(k, "trained") for k in folds}

    monkeypatch.setattr(ray_folds, "_init_ray", lambda cfg, address: False)
    monkeypatch.setattr(ray_folds, "start_board", lambda name: object())
    monkeypatch.setattr(ray_folds, "_run_folds", run_folds)
    monkeypatch.setattr(ray_folds, "record_resumes", lambda board, out_dir: [])
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        yield events
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def test_the_console_comes_back_when_training_fails(without_ray: dict, tmp_path: Path) -> None:
    console, handlers = [_where(fd) for fd in (1, 2)], list(logging.getLogger().handlers)
    with pytest.raises(RuntimeError, match="a fold's fit failed"):
        ray_folds.train_folds(load_config("tiny"), None, tmp_path / "fails")
    assert [_where(fd) for fd in (1, 2)] == console
    assert logging.getLogger().handlers == handlers
    assert (tmp_path / "fails" / "logs" / "ray.log").is_file()  # it was redirected while training


def test_overlapping_trainings_in_two_threads_give_the_console_back(without_ray: dict, tmp_path: Path) -> None:
    """The first training starts, a second starts in another thread while it runs, the first ends, then the
    second: the order in which CI's leftover training thread and the next test's training overlapped."""
    console = [_where(fd) for fd in (1, 2)]
    threads = {name: threading.Thread(target=ray_folds.train_folds, args=(load_config("tiny"), None, tmp_path / name))
               for name in ("first", "second")}
    threads["first"].start()
    try:
        assert without_ray["first inside"].wait(30)
        assert {_where(fd) for fd in (1, 2)} == {_file(tmp_path / "first" / "logs" / "ray.log")}
        threads["second"].start()
        assert without_ray["second inside"].wait(30)
        without_ray["first may end"].set()
        threads["first"].join(30)
        assert not threads["first"].is_alive()
    finally:
        without_ray["first may end"].set()
        without_ray["second may end"].set()
        for thread in threads.values():
            thread.join(30)
    assert [_where(fd) for fd in (1, 2)] == console  # not the first training's log


PLANTED = '''
import os, threading, time


def test_passes():
    pass


def test_fails_and_leaves_a_thread_holding_the_console(tmp_path):
    log = os.open(tmp_path / "ray.log", os.O_WRONLY | os.O_CREAT)

    def hold():  # a training thread that outlives its test, its descriptors pointed at the run's log
        while True:
            for fd in (1, 2):
                os.dup2(log, fd)
            time.sleep(0.01)

    threading.Thread(target=hold, daemon=True).start()
    time.sleep(0.2)
    assert 1 == 2, "the planted failure"
'''


def test_a_child_pytest_that_lost_its_console_still_reports_its_failures(tmp_path: Path) -> None:
    """How the default run runs the cluster tests (`support.ray_process`): their failures come from the child's
    JUnit report, so a test whose thread took the child's console cannot swallow them."""
    module = tmp_path / "test_planted.py"
    module.write_text(PLANTED)
    (tmp_path / "work").mkdir()
    run = run_pytest_module(module, tmp_path / "work", {}, timeout=120)
    assert "1 failed" not in run.console  # the child's own summary went into the log, as in CI
    assert not run.ok and run.returncode == 1
    assert run.passed == ["test_planted::test_passes"]
    (test, text), = run.failed.items()
    assert test == "test_planted::test_fails_and_leaves_a_thread_holding_the_console"
    assert "AssertionError: the planted failure" in text and "assert 1 == 2" in text  # the failure in full
    assert test in run.explain() and "the planted failure" in run.explain()
