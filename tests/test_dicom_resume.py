"""An interrupted `hnp import-dicom`, run again, converts only what it had not, and ends as an uninterrupted run.

Two interruptions: Ctrl-C (SIGINT to the whole process group, 2 worker processes), and crashes, simulated in the
library: an exception after some files, then the journal's last line cut in half and a stray image left behind, as
a kill during a write would leave them; then a second crash of the resumed run, and a third run to the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from support.dicom import write_labels, write_phantom_export
from support.processes import interruptible

import ingest.importer
from hnp.errors import HnpError
from ingest.convert import ConvertSettings
from ingest.importer import ImportOptions, import_dicom
from ingest.journal import JOURNAL_DIR
from phantom.generate import PhantomConfig, generate

REPO = Path(__file__).resolve().parents[1]
HNP = "import sys; from hnp.cli import main; sys.exit(main(sys.argv[1:]))"


def _export(root: Path, patients: int, size: tuple[int, int]) -> tuple[Path, Path]:
    generate(PhantomConfig(out=root / "phantom", patients=patients, seed=11, size=size), progress=False)
    phantom = write_phantom_export(root / "phantom", root / "export",
                                   encodings=("mono1_12bit", "rle_signed_16bit", "j2k_lossless_16bit"))
    return root / "export", write_labels(phantom, root / "labels.csv")


def _content(out: Path) -> list[tuple]:
    """The manifest with each image's bytes in place of its name (names differ between runs), in a fixed order."""
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    images = [hashlib.sha256((out / p).read_bytes()).hexdigest() for p in manifest.pop("image_path")]
    return sorted(zip(images, *[manifest[c] for c in manifest], strict=True))


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    export, labels = _export(root, patients=6, size=(128, 100))
    options = ImportOptions(src=export, out=root / "clean", labels=labels, progress=False)
    summary = import_dicom(options)
    return {"root": root, "export": export, "labels": labels, "clean": _content(root / "clean"),
            "files": summary.files}


def crash_after(files: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next import converts `files` files, then dies."""
    convert, calls = ingest.importer.convert_file, []

    def convert_then_crash(job):
        if len(calls) == files:
            raise RuntimeError("power cut")
        calls.append(job.source)
        return convert(job)

    monkeypatch.setattr(ingest.importer, "convert_file", convert_then_crash)


def test_a_crashed_import_continues_from_its_journal(small_export: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    options = ImportOptions(src=small_export["export"], out=out, labels=small_export["labels"], progress=False)
    crash_after(6, monkeypatch)
    with pytest.raises(RuntimeError, match="power cut"):
        import_dicom(options)
    monkeypatch.undo()
    journal = out / JOURNAL_DIR / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6 and not (out / "manifest.csv").exists()
    journal.write_bytes(b"".join(lines[:5]) + lines[5][:20])  # the sixth record cut by the crash
    (out / "images" / "0000099.jpg").write_bytes(b"half an image")  # a write the crash interrupted
    complete = [json.loads(line)["image"] for line in lines[:5]]
    kept = {image: (out / image).stat().st_mtime_ns for image in complete if image}
    assert len(kept) >= 3

    crash_after(3, monkeypatch)  # and again, once the resumed run has appended three records of its own
    with pytest.raises(RuntimeError, match="power cut"):
        import_dicom(options)
    monkeypatch.undo()

    summary = import_dicom(options)

    assert summary.converted == small_export["files"] - 5 - 3  # no complete record was redone
    assert _content(out) == small_export["clean"]
    assert not (out / JOURNAL_DIR).exists() and not (out / "images" / "0000099.jpg").exists()
    assert {image: (out / image).stat().st_mtime_ns for image in kept} == kept  # their images were not rewritten


def test_a_file_changed_since_its_record_is_converted_again(small_export: dict, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    options = ImportOptions(src=small_export["export"], out=out, labels=small_export["labels"], progress=False)
    convert, calls = ingest.importer.convert_file, []

    def convert_some(job):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job.source)
        return convert(job)

    monkeypatch.setattr(ingest.importer, "convert_file", convert_some)
    with pytest.raises(KeyboardInterrupt):
        import_dicom(options)
    monkeypatch.undo()
    changed = small_export["export"] / calls[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))

    summary = import_dicom(options)

    assert summary.converted == small_export["files"] - 2
    assert _content(out) == small_export["clean"]


def test_resuming_with_other_settings_is_refused(small_export: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    options = ImportOptions(src=small_export["export"], out=out, progress=False)
    monkeypatch.setattr(ingest.importer, "convert_file", lambda job: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        import_dicom(options)
    monkeypatch.undo()
    other = ImportOptions(src=small_export["export"], out=out, settings=ConvertSettings(keep_burned_in=True))
    with pytest.raises(HnpError, match=r"unfinished import with other settings \(keep_burned_in\)"):
        import_dicom(other)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_a_rerun_finishes(tmp_path: Path) -> None:
    export, labels = _export(tmp_path, patients=60, size=(512, 400))
    argv = [sys.executable, "-c", HNP, "import-dicom", str(export), "--labels", str(labels), "--workers", "2",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean = subprocess.run([*argv, "--out", str(tmp_path / "clean")], cwd=REPO, env=env, capture_output=True,
                           timeout=600, check=False)
    assert clean.returncode == 0, clean.stderr.decode()[-2000:]
    files = len([p for p in export.rglob("*") if p.is_file()])
    out = tmp_path / "out"
    # A session of its own, so that the signal goes to the whole group as a terminal's Ctrl-C does, with SIGINT's
    # default action as in a terminal (`interruptible`: the import ran to the end when pytest itself ran in the
    # background); niced, so that on a loaded machine this test is not starved while the import finishes.
    run = subprocess.Popen(["nice", "-n", "19", *argv, "--out", str(out)], cwd=REPO, env=env,
                           start_new_session=True, preexec_fn=interruptible, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while (not (out / "images").is_dir() or len(list((out / "images").iterdir())) < 5) and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert run.poll() is None, "the import finished before the test could interrupt it"
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr.decode()[-2000:]
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    records = [json.loads(line) for line in (out / JOURNAL_DIR / "journal.jsonl").read_bytes().splitlines()]
    journaled = len(records)
    assert 0 < journaled < files
    # the workers finished the files in hand (Ctrl-C is the driver's), and the driver journaled them all: no image
    # without its record
    assert sorted(f"images/{p.name}" for p in (out / "images").iterdir()) == sorted(r["image"] for r in records
                                                                                    if r["image"])

    rerun = subprocess.run([*argv, "--out", str(out)], cwd=REPO, env=env, capture_output=True, timeout=600,
                           check=False)

    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert f"({journaled:,} from the interrupted run)" in rerun.stdout.decode()
    assert _content(out) == _content(tmp_path / "clean")
