"""A disk that fills up while `hnp phantom`, `hnp shard`, `hnp eval` and `hnp import-dicom` write: each stops with
one line that names the file it could not write and says what to do, never a traceback; phantom, shard and eval
leave no half-written file behind (on a full disk those hold the space the rerun needs; the import's rerun removes
an image without its journal record); and once there is room, the same command finishes.

The full disk is the file size limit of `ulimit -f` (RLIMIT_FSIZE), set in the subprocess that runs `hnp` and
inherited by its workers: a write past it fails as a write to a full disk does, with EFBIG ("File too large") where
a full disk gives ENOSPC ("No space left on device"); both are in `hnp.files.STORAGE_FULL`.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.dicom import write_labels, write_phantom_export
from support.processes import interruptible

from hnp.cli import main
from hnp.demo import DemoPaths, add_arguments
from hnp.demo import run as run_demo
from hnp.errors import HnpError
from hnp.files import atomic_write_bytes
from phantom.generate import PhantomConfig, generate
from sharding.build import ShardOptions, shard_manifest

REPO = Path(__file__).resolve().parents[1]
FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
"""
HNP = "import sys\nfrom hnp.cli import main\nsys.exit(main(sys.argv[1:]))\n"
ADVICE = "cannot write: File too large; free some space, then run the same command again"


