"""What the loaders read: shard lists from `dataset.json` (`hnp.shard_format.read_dataset`), samples from the DALI
index files beside each tar.

    tars = split_shards("shards", ["fold1", "fold2", "fold3"])   # a fold's training shards
    samples = read_samples(tars)                                   # keys and byte ranges, checked against the tars

Both loaders cut the samples into per-rank parts the same way DALI's readers do (`rank_range`), so the torch
loader and the DALI pipeline give every rank the same samples in evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hnp.errors import HnpError
from hnp.shard_format import IMAGE_EXT, LABEL_EXT, read_dataset, split_member_name


@dataclass(frozen=True)
class SampleEntry:
    """One sample of a shard: its key and the byte range of each component inside the tar."""

    shard: Path
    key: str
    components: dict[str, tuple[int, int]]  # extension -> (data offset, size)

    def read(self, ext: str) -> bytes:
        """The bytes of one component. `pread` at the indexed offset: no shared file position, so forked
        DataLoader workers can read the same shard at once."""
        if ext not in self.components:
            raise HnpError(f"{self.shard}: sample {self.key} has no .{ext} component")
        offset, size = self.components[ext]
        with open(self.shard, "rb") as handle:
            data = os.pread(handle.fileno(), size, offset)
        if len(data) != size:
            raise HnpError(f"{self.shard}: sample {self.key}: .{ext} cut short ({len(data)} of {size} bytes); "
                           "the tar is truncated, re-run hnp shard")
        return data


def split_shards(shards_dir: str | Path, splits: Iterable[str]) -> list[Path]:
    """Tar paths of the named splits, in dataset.json order (dataset.json checked by `read_dataset`).

    Args:
        shards_dir: the output folder of `hnp shard`.
        splits: split names, e.g. ``["fold0"]`` or ``["fold1", "fold2", "fold3"]`` or ``["test"]``.
    """
    return read_dataset(shards_dir).split_shards(list(splits))


def index_path(tar: Path) -> Path:
    """The DALI index beside a tar: `x.tar` -> `x.idx`."""
    return tar.with_suffix(".idx")


def read_samples(tars: Sequence[Path]) -> list[SampleEntry]:
    """Every sample of the tars, in order, from their DALI index files.

    Raises HnpError naming the shard (and the sample key) when an index is missing or malformed, or when the
    tar is shorter than its index says, i.e. truncated: DALI would otherwise fail without naming the sample.
    """
    samples: list[SampleEntry] = []
    for tar in tars:
        samples.extend(read_index(Path(tar)))
    return samples


def read_index(tar: Path) -> list[SampleEntry]:
    """The samples of one tar, checked against the tar's size (see `read_samples`)."""
    idx = index_path(tar)
    if not tar.is_file():
        raise HnpError(f"{tar}: shard not found")
    if not idx.is_file():
        raise HnpError(f"{tar}: its DALI index {idx.name} is missing; re-run hnp shard")
    lines = idx.read_text().splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[1].isdigit():
        raise HnpError(f"{idx}: not a DALI webdataset index (first line {lines[0] if lines else ''!r})")
    samples = [_parse_index_line(tar, idx, number, line) for number, line in enumerate(lines[1:], start=2)]
    if len(samples) != int(header[1]):
        raise HnpError(f"{idx}: header says {header[1]} samples, the index lists {len(samples)}")
    _check_not_truncated(tar, samples)
    return samples


def _parse_index_line(tar: Path, idx: Path, number: int, line: str) -> SampleEntry:
    """One index line: `ext offset size name` per component (DALI index format v1.2)."""
    fields = line.split()
    if not fields or len(fields) % 4:
        raise HnpError(f"{idx} line {number}: expected 'ext offset size name' per component, got {line!r}")
    components: dict[str, tuple[int, int]] = {}
    for ext, offset, size in zip(fields[::4], fields[1::4], fields[2::4], strict=True):
        if not (offset.isdigit() and size.isdigit()):
            raise HnpError(f"{idx} line {number}: offset and size must be integers, got {offset!r} {size!r}")
        components[ext] = (int(offset), int(size))
    key = split_member_name(fields[3])[0]
    for required in (IMAGE_EXT, LABEL_EXT):
        if required not in components:
            raise HnpError(f"{tar}: sample {key} has no .{required} component")
    return SampleEntry(shard=tar, key=key, components=components)


def _check_not_truncated(tar: Path, samples: list[SampleEntry]) -> None:
    size = tar.stat().st_size
    for sample in samples:
        for ext, (offset, length) in sample.components.items():
            if offset + length > size:
                raise HnpError(f"{tar}: truncated at sample {sample.key} (.{ext} ends at byte {offset + length}, "
                               f"the file has {size}); re-run hnp shard or copy the shard again")


def rank_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of the samples a rank reads: contiguous parts, the formula of DALI's readers.

    Args:
        total: samples in the whole shard list.
        rank: this process's rank.
        world_size: number of ranks; part sizes differ by at most one sample.
    """
    if not 0 <= rank < world_size:
        raise HnpError(f"rank {rank} is outside 0..{world_size - 1}")
    return total * rank // world_size, total * (rank + 1) // world_size


def train_batches_per_epoch(total: int, world_size: int, batch_size: int) -> int:
    """Full batches per training epoch, equal on every rank: the smallest rank part, floored to batches.

    Equal counts keep DDP's collective calls matched; the few samples left over each epoch are read the next.
    """
    batches = (total // world_size) // batch_size
    if batches == 0:
        raise HnpError(f"{total} training samples over {world_size} rank(s) make no full batch of {batch_size}; "
                       "lower data.batch_size or use fewer ranks")
    return batches


def batch_sizes(total: int, part: int, world_size: int, batch_size: int, training: bool) -> list[int]:
    """The size of each batch a rank yields in one epoch.

    Args:
        total: samples in the whole shard list.
        part: samples of this rank (`rank_range`).
        world_size: number of ranks.
        batch_size: samples per batch.
        training: full batches, as many on every rank (`train_batches_per_epoch`); otherwise every sample of
            the part exactly once, the last batch smaller (ranks may then differ by one batch).
    """
    if training:
        return [batch_size] * train_batches_per_epoch(total, world_size, batch_size)
    full, rest = divmod(part, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def stream_seed(seed: int, rank: int, epoch: int) -> int:
    """A distinct, reproducible 31-bit seed per (run seed, rank, epoch): one rank's draws in one training epoch."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0] & 0x7FFFFFFF)
