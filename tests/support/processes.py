"""Our own subprocesses and everything they started, found through /proc (no psutil here), and killed by PID only:
Ray sessions and processes of other users of the machine are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process we started and every process it started, at once, as a power cut or an OOM kill of the
    whole job would; then reap it."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def kill_by_environment(name: str, value: str) -> list[int]:
    """SIGKILL every process whose environment sets `name` to `value` (a folder only our test made, such as its
    RAY_TMPDIR): what a killed tree left running after its parent died. Returns their PIDs."""
    marker = f"{name}={value}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return killed


def run_until(argv: list[str], *, env: dict[str, str], cwd: Path, logs: Path, until: Callable[[], bool],
              timeout: float, poll: float = 0.25) -> subprocess.CompletedProcess[bytes]:
    """Run ARGV in a session of its own and SIGKILL it with everything it started (`kill_tree`) as soon as `until()`
    holds; returns what it printed, and status -SIGKILL if it was killed. A process that ends first, or outlives
    `timeout`, is returned (killed, in the second case) as it is: the caller's assertions say which.

    Args:
        argv: the command.
        env: its environment.
        cwd: its working folder.
        logs: a folder for its stdout and stderr (`<logs>/stdout`, `<logs>/stderr`), outside what it writes.
        until: checked every `poll` seconds while it runs.
        timeout: seconds before it is killed anyway.
        poll: seconds between checks.
    """
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and not until() and time.monotonic() < deadline:
            time.sleep(poll)
    finally:
        if process.poll() is None:
            kill_tree(process)
    return subprocess.CompletedProcess(argv, process.returncode, (logs / "stdout").read_bytes(),
                                       (logs / "stderr").read_bytes())


def interruptible() -> None:
    """A `preexec_fn` giving the child SIGINT's default action, as in a terminal: a shell starts background jobs
    with SIGINT ignored, and Python then keeps ignoring it, so a test's Ctrl-C did nothing when pytest itself ran
    in the background (CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
