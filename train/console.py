"""Keep the console for the user: while the folds train, what Ray and its workers print goes to a log file
in the run folder, and only our progress display and our own log messages reach the terminal.

    with RayOutputToFile(run_dir / "logs" / "ray.log", enabled=not verbose) as output:
        ...                                      # start Ray, train; output.console is the terminal
        with output.logging_to(display): ...     # our log lines go through the progress display

The redirection is of the file descriptors 1 and 2, not only of `sys.stdout`/`sys.stderr`: Ray's C++ core logs
to the descriptors directly, and the processes Ray starts (raylet, workers) inherit them, so their console output
lands in the file too. Ray's own session folder keeps its per-process logs as always.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from train.progress import DisplayLogHandler, ProgressDisplay


class RayOutputToFile:
    """A context manager sending descriptors 1 and 2 to `path` (appended) while it is open, when `enabled`.

    Args:
        path: the log file; its folder is created.
        enabled: False leaves the console as it is (`hnp train -v`: everything shows, as Ray prints it).
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.console: TextIO = sys.stderr
        self._saved: dict[int, int] = {}
        self._log: TextIO | None = None

    @property
    def live(self) -> bool:
        """Whether the console is a terminal (redraw in place) rather than a pipe or a file."""
        try:
            return os.isatty(self.console.fileno())
        except (AttributeError, OSError, ValueError):
            return False

    def __enter__(self) -> RayOutputToFile:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._log = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in __exit__
        self._saved = {fd: os.dup(fd) for fd in (1, 2)}
        self.console = os.fdopen(os.dup(self._saved[2]), "w", buffering=1)
        for fd in (1, 2):
            os.dup2(self._log.fileno(), fd)
        self._handlers = _point_stream_handlers(self.console)
        # Ray's loggers normally have handlers of their own (to stderr, so now the file); records of theirs that
        # reach the root logger go to the file as well, not to the console
        self._ray_records = logging.StreamHandler(self._log)
        self._ray_records.addFilter(_from_ray)
        logging.getLogger().addHandler(self._ray_records)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        for handler, stream in self._handlers:
            handler.setStream(stream)
            handler.removeFilter(_not_from_ray)
        logging.getLogger().removeHandler(self._ray_records)
        self.console.close()
        self._log.close()
        self.console = sys.stderr

    @contextmanager
    def logging_to(self, display: ProgressDisplay) -> Iterator[None]:
        """Route the root logger's console handlers through `display`, so messages print above its lines.
        (Other handlers, such as a test's log capture, stay as they are.)"""
        root = logging.getLogger()
        consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                    and h.stream in (self.console, sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        formatter = consoles[0].formatter if consoles else None
        through = DisplayLogHandler(display, formatter)
        through.addFilter(_not_from_ray)
        for handler in consoles:
            root.removeHandler(handler)
        root.addHandler(through)
        try:
            yield
        finally:
            root.removeHandler(through)
            for handler in consoles:
                root.addHandler(handler)


def _point_stream_handlers(console: TextIO) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Point the root logger's handlers that write to the old stdout/stderr at `console`; returns what to undo."""
    changed = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) \
                and handler.stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            changed.append((handler, handler.setStream(console)))
            handler.addFilter(_not_from_ray)
    return changed


def _from_ray(record: logging.LogRecord) -> bool:
    return record.name == "ray" or record.name.startswith("ray.")


def _not_from_ray(record: logging.LogRecord) -> bool:
    return not _from_ray(record)
