"""Privacy end to end: the shared reduced `hnp demo` (tests/support/demo.py: an installed copy, W&B at its default,
offline; run twice), then every byte it left behind is searched for the phantom's patient and study IDs.

Searched: everything under the demo folder except the phantom (the input), W&B's own folders (WANDB_DIR, cache,
config, data), Ray's session folder (RAY_TMPDIR: worker logs included) and the captured stdout/stderr of both runs.
"""

from __future__ import annotations

import json
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from hnp.shard_format import sample_key


def _files(*folders: Path, skip: Path | None = None) -> Iterator[Path]:
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink() and (skip is None or skip not in path.parents):
                yield path


def _hits(pattern: re.Pattern[bytes], paths: list[Path], streams: dict[str, bytes]) -> list[str]:
    """'<where>: <match>' for every match, in files (raw bytes) and in the captured streams."""
    found = []
    for path in paths:
        found += [f"{path}: {m.group().decode(errors='replace')}" for m in pattern.finditer(path.read_bytes())]
    for name, data in streams.items():
        found += [f"{name}: {m.group().decode(errors='replace')}" for m in pattern.finditer(data)]
    return found


def _alternation(words: list[str]) -> re.Pattern[bytes]:
    """A bytes pattern matching any word, in UTF-8 or UTF-16-LE (as a Windows-side tool might store it)."""
    forms = {w.encode() for w in words} | {w.encode("utf-16-le") for w in words}
    return re.compile(b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


@pytest.fixture(scope="module")
def demo(installed_demo: dict) -> dict:
    """What the checks need from the shared demo run: the files searched, the streams, the input manifest."""
    out = installed_demo["out"]
    searched = [*_files(out, skip=out / "phantom"), *_files(installed_demo["wandb_home"], installed_demo["ray_tmp"])]
    runs = {name: installed_demo[name] for name in ("phantom", "first", "again")}
    streams = {f"demo {name} {stream}": getattr(run, stream) for name, run in runs.items()
               for stream in ("stdout", "stderr")}
    return {**installed_demo, "searched": searched, "streams": streams,
            "manifest": pd.read_parquet(out / "phantom" / "manifest.parquet")}


@pytest.mark.slow
def test_no_patient_or_study_id_in_any_output_byte_log_or_stream(demo: dict) -> None:
    manifest = demo["manifest"]
    ids = [*manifest["patient_id"].astype(str).unique(), *manifest["study_id"].astype(str).unique()]
    assert len(ids) >= 160 and all(len(i) >= 10 for i in ids)  # distinctive: "PT" + 8 digits, "ST" + 9 digits
    searched = demo["searched"]
    # The search really covers every stage's output, Ray's worker logs and the W&B offline runs.
    names = {str(p) for p in searched}
    for part in ("/shards/", "/runs/tiny/fold3/", "/reports/tiny/gradcam/", "/ray/session_", "/offline-run-"):
        assert any(part in name for name in names), part
    assert any(p.suffix == ".tar" for p in searched) and any(p.suffix == ".wandb" for p in searched)
    assert any(p.name.endswith(".log") or p.name.endswith(".err") for p in searched if "/ray/session_" in str(p))
    assert _hits(_alternation(ids), searched, demo["streams"]) == []
    # The search would have found one: the phantom's own manifest holds them.
    assert _hits(_alternation(ids), [demo["out"] / "phantom" / "manifest.parquet"], {})


@pytest.mark.slow
def test_pseudonym_key_is_private_and_nowhere_else(demo: dict) -> None:
    key = demo["out"] / "shards" / "pseudonym.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = key.read_bytes().strip()
    assert len(secret) >= 16
    others = [p for p in demo["searched"] if p != key]
    assert _hits(re.compile(re.escape(secret)), others, demo["streams"]) == []


@pytest.mark.slow
def test_wandb_offline_runs_hold_metrics_only(demo: dict) -> None:
    out = demo["out"]
    runs = sorted(out.rglob("offline-run-*")) + sorted(demo["wandb_home"].rglob("offline-run-*"))
    # Default mode is offline: one run per fold, plus the evaluation's run in the experiment group.
    assert len(runs) >= 5, runs
    files = [p for run in runs for p in run.rglob("*") if p.is_file()]
    assert not [run for run in runs if (run / "files" / "code").exists()]
    # wandb always makes an empty tmp/code folder; nothing may be saved in it.
    assert not [p for run in runs for p in run.rglob("*") if p.is_file() and "code" in p.relative_to(run).parts]
    assert not [p for p in files if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".npy", ".py", ".parquet"}]
    assert not [p for p in files if p.name in {"diff.patch", "requirements.txt", "wandb-metadata.json"}
                and "git" in p.read_text(errors="replace")]
    records = b"".join(p.read_bytes() for p in files if p.suffix == ".wandb")
    assert b"val/auc" in records  # the metrics are there ...
    assert b"image-file" not in records and b"images/separated" not in records  # ... and no logged image
    # Nothing that identifies a patient or a radiograph: no pseudonym, no sample key.
    dataset = json.loads((out / "shards" / "dataset.json").read_text())
    first = dataset["splits"]["test"]["shards"][0]["file"]
    with tarfile.open(out / "shards" / first) as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    words = [m["patient"] for m in metas] + [sample_key(m["row"]) for m in metas]
    assert words and _hits(_alternation(words), files, {}) == []
