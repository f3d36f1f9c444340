"""The input files of an import: every file under a folder, or every file a DICOMDIR lists.

    sources = find_sources(Path("/mnt/pacs-export"))            # a folder tree, walked
    sources = find_sources(Path("/media/cd/DICOMDIR"))          # the files the DICOMDIR references

Each source is named by its path relative to the folder (or, for a DICOMDIR, its Referenced File ID), in `/` form,
sorted: that name is how `skipped.csv` refers to it. A file a DICOMDIR lists but the folder lacks is a source too
(skipped as missing). Links to folders are not followed (a link back up the tree would loop forever);
links to files are read like files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from hnp.errors import HnpError


@dataclass(frozen=True)
class Source:
    """One input file.

    Attributes:
        path: where to read it.
        name: its path relative to the import's root, with `/` separators.
    """

    path: Path
    name: str


def find_sources(src: Path, exclude: Path | None = None) -> list[Source]:
    """The files to import, sorted by name.

    Args:
        src: a folder, or a DICOMDIR file.
        exclude: a folder inside `src` to leave out (none may be given that contains `src`).

    Raises:
        HnpError: `src` does not exist, or is a file that is not a readable DICOMDIR.
    """
    if src.is_dir():
        return _walk(src, exclude)
    if src.is_file():
        return _dicomdir(src)
    raise HnpError(f"{src}: no such folder or DICOMDIR")


def _walk(root: Path, exclude: Path | None) -> list[Source]:
    sources = []
    skip = os.path.realpath(exclude) if exclude is not None else None
    for folder, subfolders, files in os.walk(root, onerror=_raise_walk_error):
        subfolders[:] = sorted(d for d in subfolders if os.path.realpath(os.path.join(folder, d)) != skip)
        relative = Path(folder).relative_to(root)
        sources += [Source(Path(folder, f), (relative / f).as_posix()) for f in files]
    return sorted(sources, key=lambda s: s.name)


def _raise_walk_error(err: OSError) -> None:
    raise HnpError(f"{err.filename}: cannot list the folder: {err.strerror or err}")


def _dicomdir(path: Path) -> list[Source]:
    """Every file a directory record references (ReferencedFileID), missing ones included: they are inputs too."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    root = path.parent
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote the records (PHI)
            records = dcmread(path).DirectoryRecordSequence
            ids = [record.ReferencedFileID for record in records if record.get("ReferencedFileID")]
    except (InvalidDicomError, AttributeError, ValueError, OSError) as err:
        raise HnpError(f"{path}: not a readable DICOMDIR ({type(err).__name__}); give its folder to import "
                       "every file in it instead") from None
    parts = sorted({(i,) if isinstance(i, str) else tuple(i) for i in ids})
    return [Source(_find(root, components), "/".join(components)) for components in parts]


def _find(root: Path, components: tuple[str, ...]) -> Path:
    """The referenced file; on a case-sensitive file system the case may differ from the DICOMDIR's upper-case IDs
    (Linux shows a CD's names in lower case), so each component falls back to a case-insensitive match."""
    path = root.joinpath(*components)
    if path.exists():
        return path
    found = root
    for component in components:
        exact = found / component
        matches = [] if exact.exists() or not found.is_dir() else [
            p for p in found.iterdir() if p.name.lower() == component.lower()]
        found = matches[0] if len(matches) == 1 else exact
    return found
