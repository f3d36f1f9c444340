"""A real kill: `hnp shard` runs in a subprocess (2 worker processes), its whole process group gets SIGKILL once
two shards are finished and recorded in the ledger, and a second run must keep the finished shards, redo the
rest and end with the bytes of an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sharding.build import ShardOptions, shard_manifest
from sharding.shards import read_ledger

REPO = Path(__file__).resolve().parents[1]

# Runs `hnp shard` with each shard's write slowed down (after the tar is complete, before it is renamed), so the
# kill lands mid-run and likely while a `.tmp` file exists. Forked workers inherit the patch.
SLOW_SHARD = """
import sys, time
sys.path.insert(0, {repo!r})
import sharding.shards as shards
write_tar = shards._write_tar
def slow_write_tar(*args, **kwargs):
    result = write_tar(*args, **kwargs)
    time.sleep(0.3)
    return result
shards._write_tar = slow_write_tar
import argparse
from sharding import shard_cli
parser = argparse.ArgumentParser()
shard_cli.add_arguments(parser)
sys.exit(shard_cli.run(parser.parse_args(sys.argv[1:])))
"""

SHARD_BYTES = 12 * 1024


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _finished_tars(out: Path) -> list[Path]:
    return sorted(out.glob("*/*.tar"))


def _kill_after_two_recorded_shards(script: Path, manifest: Path, out: Path, key: Path) -> None:
    command = [sys.executable, str(script), "--manifest", str(manifest), "--out", str(out), "--id-key", str(key),
               "--shard-size", f"{SHARD_BYTES}B", "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(read_ledger(out)) < 2:
        assert process.poll() is None, f"shard run ended before the kill: {process.stderr.read().decode()}"
        assert time.monotonic() < deadline, "two shards were not recorded within 120 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its worker processes, as an OOM kill or node loss
    process.wait()
    process.stderr.close()


def test_killed_run_resumes_to_identical_bytes(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=40, images_per_patient=2)
    key = tmp_path / "id.key"
    key.write_text("resume-test-secret-key")
    reference = tmp_path / "reference"
    shard_manifest(ShardOptions(manifest=manifest, out=reference, shard_bytes=SHARD_BYTES, id_key=key,
                                progress=False))

    script = tmp_path / "slow_shard.py"
    script.write_text(SLOW_SHARD.format(repo=str(REPO)))
    out = tmp_path / "out"
    _kill_after_two_recorded_shards(script, manifest, out, key)
    assert not (out / "dataset.json").exists()  # an interrupted run is visibly incomplete
    finished = _finished_tars(out)
    total = len(list(reference.glob("*/*.tar")))
    assert 2 <= len(finished) < total
    # damage a recorded shard: the resume must notice (sha256) and write it again
    damaged = out / f"{sorted(read_ledger(out))[0]}.tar"
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    recorded = set(read_ledger(out)) - {f"{damaged.parent.name}/{damaged.stem}"}

    summary = shard_manifest(ShardOptions(manifest=manifest, out=out, shard_bytes=SHARD_BYTES, id_key=key,
                                          progress=False))
    assert summary.shards_kept == len(recorded) >= 1  # every recorded shard but the damaged one
    assert summary.shards_written == total - summary.shards_kept
    assert _hashes(out) == _hashes(reference)
    assert not list(out.rglob("*.tmp"))
