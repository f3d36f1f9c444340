"""Progress bars (hnp/bars.py): redrawn in place on a terminal, plain periodic lines in a pipe or a file."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from hnp import bars
from hnp.bars import progress_bar

REPO = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_redraws_in_place() -> None:
    stream = _Terminal()
    for _ in progress_bar(range(3), desc="work", file=stream, mininterval=0):
        pass
    assert "\r" in stream.getvalue() and "work: 100%" in stream.getvalue()


def test_a_bar_in_a_file_writes_lines_without_carriage_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bars, "LOG_EVERY_S", 0.0)  # every redraw becomes a line
    stream = io.StringIO()
    for _ in progress_bar(range(3), desc="work", file=stream, leave=False):
        pass
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # every step once, the last kept although the bar was not to stay (on a terminal it would be cleared)
    assert [line.split("|")[0].strip() for line in lines] == ["work:   0%", "work:  33%", "work:  67%", "work: 100%"]


def test_a_redraw_that_did_not_move_is_not_repeated() -> None:
    stream = io.StringIO()
    lines = bars.LineStream(stream)
    for text in ("\rwork:  50%|#    | 1/2 [00:01<00:01]", "\rwork:  50%|#    | 1/2 [00:11<00:01]", "\r" + " " * 30,
                 "\rwork: 100%|#####| 2/2 [00:12<00:00]", "\n"):
        lines.write(text)
    assert stream.getvalue() == "work:  50%|#    | 1/2 [00:01<00:01]\nwork: 100%|#####| 2/2 [00:12<00:00]\n"


def test_a_bar_in_a_file_is_quiet_between_intervals() -> None:
    stream = io.StringIO()
    with progress_bar(total=1000, desc="work", file=stream) as bar:
        for _ in range(1000):
            bar.update()
    lines = stream.getvalue().splitlines()  # the first draw and the last, nothing between (well under 15 s)
    assert [line.split("|")[0].strip() for line in lines] == ["work:   0%", "work: 100%"]


def test_hnp_phantom_into_a_pipe_prints_no_carriage_return(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "hnp.cli", "phantom", "--out", str(tmp_path / "p"), "--patients", "4",
               "--size", "64x50", "--workers", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"phantom: 100%" in done.stderr and b"\r" not in done.stderr
