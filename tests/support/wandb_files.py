"""Read what W&B wrote offline: the records of a `run-*.wandb` file, once the run is complete."""

from __future__ import annotations

import struct
import time
from pathlib import Path

BLOCK = 32 * 1024


def read_wandb_records(path: Path) -> list:
    """Decode a `run-*.wandb` file: a 7-byte header, then LevelDB-log framing (32 KiB blocks, 7-byte record
    headers: crc32, length, type full/first/middle/last) of wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    records, chunks, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += BLOCK - pos % BLOCK
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last: a whole record is assembled
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def completed_run_records(folder: Path, timeout: float = 60.0) -> list:
    """The records of the one offline run under `folder/wandb`, once its closing exit record is written: wandb
    0.31's service writes the file after `finish()` returns, later still on a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        files = list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) <= 1, files
        records = read_wandb_records(files[0]) if files else []
        if any(record.HasField("exit") for record in records):
            return records
        assert time.monotonic() < deadline, f"no completed offline run under {folder / 'wandb'} within {timeout} s"
        time.sleep(0.2)
