"""The console while folds train: one line per fold (train/progress.py), and Ray's own output kept in a log file
instead of the terminal (train/console.py)."""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.console import RayOutputToFile
from train.progress import FoldState, ProgressDisplay, format_state


class _Board:
    """A stand-in for the board actor: `snapshot.remote()` gives what `ray.get` returns for a plain value."""

    def __init__(self) -> None:
        self.states: dict[int, dict] = {}

    class _Call:
        def __init__(self, value: dict) -> None:
            self.value = value

    @property
    def snapshot(self) -> _Board:
        return self

    def remote(self) -> dict:
        return dict(self.states)


@pytest.fixture(autouse=True)
def _ray_get_passes_values_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)


def test_a_fold_line_says_where_it_is_and_how_long_it_has_left() -> None:
    state = FoldState(fold=2, status="training", epoch=3, epochs=4, step=61, steps=131, loss=0.3121, val_auc=0.9134,
                      images_per_s=41.2, done=0.6, elapsed=120.0)
    assert format_state(state) == ("fold2  epoch 3/4  step  61/131  loss 0.312  val AUC 0.913    41 img/s  "
                                   "1m20s left")
    assert "val AUC   -  " in format_state(FoldState(fold=0, status="training", epoch=1, epochs=4, steps=9))
    assert format_state(FoldState(fold=1)).startswith("fold1  starting")
    assert format_state(FoldState(fold=1, status="done", epoch=4, epochs=4, val_auc=0.5)).endswith("img/s")
    assert math.isnan(FoldState(fold=0, status="training").seconds_left)


def test_plain_lines_come_when_an_epoch_ends_and_at_the_interval_only(monkeypatch: pytest.MonkeyPatch) -> None:
    board, out = _Board(), io.StringIO()
    display = ProgressDisplay(board, [0, 1], epochs=2, stream=out, live=False, interval=1e9)
    display.refresh()
    assert out.getvalue() == ""  # both folds still starting: nothing new to say
    board.states[0] = {"status": "training", "epoch": 1, "epochs": 2, "step": 3, "steps": 8, "done": 0.2}
    display.refresh()
    assert out.getvalue().splitlines() == [format_state(FoldState(fold=0, status="training", epoch=1, epochs=2,
                                                                  step=3, steps=8, done=0.2))]
    board.states[0] = {**board.states[0], "step": 5}
    display.refresh()
    assert len(out.getvalue().splitlines()) == 1  # a step is no news before the interval
    board.states[0] = {**board.states[0], "epochs_done": 1, "epoch": 2, "step": 0, "val_auc": 0.8}
    display.refresh()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("fold0  epoch 2/2") and "val AUC 0.800" in lines[-1]
    display.refresh(final=True)
    # at the end, what changed since it was last printed: fold1's first line, not fold0's again
    assert out.getvalue().splitlines() == [*lines, format_state(FoldState(fold=1, epochs=2))]


def test_live_display_redraws_in_place_and_prints_messages_above() -> None:
    board, out = _Board(), io.StringIO()
    display = ProgressDisplay(board, [0, 1], epochs=2, stream=out, live=True)
    display.refresh()
    display.write("12:00:00 INFO hnp.train: a message")
    screen = out.getvalue()
    # two fold lines drawn, then moved up over and cleared before the message, then drawn again under it
    assert screen.count("fold0  starting") == 2 and "\x1b[2F" in screen
    assert screen.index("a message") < screen.rindex("fold0  starting")


def test_ray_output_goes_to_the_file_and_ours_to_the_console(tmp_path: Path) -> None:
    """A child process writing to the inherited descriptors (as Ray's raylet and workers do) lands in the log;
    a log record of ours reaches the console; the descriptors are restored afterwards."""
    script = f"""
import logging, subprocess, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from train.console import RayOutputToFile
logging.basicConfig(level=logging.INFO, format="%(message)s")
with RayOutputToFile(__import__("pathlib").Path({str(tmp_path / 'ray.log')!r}), enabled=True) as output:
    print("print from the driver")
    subprocess.run([sys.executable, "-c", "import sys; print('from a raylet'); sys.stderr.write('C++ warning\\\\n')"])
    logging.getLogger("hnp.train").info("our own message")
    logging.getLogger("ray").warning("a Ray warning")
print("after: back on the console")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    log = (tmp_path / "ray.log").read_text()
    assert "our own message" in console and "after: back on the console" in done.stdout
    for noise in ("print from the driver", "from a raylet", "C++ warning", "a Ray warning"):
        assert noise in log and noise not in console, noise
    assert "our own message" not in log


def test_verbose_leaves_the_console_alone(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with RayOutputToFile(tmp_path / "ray.log", enabled=False) as output:
        os.write(2, b"shown\n")
        assert output.console is sys.stderr
    assert "shown" in capfd.readouterr().err and not (tmp_path / "ray.log").exists()


def test_log_records_go_through_the_display_and_a_test_capture_keeps_them(caplog: pytest.LogCaptureFixture,
                                                                          tmp_path: Path) -> None:
    board, out = _Board(), io.StringIO()
    display = ProgressDisplay(board, [0], epochs=1, stream=out, live=False)
    with RayOutputToFile(tmp_path / "ray.log", enabled=False) as output, output.logging_to(display):
        logging.getLogger("hnp.train").warning("through the display")
    assert "through the display" in out.getvalue() and "through the display" in caplog.text
