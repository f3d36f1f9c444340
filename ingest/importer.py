"""`hnp import-dicom`: a DICOM export to JPEGs and the manifest, over worker processes, resumable.

    summary = import_dicom(ImportOptions(src=Path("/mnt/export"), out=Path("data"), labels=Path("mri.csv"),
                                         workers=8))
    print(summary.report())

Every input file ends in exactly one place: a row of the manifest (inventory without labels) with its image in
`OUT/images/`, or a row of `OUT/skipped.csv` with its reason. The journal (`ingest.journal`) records each file as it
is converted; a run started again after an interruption converts only the files without a record (or whose size or
modification time changed), and the outputs are written, and the journal removed, only once every file is done.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path

import cv2
import pandas as pd

from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.workers import exit_with
from ingest.convert import (
    IMAGES_DIR,
    RECORD_COLUMNS,
    ConvertSettings,
    Job,
    convert_file,
    keep_freed_memory,
    quiet_pydicom,
)
from ingest.journal import Journal
from ingest.outputs import INVENTORY, MANIFEST, SKIPPED, ImportTables, SplitRule, assemble, write_tables
from ingest.sources import Source, find_sources

log = logging.getLogger("hnp.import_dicom")
_JOURNAL_EVERY_S = 2.0  # at most this much finished work is redone after a crash


@dataclass(frozen=True)
class ImportOptions:
    """What `hnp import-dicom` does.

    Args:
        src: a folder (walked) or a DICOMDIR.
        out: the output folder: new or empty, or the folder of an unfinished import to finish.
        labels: the MRI-read CSV (`ingest.labels`); None writes an inventory instead of a manifest.
        split: the train/test rule.
        workers: conversion processes (1: in this process).
        settings: how each file is checked and written.
        progress: show a progress bar.
    """

    src: Path
    out: Path
    labels: Path | None = None
    split: SplitRule = field(default_factory=SplitRule)
    workers: int = 1
    settings: ConvertSettings = field(default_factory=ConvertSettings)
    progress: bool = True


@dataclass(frozen=True)
class ImportSummary:
    """Counts of an import (no identifier, no header value)."""

    tables: ImportTables
    files: int
    converted: int  # in this run; the others came from the journal of an interrupted one
    written: list[Path]

    def report(self) -> str:
        rows = self.tables.rows
        lines = [f"{self.files:,} files: {len(rows):,} imported, {len(self.tables.skipped):,} skipped"
                 + (f" ({self.files - self.converted:,} from the interrupted run)" if self.converted < self.files
                    else "")]
        patients = rows["patient_id"].nunique()
        if self.tables.labelled:
            splits = rows.groupby("split")["patient_id"].agg(["size", "nunique"])
            lines += [f"{split}: {int(n):,} images of {int(p):,} patients" for split, (n, p) in splits.iterrows()]
        else:
            lines.append(f"{len(rows):,} images of {patients:,} patients (no labels: an inventory, not a manifest)")
        counts = Counter(self.tables.skipped["reason"].map(_reason_kind))
        lines += [f"skipped, {reason}: {n:,}" for reason, n in counts.most_common()]
        lines += [f"wrote {path}" for path in self.written]
        if self.tables.labelled:
            lines.append(f"next: hnp validate {self.written[0]}")
        return "\n".join(lines) + "\n"


def _reason_kind(reason: str) -> str:
    """A duplicate's reason names its first file: counted under the reason alone."""
    return reason.split(" (same as ", 1)[0]


def import_dicom(options: ImportOptions) -> ImportSummary:
    """Convert every file of `options.src` and write the manifest (or inventory) and skipped.csv.

    Args:
        options: what to import and how.

    Raises:
        HnpError: the source, labels file or output folder is unusable (checked before any conversion).
    """
    from ingest.labels import read_mri_reads

    quiet_pydicom()
    reads = read_mri_reads(options.labels) if options.labels else None  # fail now, not after hours of decoding
    journal = _open_journal(options)
    sources = find_sources(options.src, exclude=options.out)
    records, jobs = _plan(sources, journal.load(), options)
    if jobs:
        log.info("converting %d of %d files with %d worker(s)", len(jobs), len(sources), options.workers)
    for record in _run(jobs, journal, options):
        records[record["source"]] = record
    table = pd.DataFrame([records[s.name] for s in sources], columns=RECORD_COLUMNS)
    tables = assemble(table, reads, options.split)
    written = write_tables(options.out, tables)
    _remove_unlisted_images(options.out, set(tables.rows["image_path"]))
    journal.remove()
    return ImportSummary(tables, len(sources), len(jobs), written)


def _open_journal(options: ImportOptions) -> Journal:
    """The journal to continue, or a new one in a new or empty folder."""
    out, journal = options.out, Journal(options.out)
    if not journal.exists:
        finished = [n for n in (f"{MANIFEST}.csv", f"{INVENTORY}.csv", SKIPPED) if (out / n).exists()]
        if finished:
            raise HnpError(f"--out {out} holds a finished import ({finished[0]}): choose a new folder, or remove it "
                           "to import again")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise HnpError(f"--out {out} exists and is not an empty folder: choose a new folder")
    try:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HnpError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
    settings = {"src": str(options.src.resolve()), **asdict(options.settings)}
    journal.open(settings)
    return journal


