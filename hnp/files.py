"""Crash-safe file writes: every file a later stage trusts (shards' side files, checkpoints, tables, reports) is
written under a temporary name in its own folder and renamed onto its name with `os.replace`, atomic on POSIX
file systems, so a killed writer leaves the previous complete file or none, never half of one. A write that runs
out of room removes its temporary file and becomes an `HnpError` naming the file (`write_failed`).

    atomic_write_text(out / "dataset.json", text)
    atomic_write(fold_dir / "history.csv", lambda tmp: frame.to_csv(tmp, index=False))
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hnp.errors import HnpError

# A write the storage refused for want of room: a full disk, a used-up quota, the file size limit (ulimit -f)
STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_failed(where: str | Path, error: OSError) -> HnpError:
    """A write that ran out of room (`STORAGE_FULL`), worded for the user: where, why, and what to do.

    Args:
        where: the file being written, or the folder it was written in when the file is unknown.
        error: the OSError of the write.
    """
    return HnpError(f"{where}: cannot write: {error.strerror or error}; free some space, then run the same "
                    "command again")


@contextmanager
def naming_a_full_disk(path: str | Path) -> Iterator[None]:
    """Writes to `path` inside: one that runs out of room becomes `write_failed(path, ...)`; other errors pass."""
    try:
        yield
    except OSError as error:
        if error.errno in STORAGE_FULL:
            raise write_failed(path, error) from error
        raise


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
        with naming_a_full_disk(path):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a binary file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
