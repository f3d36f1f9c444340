"""Write WebDataset tar shards with DALI index files: deterministic bytes, atomic, resumable, parallel.

A plan (`plan_shards`) fixes every shard's samples before anything is written, so the shards can be written
in any order, by any number of processes, and a rerun knows exactly what each shard must contain:

    specs = plan_shards("fold0", samples, target_bytes=256 * 2**20)
    results = write_shards(specs, out_dir, Encoding(), workers=2)

Each shard goes to `<name>.tar.tmp` and is renamed when complete, its index likewise; then a line with its
sha256 is appended to `progress.jsonl`. A rerun keeps a shard whose plan digest and file sha256 match that
ledger and rewrites the rest, so a killed run resumes and ends with the same bytes as an uninterrupted one.

Tar members are written with hand-built USTAR headers (fixed mtime, uid, gid, names and mode): Python's
tarfile spends ~20 us per header, a third of the time of a small sample, and a fixed header makes the bytes
reproducible. Members are laid out in two reusable buffers of a few MiB (an image is read straight into its
place); a full buffer is hashed, then written with O_DIRECT, past the page cache, by a thread while the other
fills. Memory
holds those buffers (a larger one only for an image larger than them), and a sample costs a handful of system
calls.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import multiprocessing
import os
import queue
import re
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.files import atomic_write_text, naming_a_full_disk
from hnp.jpeg import JpegError, inspect_jpeg
from hnp.shard_format import IMAGE_EXT, LABEL_EXT, META_EXT, member_name
from hnp.workers import exit_with

BLOCK = 512
LEDGER_NAME = "progress.jsonl"
INDEX_VERSION = "v1.2"  # DALI's webdataset index format, as written by its `wds2idx` tool
_CHUNK = 1 << 20
_BUFFER = 4 << 20  # tar bytes gathered before one sha256 update and one write
_ALIGN = 4096  # O_DIRECT: buffer address, write length and file offset in multiples of the device block
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux only
_MTIME = 0  # fixed header fields: the same samples always give the same bytes
_MODE = 0o444
_PROGRESS_EVERY = 16  # samples between progress messages from a worker process
_SHARD_FILE = re.compile(r"^(fold\d+|test)-\d{6}\.(tar|idx)(\.tmp)?$")


@dataclass(frozen=True)
class Sample:
    """One radiograph as it will appear in a shard.

    Attributes:
        row: the manifest row it comes from (0-based), for messages.
        key: the WebDataset key, e.g. "r0000042" (no dots: DALI and webdataset split names at the first dot).
        image: absolute path of the source JPEG.
        image_size: its size in bytes when planned (a changed file is an error, not a silent mismatch).
        image_mtime_ns: its modification time when planned.
        meta: the `<key>.json` member (hnp.shard_format.SampleMeta.to_json).
        label_vector: the `<key>.lbl` member (hnp.shard_format.encode_label_vector).
    """

    row: int
    key: str
    image: str
    image_size: int
    image_mtime_ns: int
    meta: bytes
    label_vector: bytes


@dataclass(frozen=True)
class Encoding:
    """How image bytes go into the tar: as they are, or downscaled to `max_side` and re-encoded once."""

    max_side: int | None = None
    jpeg_quality: int = 95


@dataclass(frozen=True)
class ShardSpec:
    """A shard's place and planned contents; `name` is "fold0/fold0-000000" (no extension)."""

    split: str
    number: int
    samples: tuple[Sample, ...]

    @property
    def name(self) -> str:
        return f"{self.split}/{self.split}-{self.number:06d}"

    def digest(self, encoding: Encoding) -> str:
        """A hash of everything that determines the shard's bytes, to tell a reusable old shard from a stale one."""
        # the quality only matters when images are re-encoded
        quality = encoding.jpeg_quality if encoding.max_side is not None else None
        sha = hashlib.sha256(json.dumps([self.name, encoding.max_side, quality]).encode())
        for sample in self.samples:
            sha.update(json.dumps([sample.key, sample.image, sample.image_size, sample.image_mtime_ns]).encode())
            sha.update(sample.meta)
            sha.update(sample.label_vector)
        return sha.hexdigest()


