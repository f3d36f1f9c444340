"""Torch files a fold leaves behind (best.pt, state.pt): written atomically (`hnp.files.atomic_write`, so a
killed worker never leaves a half-written file that a resumed run or `hnp eval` then trusts), and checked on
reading: a file damaged some other way (a disk error, a partial copy, an editor) is refused
on reading by `load_torch_file`, naming the file and what is wrong with it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from hnp.errors import HnpError
from hnp.files import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch_file(path: str | Path, map_location: Any = "cpu", hint: str = "", shown_as: str | None = None) -> Any:
    """`torch.load(path, weights_only=True)`; an empty, truncated or foreign file is an HnpError naming it.

    `torch.save` writes a zip archive whose directory is at the end, so a file cut short or overwritten fails
    `zipfile.is_zipfile`; that is checked first because torch's own messages for such files are paragraphs that
    suggest `weights_only=False`, unsafe and never the fix for a damaged file. Damaged bytes inside a whole
    archive are found by the members' CRC-32 (`ZipFile.testzip`, about 0.3 s per GB): torch does not check them
    and would load flipped weights without a word.

    Args:
        path: the file.
        map_location: as for `torch.load`.
        hint: appended to the error message: what the user can do about it.
        shown_as: the name the message gives the file, when `path` is a copy of it (default: `path`).
    """
    path = Path(path)
    name = shown_as or str(path)
    suffix = f"; {hint}" if hint else ""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise HnpError(f"{name}: cannot read it ({err.strerror or err}){suffix}") from None
    if size == 0:
        reason = "empty file (0 bytes)"
    elif not zipfile.is_zipfile(path):
        reason = f"not a torch.save archive ({size} bytes: truncated, or overwritten with something else)"
    elif (problem := _archive_problem(path)) is not None:
        reason = problem
    else:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises several types for damaged archives
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            reason = f"{type(err).__name__}: {first_line[:200]}"
    raise HnpError(f"{name}: not a readable checkpoint: {reason}{suffix}")


def _archive_problem(path: Path) -> str | None:
    """What is wrong with a zip archive's members (the first whose bytes fail their CRC-32), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # a damaged member header or compressed stream
        return f"damaged zip archive ({err})"
    return None if damaged is None else f"member {damaged} fails its CRC-32 check (damaged bytes)"
