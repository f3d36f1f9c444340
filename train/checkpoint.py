"""Crash-safe file writes for everything a fold leaves behind (best.pt, state.pt, history.csv, predictions).

A killed worker must never leave a half-written file that a resumed run or `hnp eval` then trusts, so every
write goes to a temporary name in the same folder and is renamed over the target with `os.replace`, which is
atomic on POSIX file systems.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then move the finished file onto `path` in one rename.

    Args:
        path: the final file; its folder is created if needed.
        write: writes the whole file to the temporary path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