def on_a_full_disk(code: str, args: list[str], limit: int) -> subprocess.CompletedProcess:
    """Python `code` with `args` in a subprocess where no file can grow past `limit` bytes."""
    return subprocess.run([sys.executable, "-c", FULL_DISK.format(limit=limit) + code, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def hnp_on_a_full_disk(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    return on_a_full_disk(HNP, argv, limit)


def stopped_cleanly(result: subprocess.CompletedProcess, command: str) -> str:
    """The path named by the closing error line of a run that stopped for want of room."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"hnp {command}: error: (.+): {re.escape(ADVICE)}", last)
    assert found, last
    return found.group(1)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of unfinished writes (`hnp.files`, shard tars)."""
    return sorted(path for path in folder.rglob("*") if path.name.endswith(".tmp"))


def test_an_atomic_write_that_runs_out_of_room_names_its_file_and_leaves_nothing(tmp_path: Path) -> None:
    write = ("from pathlib import Path\nfrom hnp.files import atomic_write_bytes\n"
             "atomic_write_bytes(Path(sys.argv[1]), bytes(5000))\n")
    result = on_a_full_disk(write, [str(tmp_path / "big.bin")], limit=1000)
    assert f"hnp.errors.HnpError: {tmp_path / 'big.bin'}: {ADVICE}" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / "big.bin", bytes(5000))  # with room, the same write succeeds
    assert (tmp_path / "big.bin").stat().st_size == 5000


def test_a_full_disk_the_command_did_not_word_is_still_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A write outside `hnp.files` (a library's own) that meets a full disk: the output folder, what to do."""
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("phantom.generate._generate", full)
    assert main(["phantom", "--out", str(tmp_path / "out"), "--patients", "4"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hnp phantom: error: a file in {tmp_path / 'out'}: cannot write: No space left on device; free some space, "
        "then run the same command again")

    def refused(*_: object) -> None:  # not a full disk: a bug or a setup problem, whose traceback helps
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("phantom.generate._generate", refused)
    with pytest.raises(PermissionError):
        main(["phantom", "--out", str(tmp_path / "out"), "--patients", "4"])


def test_phantom_removes_what_it_wrote_and_runs_again(tmp_path: Path) -> None:
    out = tmp_path / "phantom"
    argv = ["phantom", "--out", str(out), "--patients", "12", "--size", "256x200", "--workers", "2"]
    result = hnp_on_a_full_disk(argv, limit=8 * 1024)  # the radiographs are 20-40 KB
    named = Path(stopped_cleanly(result, "phantom"))
    assert named.parent == out / "images" and named.suffix == ".jpg"
    assert list(out.iterdir()) == []  # the unfinished data set is removed: the same command can run again
    assert main(argv) == 0
    assert (out / "ceiling.json").is_file()


def test_phantom_interrupted_removes_what_it_wrote(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group, workers included) part way through the radiographs."""
    out = tmp_path / "phantom"
    process = subprocess.Popen([sys.executable, "-c", HNP, "phantom", "--out", str(out), "--patients", "2000",
                                "--size", "256x200", "--workers", "2"], cwd=REPO, start_new_session=True,
                               preexec_fn=interruptible, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "images").is_dir() or len(list((out / "images").iterdir())) < 20:
        assert process.poll() is None and time.monotonic() < deadline, "no radiographs written"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "hnp phantom: interrupted" and "Traceback" not in stderr
    assert list(out.iterdir()) == []


def test_shard_names_the_shard_removes_its_partial_file_and_the_rerun_finishes(
        make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=40, images_per_patient=2)
    key = tmp_path / "id.key"
    key.write_text("full-disk-test-secret-key")
    reference = tmp_path / "reference"
    shard_manifest(ShardOptions(manifest=manifest, out=reference, shard_bytes=64 * 2**10, id_key=key, progress=False))

    out = tmp_path / "out"
    argv = ["shard", "--manifest", str(manifest), "--out", str(out), "--id-key", str(key), "--shard-size", "64KB",
            "--workers", "2", "--no-progress"]
    named = Path(stopped_cleanly(hnp_on_a_full_disk(argv, limit=24 * 1024), "shard"))
    assert named.suffix == ".tar" and named.parent.parent == out
    assert leftovers(out) == [] and not (out / "dataset.json").exists()
    assert main(argv) == 0
    assert _contents(out) == _contents(reference)


def test_eval_names_the_file_and_a_rerun_gives_the_report(trained_world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--run", str(trained_world["run"]), "--shards", str(trained_world["shards"]), "--out", str(out),
            "--gradcam-top", "2", "--bootstrap", "50", "--no-wandb"]
    named = Path(stopped_cleanly(hnp_on_a_full_disk(argv, limit=64 * 1024), "eval"))
    assert named.parent == out  # the first file over 64 KB: a figure
    assert leftovers(out) == [] and not (out / "metrics.json").exists()  # unfinished, and it shows
    assert main(argv) == 0
    assert (out / "metrics.json").is_file() and leftovers(out) == []


def test_import_dicom_names_the_image_and_the_rerun_finishes(tmp_path: Path) -> None:
    generate(PhantomConfig(out=tmp_path / "phantom", patients=6, size=(512, 400)), progress=False)
    export = write_phantom_export(tmp_path / "phantom", tmp_path / "export", encodings=("mono2_8bit",))
    argv = ["import-dicom", str(tmp_path / "export"), "--labels", str(write_labels(export, tmp_path / "labels.csv")),
            "--out", str(tmp_path / "out"), "--workers", "2", "--no-progress"]
    named = Path(stopped_cleanly(hnp_on_a_full_disk(argv, limit=4 * 1024), "import-dicom"))
    assert named.parent == tmp_path / "out" / "images" and named.suffix == ".jpg"
    assert main(argv) == 0
    assert (tmp_path / "out" / "manifest.csv").is_file()


def test_the_demo_makes_again_a_phantom_that_a_kill_left_unfinished(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL gives `hnp phantom` no chance to clean up: the demo's rerun must not stop at its leftovers."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path)])
    paths = DemoPaths(tmp_path)
    (paths.phantom / "images").mkdir(parents=True)
    (paths.phantom / "images" / "p000000_0.jpg").write_bytes(b"\xff\xd8 half a radiograph")
    (paths.phantom / "manifest.parquet").write_bytes(b"PAR1")  # written before the truth: not yet finished
    ran: list[str] = []

    def stage(name: str, argv: list[str], verbose: bool) -> float:
        ran.append(name)
        if name == "phantom":
            assert not paths.phantom.exists() or not any(paths.phantom.iterdir()), "leftovers not removed"
        raise HnpError("stop after the first stage")

    monkeypatch.setattr("hnp.demo._run_stage", stage)
    with pytest.raises(HnpError):
        run_demo(args)
    assert ran == ["phantom"]


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