@dataclass(frozen=True)
class ShardResult:
    """A written (or verified) shard, as listed in dataset.json and the ledger."""

    name: str
    spec_digest: str
    samples: int
    bytes: int
    sha256: str
    index_sha256: str
    reencoded: int  # samples whose image was downscaled and re-encoded
    reused: bool = False

    @property
    def file(self) -> str:
        return f"{self.name}.tar"

    @property
    def index(self) -> str:
        return f"{self.name}.idx"


def parse_byte_size(text: str) -> int:
    """Bytes in a size like "256MB", "1.5GB", "900KB" or "4096" (binary units: 1 MB = 2**20 bytes).

    Args:
        text: a number with an optional unit B, KB, MB or GB (case-insensitive).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise HnpError(f"shard size {text!r}: expected a number with an optional unit KB, MB or GB, e.g. 256MB")
    scale = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper().rstrip("B")]
    size = int(float(match.group(1)) * scale)
    if size <= 0:
        raise HnpError(f"shard size {text!r} must be positive")
    return size


def member_bytes(size: int) -> int:
    """Bytes a member of `size` bytes takes in a tar: one header block plus the data padded to blocks."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def sample_bytes(sample: Sample) -> int:
    """Planned bytes of a sample in a tar. A downscaled image's size is unknown until it is encoded, so the
    source size is used: shards of re-encoded images come out smaller than the target, never larger."""
    return sum(member_bytes(n) for n in (sample.image_size, len(sample.meta), len(sample.label_vector)))


def plan_shards(split: str, samples: Iterable[Sample], target_bytes: int) -> list[ShardSpec]:
    """Cut a split's samples, in their given order, into shards of at most `target_bytes` (or one sample).

    Args:
        split: "fold0", ..., "test"; names the folder and the files.
        samples: the split's samples in their final (shuffled) order.
        target_bytes: the shard size to stay under.
    """
    shards: list[list[Sample]] = [[]]
    size = 2 * BLOCK  # end-of-archive marker
    for sample in samples:
        nbytes = sample_bytes(sample)
        if shards[-1] and size + nbytes > target_bytes:
            shards.append([])
            size = 2 * BLOCK
        shards[-1].append(sample)
        size += nbytes
    return [ShardSpec(split, number, tuple(chunk)) for number, chunk in enumerate(shards) if chunk]


# ---- tar bytes ------------------------------------------------------------------------------------------------


_HEADER_IDS = b"%07o\0" % _MODE + b"0000000\0" * 2  # mode, uid, gid
_HEADER_MTIME = b"%011o\0" % _MTIME
# type "0" (regular file), empty link name, "ustar" magic and version "00", then NUL: user and group names stay
# empty and devmajor/devminor NUL, as tarfile leaves them for regular files
_HEADER_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(BLOCK - 265)
# the checksum counts its own field as 8 spaces
_CHECKSUM_FIXED = sum(_HEADER_IDS) + sum(_HEADER_MTIME) + sum(b" " * 8) + sum(_HEADER_TAIL)
_ZEROS = bytes(BLOCK)


def ustar_header(name: str, size: int) -> bytes:
    """A 512-byte USTAR header for a regular file, with every field but name and size fixed.

    Equal to `tarfile.TarInfo(name).tobuf(tarfile.USTAR_FORMAT)` with size, mtime 0, mode 0444, uid/gid 0 and
    empty user/group names (tests check this), at a twentieth of the cost: the checksum of the fixed fields is
    summed once.

    Args:
        name: member name, ASCII, at most 100 bytes (sample keys are short).
        size: data size in bytes, below 8 GiB.
    """
    raw = name.encode("ascii")
    if len(raw) > 100 or size >= 8**11:
        raise HnpError(f"tar member {name!r} ({size} bytes) does not fit a USTAR header")
    size_field = b"%011o\0" % size
    checksum = _CHECKSUM_FIXED + sum(raw) + sum(size_field)
    return b"".join((raw.ljust(100, b"\0"), _HEADER_IDS, size_field, _HEADER_MTIME, b"%06o\0 " % checksum,
                     _HEADER_TAIL))


