"""The record of an import in progress, `OUT/.import/`: what a resumed import need not do again.

    journal = Journal(out)
    journal.open(settings)                  # new, or the same settings as the interrupted import; else HnpError
    done = journal.load()                   # every record appended so far, oldest first
    journal.append(records)                 # one line per file, flushed to disk before it returns
    journal.remove()                        # the import finished: its outputs say everything

`journal.jsonl` holds one JSON object per converted file (the fields of `ingest.convert.convert_file`), appended
as conversions finish; a line cut by a crash is the last one and is ignored. The records hold what the manifest
will (patient and study IDs, dates): the journal is PHI like the manifest, and it is removed when the import ends.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hnp.errors import HnpError
from hnp.files import atomic_write_text

JOURNAL_DIR = ".import"
_RECORDS = "journal.jsonl"
_SETTINGS = "settings.json"


class Journal:
    """The journal of the import writing into `out`."""

    def __init__(self, out: Path) -> None:
        self.folder = out / JOURNAL_DIR

    @property
    def exists(self) -> bool:
        return (self.folder / _SETTINGS).is_file()

    def open(self, settings: dict) -> None:
        """Start a journal with these settings, or continue one that has the same.

        Args:
            settings: what every record depends on (source folder, conversion settings), JSON-serialisable.

        Raises:
            HnpError: the journal was started with other settings.
        """
        path = self.folder / _SETTINGS
        if path.is_file():
            before = json.loads(path.read_text(encoding="utf-8"))
            if before != settings:
                changed = ", ".join(sorted(k for k in settings | before if before.get(k) != settings.get(k)))
                raise HnpError(f"{self.folder.parent}: holds an unfinished import with other settings ({changed}); "
                               "run it again with the same source and options to finish it, or choose a new --out")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True))

    def load(self) -> list[dict]:
        """Every readable record, oldest first. A last line that a crash cut short is cut off the file, so that the
        records appended next start on a line of their own; its file, like that of any line that does not parse,
        is converted again."""
        path = self.folder / _RECORDS
        if not path.is_file():
            return []
        data = path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            os.truncate(path, complete)
        records = []
        for line in data[:complete].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def append(self, records: list[dict]) -> None:
        """Add records and make them durable (flushed and fsync'ed) before returning.

        Args:
            records: from `convert_file`.
        """
        if not records:
            return
        # ensure_ascii: a file name that is not UTF-8 (a surrogate in Python) survives as an escape
        lines = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records).encode("ascii")
        with (self.folder / _RECORDS).open("ab") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        """Delete the journal (the import's outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
