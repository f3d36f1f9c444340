"""Progress bars for the steps a person waits for, readable on a terminal and in a log.

    for batch in progress_bar(batches, desc="predict", unit="batch"): ...
    with progress_bar(total=n, desc="phantom", unit="patient") as bar: bar.update(k)

On a terminal this is tqdm, redrawn in place. When the output is a pipe or a file (`hnp demo > demo.log`, a Ray
job's log, CI), tqdm would still redraw in place with carriage returns, which an editor shows as one endless line;
there each redraw becomes a plain line instead, at most one every `LOG_EVERY_S` seconds, plus the final one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_EVERY_S = 15.0


class LineStream:
    """A stream for tqdm that writes each redraw as a line of its own: no carriage returns, no blank clears, and
    no line that only repeats the previous one's count (tqdm's monitor thread redraws a bar that did not move)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last_count = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.split(" [", 1)[0]  # "predict:  36%|###5      | 5/14", without the times
        if line and count != self._last_count:  # a blank line is tqdm clearing a bar that does not stay
            self.stream.write(line + "\n")
            self._last_count = count

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, **options: Any) -> tqdm:
    """A tqdm bar on `options["file"]` (standard error by default), as plain periodic lines off a terminal.

    Args:
        iterable: what to iterate over, or None for a bar updated by hand.
        **options: tqdm's (desc, total, unit, disable, leave, mininterval, ...).
    """
    stream = options.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        # leave: a log keeps each bar's last line (else a short step shows only its 0% line)
        options.update(file=LineStream(stream), mininterval=max(options.get("mininterval", 0.0), LOG_EVERY_S),
                       leave=True)
    else:
        options["file"] = stream
    return tqdm(iterable, **options)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
