"""Run a test module in a pytest process of its own, and read its outcome from its JUnit XML report.

Ray keeps state per process that one test module cannot hand back whole to the next: the connection of
`ray.init`, its cached config and auth token (`RAY_AUTH_MODE`, read when Ray is imported; a local `ray.init()`
sets `RAY_AUTH_MODE=token` in `os.environ` for the rest of the process), and training threads that outlive a
failed test while holding the process's descriptors 1 and 2 (`train/console.py`). The multi-node cluster tests
(`tests/test_distributed.py`) therefore run in a child pytest, and the test that starts it reports each failure of
theirs in full. The report is a file, so a child whose console was lost still says what failed.

    result = run_pytest_module(Path("tests/test_distributed.py"), tmp_path, {"HNP_CLUSTER_TESTS": "1"}, 1800)
    assert result.ok, result.explain()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ModuleRun:
    """What a child pytest did: its exit status, console, and each test's outcome from the JUnit report."""

    returncode: int
    console: str
    timed_out: bool
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # test id -> the failure or error, in full
    skipped: dict[str, str] = field(default_factory=dict)  # test id -> the reason

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.failed and bool(self.passed)

    def explain(self) -> str:
        """Every failure in full, then the end of the child's console (its summary, when it got one)."""
        head = (f"the child pytest exited with status {self.returncode}"
                + (" after its time ran out (interrupted)" if self.timed_out else "")
                + f": {len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped")
        failures = [f"--- {test} ---\n{text}" for test, text in self.failed.items()]
        console = f"--- the child's console, last 6000 characters ---\n{self.console[-6000:]}"
        return "\n\n".join([head, *failures, console])


def run_pytest_module(module: Path, work: Path, env: dict[str, str], timeout: float) -> ModuleRun:
    """Run `python -m pytest MODULE` from the repository root in a new process with `env` added to this one's.

    Args:
        module: the test file.
        work: an empty folder of the caller's: the child's --basetemp and its JUnit report go there.
        env: variables to set for the child.
        timeout: seconds; past them the child gets SIGINT (pytest then tears its fixtures down and reports what
            it has), then SIGKILL 180 s later.
    """
    report = work / "junit.xml"
    # The test names in the report are relative to the child's rootdir; left to itself, pytest takes the common
    # ancestor of the module and the working folder (/tmp for a module in /tmp and a checkout in /tmp/x).
    rootdir = REPO if module.resolve().is_relative_to(REPO) else module.parent
    argv = [sys.executable, "-m", "pytest", str(module), "-p", "no:cacheprovider", "-q", "-rfEs",
            f"--rootdir={rootdir}", f"--junitxml={report}", f"--basetemp={work / 'tmp'}"]
    child = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, errors="replace")
    timed_out = False
    try:
        console, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        child.send_signal(signal.SIGINT)
        try:
            console, _ = child.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            child.kill()
            console, _ = child.communicate()
    run = ModuleRun(child.returncode, console, timed_out)
    _read_report(report, run)
    return run


def _read_report(report: Path, run: ModuleRun) -> None:
    if not report.is_file():
        run.failed["(no report)"] = f"{report}: not written (the child pytest died before the end of its session)"
        return
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            run.passed.append(test)
        elif outcome.tag == "skipped":
            run.skipped[test] = outcome.get("message", "")
        else:
            run.failed[test] = f"{outcome.tag}: {outcome.get('message', '')}\n{outcome.text or ''}"