def _plan(sources: list[Source], done: list[dict], options: ImportOptions) -> tuple[dict[str, dict], list[Job]]:
    """The records still valid (same size and time, image present) by source, and a job for every other file.
    New jobs take slot numbers after every slot used so far, so no image of the interrupted run is overwritten."""
    latest = {r["source"]: r for r in done}
    next_slot = 1 + max((r["slot"] for r in done), default=-1)
    records, jobs = {}, []
    for source in sources:
        size, mtime_ns = _stat(source.path)
        record = latest.get(source.name)
        if record is not None and _still_valid(record, size, mtime_ns, options.out):
            records[source.name] = record
        else:
            jobs.append(Job(source.path, source.name, next_slot, options.out, options.settings, size, mtime_ns))
            next_slot += 1
    return records, jobs


def _still_valid(record: dict, size: int | None, mtime_ns: int | None, out: Path) -> bool:
    """The file is as it was when converted, and its image (if it has one) is still there."""
    unchanged = size is not None and (record["size"], record["mtime_ns"]) == (size, mtime_ns)
    return unchanged and (record["image"] is None or (out / record["image"]).is_file())


def _stat(path: Path) -> tuple[int | None, int | None]:
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns


def _convert(jobs: list[Job], workers: int, progress: bool) -> Iterator[dict]:
    """Records of the jobs, in job order, with a progress bar."""
    with progress_bar(total=len(jobs), desc="import-dicom", unit="file", disable=not progress or not jobs) as bar:
        if workers <= 1 or len(jobs) < 2:
            keep_freed_memory()
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)  # as in the worker processes: measured alike, and no pool threads to fork
            try:
                for job in jobs:
                    yield convert_file(job)
                    bar.update()
            finally:
                cv2.setNumThreads(threads)
            return
        # forkserver, not fork: a child forked after OpenCV started its thread pool can deadlock in it
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["ingest.convert"])
        size = max(1, min(16, len(jobs) // (workers * 8)))
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        stop = context.Event()  # set on Ctrl-C: each worker ends its chunk after the file in hand
        # Ctrl-C is the driver's: the forkserver started here keeps SIGINT ignored and so do the workers it forks,
        # from their first instruction (a worker that Ctrl-C killed while starting broke the pool).
        with _ctrl_c_ignored():
            pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context, initializer=_init_worker,
                                       initargs=(os.getpid(), stop))
            futures = [pool.submit(_convert_chunk, chunk) for chunk in chunks]
        with pool:
            for records in _results_until_interrupted(futures, stop):
                yield from records
                bar.update(len(records))


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_stop_requested: Event | None = None  # a worker's copy of the driver's stop event (_init_worker)


def _init_worker(owner: int, stop: Event) -> None:
    global _stop_requested
    exit_with(owner)  # not left waiting for good when the driver is SIGKILLed
    _stop_requested = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also where the forkserver was started by someone else
    cv2.setNumThreads(1)  # parallelism comes from the processes
    keep_freed_memory()
    quiet_pydicom()


def _convert_chunk(jobs: list[Job]) -> list[dict]:
    """The records of the chunk's files, up to the one in hand when the driver asked to stop."""
    records = []
    for job in jobs:
        if _stop_requested is not None and _stop_requested.is_set():
            break
        records.append(convert_file(job))
    return records


def _results_until_interrupted(futures: list[Future], stop: Event) -> Iterator[list[dict]]:
    """Each future's result, in order. On Ctrl-C: the workers are told to stop after the file in hand, the records
    of every file finished come too, then the interruption goes on.

    No future is cancelled: Python 3.11's ProcessPoolExecutor, when a worker then dies, fails to mark a cancelled
    future broken and its manager thread dies with it, leaving the running futures unfinished forever
    (`terminate_broken` raising InvalidStateError; seen here as a hang after Ctrl-C)."""
    for position, future in enumerate(futures):
        try:
            records = future.result()
        except KeyboardInterrupt:
            stop.set()
            wait(futures[position:])
            yield from (rest.result() for rest in futures[position:] if rest.exception() is None)
            raise
        yield records


def _run(jobs: list[Job], journal: Journal, options: ImportOptions) -> list[dict]:
    """Convert the jobs, journaling the finished ones every _JOURNAL_EVERY_S (one fsync then, not one per file)
    and, on an interruption, before stopping."""
    done: list[dict] = []
    journaled, last = 0, time.monotonic()
    try:
        for record in _convert(jobs, options.workers, options.progress):
            done.append(record)
            if time.monotonic() - last >= _JOURNAL_EVERY_S:
                journal.append(done[journaled:])
                journaled, last = len(done), time.monotonic()
    except KeyboardInterrupt:
        log.info("interrupted: run the same command again to convert the remaining files")
        raise
    finally:
        journal.append(done[journaled:])
    return done


def _remove_unlisted_images(out: Path, listed: set[str]) -> None:
    """Images of files skipped after conversion (duplicates, no label) or left by an interrupted run."""
    for path in (out / IMAGES_DIR).iterdir():
        if f"{IMAGES_DIR}/{path.name}" not in listed:
            path.unlink()