def _aligned_buffer(size: int) -> memoryview:
    """Zeroed memory of at least `size` bytes starting on a page boundary, as O_DIRECT writes need."""
    return memoryview(mmap.mmap(-1, -(-size // _ALIGN) * _ALIGN))


def _open_output(path: Path) -> int:
    """Open a shard for writing, bypassing the page cache (O_DIRECT) where the file system allows it.

    On a VM, buffered writes cost a kernel copy into freshly allocated page-cache pages, 1-2 s of system time per
    GB here, and the dirty-page limit throttles a 5 GB run to the disk's pace anyway; direct writes of whole
    blocks from one reused buffer cost almost no CPU and leave other jobs' cached files alone.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, 0o666)
        except OSError as err:
            if err.errno != errno.EINVAL:  # file systems without O_DIRECT (some FUSE and network ones) refuse it
                raise
    return os.open(path, flags, 0o666)


def _write_through_cache(fd: int) -> bool:
    """Clear O_DIRECT on an open file; False when it was not set."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & _O_DIRECT:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
    return True


class _TarStream:
    """Appends members to a file opened by `_open_output`, recording each member's data offset.

    Members are laid out in one of two buffers while a thread writes the other (os.write releases the GIL), so a
    direct write's wait for the disk overlaps the reading and hashing of the next images. (Hashing in the writer
    thread too was slower: one thread then did most of the work.) Call `close` to end the archive and write what
    is left, and `stop` in any case before closing the file.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha = hashlib.sha256()
        self.buffer = _aligned_buffer(_BUFFER)
        self.spare = _aligned_buffer(_BUFFER)
        self.fill = 0  # bytes of the buffer in use
        self.written = 0  # bytes handed to the writer thread
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="tar-writer")
        self.pending: Future | None = None

    def _reserve(self, size: int) -> tuple[memoryview, int]:
        """The next `size` bytes of the buffer (flushing, or moving to a larger buffer, first if needed), and the
        file offset where they will land."""
        if self.fill + size > len(self.buffer):
            self._flush()
            if self.fill + size > len(self.buffer):  # an image larger than the buffer: a larger one from now on
                larger = _aligned_buffer(self.fill + size)
                larger[: self.fill] = self.buffer[: self.fill]
                self.buffer = larger
        start = self.fill
        self.fill += size
        return self.buffer[start : self.fill], self.written + start

    def _member(self, name: str, size: int) -> tuple[memoryview, int]:
        """Lay out a member's header and padding; returns the view to fill with its data and the data offset."""
        region, offset = self._reserve(member_bytes(size))
        region[:BLOCK] = ustar_header(name, size)
        region[BLOCK + size :] = _ZEROS[: len(region) - BLOCK - size]
        return region[BLOCK : BLOCK + size], offset + BLOCK

    def add_bytes(self, name: str, data: bytes) -> int:
        """Add a member from memory; returns its data offset."""
        view, offset = self._member(name, len(data))
        view[:] = data
        return offset

    def add_file(self, name: str, source, size: int, what: str) -> int:
        """Read `size` bytes of an open unbuffered file straight into a member; returns its data offset."""
        view, offset = self._member(name, size)
        done = 0
        while done < size:
            count = source.readinto(view[done:])
            if not count:
                raise HnpError(f"{what}: file shrank while it was being sharded")
            done += count
        return offset

    def _flush(self, final: bool = False) -> None:
        """Hash the buffered bytes and hand them to the writer thread: whole blocks of _ALIGN bytes, or everything
        when `final`; what is left (less than a block) moves to the start of the other buffer, which becomes the
        current one."""
        end = self.fill if final else self.fill - self.fill % _ALIGN
        self.sha.update(self.buffer[:end])  # while the previous buffer is still being written
        self._wait()
        full, self.buffer = self.buffer, self.spare
        rest = self.fill - end
        if rest:
            if rest > len(self.buffer):
                self.buffer = _aligned_buffer(rest)
            self.buffer[:rest] = full[end : self.fill]
        self.spare = full
        self.pending = self.writer.submit(self._write, full[:end])
        self.written += end
        self.fill = rest

    def _write(self, data: memoryview) -> None:
        """Write `data` (in the writer thread)."""
        whole = len(data) - len(data) % _ALIGN
        self._write_all(data[:whole])
        if whole < len(data):  # the archive's last partial block: a direct write must be whole blocks
            _write_through_cache(self.fd)
            self._write_all(data[whole:])

    def _write_all(self, data: memoryview) -> None:
        while data:
            try:
                count = os.write(self.fd, data)
            except OSError as err:
                # a device with blocks larger than _ALIGN refuses the direct write: go through the page cache
                if err.errno == errno.EINVAL and _write_through_cache(self.fd):
                    continue
                raise
            data = data[count:]

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()  # raises the writer's error, if any

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks) and everything still buffered, and wait for it."""
        self._reserve(2 * BLOCK)[0][:] = _ZEROS * 2
        self._flush(final=True)
        self._wait()

    def stop(self) -> None:
        """End the writer thread (after the write in progress, if any)."""
        self.writer.shutdown(wait=True)


def _downscaled(data: bytes, encoding: Encoding) -> bytes | None:
    """The image re-encoded at most `max_side` pixels on its long side, or None when it is small enough.

    Raises:
        JpegError: the bytes are not a JPEG that decodes.
    """
    info = inspect_jpeg(data)
    if encoding.max_side is None or max(info.width, info.height) <= encoding.max_side:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise JpegError("OpenCV cannot decode it")
    scale = encoding.max_side / max(info.width, info.height)
    size = (max(1, round(info.width * scale)), max(1, round(info.height * scale)))
    # INTER_AREA: the standard anti-aliased choice for shrinking; fine level detail survives best with it.
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, encoding.jpeg_quality])
    if not ok:
        raise HnpError("re-encoding the downscaled image failed")
    return encoded.tobytes()


def _add_image(tar: _TarStream, sample: Sample, encoding: Encoding) -> tuple[int, int, bool]:
    """Write `<key>.jpg`; returns (data offset, size, re-encoded)."""
    # named by row, not by path: image paths often embed the patient ID, and messages end up in logs
    what = f"manifest row {sample.row} (sample {sample.key}): image"
    try:
        with open(sample.image, "rb", buffering=0) as source:
            stat = os.fstat(source.fileno())
            if (stat.st_size, stat.st_mtime_ns) != (sample.image_size, sample.image_mtime_ns):
                raise HnpError(f"{what}: file changed after it was checked; run `hnp shard` again")
            if encoding.max_side is None:
                return tar.add_file(member_name(sample.key, IMAGE_EXT), source, stat.st_size, what), stat.st_size, False
            data = source.readall()
    except OSError as err:
        raise HnpError(f"{what}: cannot read: {err.strerror or err}") from None
    try:
        smaller = _downscaled(data, encoding)
    except JpegError as err:  # validation passed it, so the file was replaced since
        raise HnpError(f"{what}: {err}") from None
    payload = data if smaller is None else smaller
    return tar.add_bytes(member_name(sample.key, IMAGE_EXT), payload), len(payload), smaller is not None


def _write_tar(spec: ShardSpec, path: Path, encoding: Encoding, report: Callable[[int], None]) -> tuple[str, str, int]:
    """Write the shard's tar to `path`; returns (sha256, index text, re-encoded count)."""
    lines = [f"{INDEX_VERSION} {len(spec.samples)}"]
    reencoded = 0
    fd = _open_output(path)
    tar = _TarStream(fd)
    try:
        for done, sample in enumerate(spec.samples, 1):
            offset, size, changed = _add_image(tar, sample, encoding)
            reencoded += changed
            entries = [(IMAGE_EXT, offset, size)]
            for ext, data in ((META_EXT, sample.meta), (LABEL_EXT, sample.label_vector)):
                entries.append((ext, tar.add_bytes(member_name(sample.key, ext), data), len(data)))
            lines.append(" ".join(f"{ext} {off} {n} {member_name(sample.key, ext)}" for ext, off, n in entries))
            if done % _PROGRESS_EVERY == 0:
                report(_PROGRESS_EVERY)
        tar.close()
    finally:
        tar.stop()
        os.close(fd)
    report(len(spec.samples) % _PROGRESS_EVERY)
    return tar.sha.hexdigest(), "\n".join(lines) + "\n", reencoded


def write_shard(spec: ShardSpec, out_dir: Path, encoding: Encoding, previous: dict | None = None,
                report: Callable[[int], None] = lambda n: None) -> ShardResult:
    """Write one shard and its DALI index atomically, or keep the finished one a previous run left.

    Args:
        spec: the shard's plan.
        out_dir: the shard folder (holding fold0/, ..., test/).
        encoding: how images are written.
        previous: this shard's ledger entry from an earlier run, if any.
        report: called with a number of samples done, for the progress bar.
    """
    digest = spec.digest(encoding)
    tar_path, idx_path = out_dir / f"{spec.name}.tar", out_dir / f"{spec.name}.idx"
    kept = _verified(previous, digest, tar_path, idx_path)
    if kept is not None:
        report(len(spec.samples))
        return kept
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_tar, tmp_idx = tar_path.with_suffix(".tar.tmp"), idx_path.with_suffix(".idx.tmp")
    try:
        with naming_a_full_disk(tar_path):
            sha, index_text, reencoded = _write_tar(spec, tmp_tar, encoding, report)
            tmp_idx.write_text(index_text)
            os.replace(tmp_idx, idx_path)  # index first: a tar under its final name always has its index beside it
            os.replace(tmp_tar, tar_path)
    finally:  # a half-written shard would only hold space (on a full disk, the space the rerun needs)
        tmp_tar.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    return ShardResult(spec.name, digest, len(spec.samples), tar_path.stat().st_size, sha,
                       hashlib.sha256(index_text.encode()).hexdigest(), reencoded)


def _verified(previous: dict | None, digest: str, tar_path: Path, idx_path: Path) -> ShardResult | None:
    """The previous run's result for this shard if its plan is unchanged and both files hash as recorded."""
    if previous is None or previous.get("spec_digest") != digest:
        return None
    if not (tar_path.is_file() and idx_path.is_file()) or tar_path.stat().st_size != previous.get("bytes"):
        return None
    if file_sha256(tar_path) != previous.get("sha256") or file_sha256(idx_path) != previous.get("index_sha256"):
        return None
    try:
        fields = {k: previous[k] for k in ("name", "spec_digest", "samples", "bytes", "sha256", "index_sha256",
                                            "reencoded")}
    except KeyError:  # a ledger from another version: write the shard again
        return None
    return ShardResult(**fields, reused=True)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


# ---- ledger and clean-up ----------------------------------------------------------------------------------------


def read_ledger(out_dir: Path) -> dict[str, dict]:
    """Finished shards recorded by earlier runs, by name; a line cut short by a kill is ignored."""
    path = out_dir / LEDGER_NAME
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "name" in entry:
            entries[entry["name"]] = entry
    return entries


def _ledger_line(result: ShardResult) -> str:
    return json.dumps({k: v for k, v in asdict(result).items() if k != "reused"}, sort_keys=True) + "\n"


def _append_ledger(out_dir: Path, result: ShardResult) -> None:
    # No fsync, here or for the tars: after a crash a rerun re-hashes each recorded shard, so a file the crash
    # damaged (or a lost ledger line) only means that shard is written again.
    with open(out_dir / LEDGER_NAME, "a") as handle:
        handle.write(_ledger_line(result))


def remove_stale_files(out_dir: Path, specs: list[ShardSpec]) -> list[str]:
    """Delete partial files and shards that are not in the plan (a previous run with other options).

    Only names this module writes (`fold<k>/fold<k>-NNNNNN.tar|idx[.tmp]`, `test/...`) are touched.

    Returns:
        The removed paths, relative to `out_dir`.
    """
    planned = {f"{spec.name}.{ext}" for spec in specs for ext in ("tar", "idx")}
    removed = []
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir() and re.fullmatch(r"fold\d+|test", p.name)):
        for path in sorted(folder.iterdir()):
            relative = f"{folder.name}/{path.name}"
            if _SHARD_FILE.match(path.name) and relative not in planned:
                path.unlink()
                removed.append(relative)
    return removed


# ---- parallel writing -----------------------------------------------------------------------------------------

_progress_queue = None  # set in each worker process by _init_worker


def _init_worker(owner: int, progress) -> None:
    global _progress_queue
    exit_with(owner)  # not left waiting for good when the driver is SIGKILLed
    _progress_queue = progress


def _report_to_queue(count: int) -> None:
    if count:
        _progress_queue.put(count)


def _write_in_worker(spec: ShardSpec, out_dir: Path, encoding: Encoding, previous: dict | None) -> ShardResult:
    return write_shard(spec, out_dir, encoding, previous, report=_report_to_queue)


def write_shards(specs: list[ShardSpec], out_dir: Path, encoding: Encoding, workers: int = 1,
                 progress: bool = True) -> list[ShardResult]:
    """Write (or verify and keep) every planned shard, `workers` processes each writing whole shards.

    Each finished shard is recorded in the ledger at once, so a kill loses at most the shards in progress.

    Args:
        specs: the plan, all splits.
        out_dir: the shard folder.
        encoding: how images are written.
        workers: processes; 1 writes in this process.
        progress: show a progress bar (in samples).

    Returns:
        One result per spec, in plan order.
    """
    ledger = read_ledger(out_dir)
    # drop a line a kill cut short, so that this run's appended lines start on a line of their own
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in ledger.values())
    atomic_write_text(out_dir / LEDGER_NAME, lines)
    total = sum(len(spec.samples) for spec in specs)
    results: dict[str, ShardResult] = {}
    with progress_bar(total=total, desc="sharding", unit="img", disable=not progress, smoothing=0.1) as bar:
        if workers <= 1:
            for spec in specs:
                result = write_shard(spec, out_dir, encoding, ledger.get(spec.name), report=bar.update)
                _record(out_dir, result, results)
        else:
            _write_parallel(specs, out_dir, encoding, ledger, workers, bar, results)
            bar.update(total - bar.n)  # the last progress messages may still be in the queue
    ordered = [results[spec.name] for spec in specs]
    # Rewritten in plan order, so that a finished run's ledger is as reproducible as its shards.
    atomic_write_text(out_dir / LEDGER_NAME, "".join(_ledger_line(result) for result in ordered))
    return ordered


def _record(out_dir: Path, result: ShardResult, results: dict[str, ShardResult]) -> None:
    if not result.reused:
        _append_ledger(out_dir, result)
    results[result.name] = result


def _write_parallel(specs: list[ShardSpec], out_dir: Path, encoding: Encoding, ledger: dict[str, dict],
                    workers: int, bar: tqdm, results: dict[str, ShardResult]) -> None:
    context = multiprocessing.get_context()
    progress = context.Queue()
    # Largest shards first: the last shards to start are the small ones, so no worker idles at the end.
    order = sorted(specs, key=lambda spec: -len(spec.samples))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(os.getpid(), progress)) as pool:
        pending: set[Future] = {pool.submit(_write_in_worker, spec, out_dir, encoding, ledger.get(spec.name))
                                for spec in order}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress, bar)
                for future in done:
                    _record(out_dir, future.result(), results)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _drain(progress, bar: tqdm) -> None:
    while True:
        try:
            bar.update(progress.get_nowait())
        except queue.Empty:
            return
