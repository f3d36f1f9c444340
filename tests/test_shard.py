from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import stat
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import wds2idx  # DALI's index tool, shipped in the nvidia-dali wheel
from support.manifests import PATIENT_ID_PREFIX

from hnp.cli import COMMANDS
from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS, LEVELS
from hnp.shard_format import SCHEMA_VERSION, read_dataset
from sharding import shard_cli, shards
from sharding.build import ShardOptions, shard_manifest
from sharding.shards import parse_byte_size, ustar_header

SPLITS = ["fold0", "fold1", "fold2", "fold3", "test"]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    shard_cli.add_arguments(parser)
    return shard_cli.run(parser.parse_args(argv))


def shard(manifest: Path, out: Path, **options) -> dict:
    """Shard with small shards (several per split) and no progress bar; returns dataset.json."""
    options = {"shard_bytes": 12 * 1024, "progress": False, **options}
    shard_manifest(ShardOptions(manifest=manifest, out=out, **options))
    return json.loads((out / "dataset.json").read_text())


def samples_of(out: Path, split: str) -> list[dict]:
    """Every sample of a split, read back with tarfile: key, json, lbl vector, jpg bytes."""
    dataset = json.loads((out / "dataset.json").read_text())
    samples = []
    for entry in dataset["splits"][split]["shards"]:
        with tarfile.open(out / entry["file"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # dicts keep tar order
        for name in members:
            key, ext = name.split(".", 1)
            if ext == "json":
                samples.append({"key": key, "meta": json.loads(members[name]), "jpg": members[f"{key}.jpg"],
                                "lbl": np.frombuffer(members[f"{key}.lbl"], "<f4")})
    return samples


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def id_key(tmp_path: Path) -> Path:
    path = tmp_path / "id.key"
    path.write_text("0123456789abcdef-test-key\n")
    return path


def test_shard_command_is_registered() -> None:
    assert COMMANDS["shard"][0] == "sharding.shard_cli"


@pytest.mark.parametrize(("text", "expected"), [("256MB", 256 * 2**20), ("1GB", 2**30), ("900kb", 900 * 1024),
                                                ("1.5 MB", int(1.5 * 2**20)), ("4096", 4096), ("10B", 10)])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-5MB", "12TB", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(HnpError, match="shard size"):
        parse_byte_size(text)


@pytest.mark.parametrize(("name", "size"), [("r0000000.jpg", 0), ("r0000001.json", 1), ("r1234567.lbl", 28),
                                            ("a" * 100, 512), ("r0000002.jpg", 10**9)])
def test_ustar_header_equals_tarfile(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "", ""
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def test_layout_samples_and_counts(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=40)
    out = tmp_path / "out"
    dataset = shard(manifest, out, workers=2)
    assert dataset["rows"] == {"manifest": 80, "sharded": 80, "excluded": 0}
    assert list(dataset["splits"]) == SPLITS
    table = pd.read_csv(manifest)
    seen_rows = []
    for split in SPLITS:
        record = dataset["splits"][split]
        assert len(record["shards"]) > 1  # small shard size: the cut really happens
        for number, entry in enumerate(record["shards"]):
            assert entry["file"] == f"{split}/{split}-{number:06d}.tar"
            assert entry["index"] == f"{split}/{split}-{number:06d}.idx"
            tar = out / entry["file"]
            assert tar.stat().st_size == entry["bytes"]
            assert hashlib.sha256(tar.read_bytes()).hexdigest() == entry["sha256"]
        samples = samples_of(out, split)
        assert record["samples"] == len(samples) == sum(e["samples"] for e in record["shards"])
        assert record["patients"] == len({s["meta"]["patient"] for s in samples})
        for sample in samples:
            row = sample["meta"]["row"]
            source = table.iloc[row]
            assert sample["key"] == f"r{row:07d}"
            assert sample["jpg"] == (manifest.parent / source["image_path"]).read_bytes()  # bytes as they are
            labels = [int(source[c]) for c in LEVEL_COLUMNS]
            assert sample["meta"]["labels"] == labels and sample["meta"]["any"] == max(labels)
            assert sample["meta"]["view"] == source["view"] and sample["meta"]["sex"] == source["sex"]
            assert sample["lbl"].tolist() == [*labels, max(labels), source["age"]]
            assert (split == "test") == (source["split"] == "test")
            seen_rows.append(row)
        positives = {level: sum(s["meta"]["labels"][i] for s in samples) for i, level in enumerate(LEVELS)}
        assert record["positives"] == {**positives, "any": sum(s["meta"]["any"] for s in samples)}
    assert sorted(seen_rows) == list(range(80))  # every row exactly once


@pytest.mark.parametrize(("folds", "seed"), [(4, 0), (3, 7)])
def test_dataset_json_records_version_levels_folds_and_seed(make_manifest: Callable[..., Path], tmp_path: Path,
                                                           folds: int, seed: int) -> None:
    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=24), out, folds=folds, seed=seed)
    assert dataset["schema_version"] == SCHEMA_VERSION == 3  # 3: the study index (multi-view fusion)
    assert dataset["levels"] == ["L1-2", "L2-3", "L3-4", "L4-5", "L5-S1"]
    assert dataset["label_vector"] == [*dataset["levels"], "any", "age"]
    assert (dataset["folds"], dataset["seed"]) == (folds, seed)
    assert list(dataset["splits"]) == [f"fold{k}" for k in range(folds)] + ["test"]
    assert read_dataset(out).folds == folds


def test_no_patient_in_two_splits(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shard(make_manifest(patients=60, images_per_patient=3), out)
    owner: dict[str, str] = {}
    for split in SPLITS:
        for sample in samples_of(out, split):
            assert owner.setdefault(sample["meta"]["patient"], split) == split


def test_samples_are_shuffled_within_a_split(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shard(make_manifest(patients=40), out, shard_bytes=2**20)
    rows = [s["meta"]["row"] for s in samples_of(out, "fold0")]
    assert rows != sorted(rows)
    other = tmp_path / "other_seed"
    shard(make_manifest(patients=40), other, shard_bytes=2**20, seed=1)
    assert [s["meta"]["row"] for s in samples_of(other, "fold0")] != rows


def test_index_files_match_dali_wds2idx(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=20), out)
    for entry in dataset["splits"]["fold1"]["shards"]:
        reference = tmp_path / "reference.idx"
        with wds2idx.IndexCreator(str(out / entry["file"]), str(reference), verbose=False) as creator:
            creator.create_index()
        assert (out / entry["index"]).read_text() == reference.read_text()


def test_readable_by_webdataset(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=20), out)
    urls = [str(out / e["file"]) for e in dataset["splits"]["fold0"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l"))
    assert len(samples) == dataset["splits"]["fold0"]["samples"]
    for sample in samples:
        meta = sample["json"]
        assert sample["__key__"] == f"r{meta['row']:07d}"
        assert sample["jpg"].ndim == 2  # decoded grayscale
        assert np.frombuffer(sample["lbl"], "<f4").tolist() == [*meta["labels"], meta["any"], meta["age"]]


def test_readable_by_dali_cpu_reader_with_our_indexes(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=20), out)
    entries = dataset["splits"]["test"]["shards"]
    total = dataset["splits"]["test"]["samples"]
    expected = {s["lbl"].tobytes() for s in samples_of(out, "test")}

    @pipeline_def(device_id=None, batch_size=total, num_threads=1)
    def pipeline():
        jpg, lbl = fn.readers.webdataset(paths=[str(out / e["file"]) for e in entries],
                                         index_paths=[str(out / e["index"]) for e in entries],
                                         ext=["jpg", "lbl"], dtypes=[types.UINT8, types.FLOAT], name="reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.GRAY), lbl

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == total
    images, labels = pipe.run()
    got = [np.asarray(labels.at(i)) for i in range(total)]
    assert all(v.dtype == np.float32 and v.shape == (7,) for v in got)
    assert {v.tobytes() for v in got} == expected
    assert np.asarray(images.at(0)).shape == (32, 24, 1)


def test_two_runs_give_identical_bytes(make_manifest: Callable[..., Path], tmp_path: Path, id_key: Path) -> None:
    manifest = make_manifest(patients=30)
    shard(manifest, tmp_path / "a", workers=1, id_key=id_key)
    shard(manifest, tmp_path / "b", workers=2, id_key=id_key)
    first, second = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert first == second
    assert "dataset.json" in first and "progress.jsonl" in first and "fold3/fold3-000000.tar" in first


def test_bytes_do_not_depend_on_the_write_buffer_or_direct_io(make_manifest: Callable[..., Path], tmp_path: Path,
                                                              id_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_manifest(patients=12)
    shard(manifest, tmp_path / "direct", id_key=id_key)
    # a buffer of one block, smaller than every image (the buffer grows), and writes through the page cache
    monkeypatch.setattr(shards, "_BUFFER", shards._ALIGN)
    monkeypatch.setattr(shards, "_O_DIRECT", 0)
    shard(manifest, tmp_path / "buffered", id_key=id_key)
    assert file_hashes(tmp_path / "direct") == file_hashes(tmp_path / "buffered")


@pytest.mark.skipif(not getattr(os, "O_DIRECT", 0), reason="O_DIRECT is Linux-only")
def test_refused_direct_writes_fall_back_to_the_page_cache(make_manifest: Callable[..., Path], tmp_path: Path,
                                                           id_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_manifest(patients=12)
    shard(manifest, tmp_path / "direct", id_key=id_key)
    write, refused = os.write, []

    def refuse_direct(fd: int, data) -> int:  # as a device with blocks larger than 4 KiB does
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return write(fd, data)

    monkeypatch.setattr(shards.os, "write", refuse_direct)
    shard(manifest, tmp_path / "fallback", id_key=id_key)
    monkeypatch.undo()
    assert refused, "the shards were not opened with O_DIRECT"
    assert file_hashes(tmp_path / "direct") == file_hashes(tmp_path / "fallback")


def test_rerun_on_finished_output_keeps_everything(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=20)
    out = tmp_path / "out"
    shard(manifest, out)
    before = file_hashes(out)
    summary = shard_manifest(ShardOptions(manifest=manifest, out=out, shard_bytes=12 * 1024, progress=False))
    assert summary.shards_written == 0 and summary.shards_kept == len(
        [name for name in before if name.endswith(".tar")])
    assert file_hashes(out) == before  # the key in out/ was reused: same pseudonyms, same bytes


def test_changed_options_replace_stale_shards(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=20)
    out = tmp_path / "out"
    shard(manifest, out, shard_bytes=4 * 1024)
    dataset = shard(manifest, out, shard_bytes=2**20)
    tars = sorted(str(p.relative_to(out)) for p in out.rglob("*.tar"))
    assert tars == sorted(e["file"] for split in dataset["splits"].values() for e in split["shards"])
    assert not list(out.rglob("*.tmp"))


def test_pseudonym_key_created_private_and_outside_tars(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shard(make_manifest(patients=10), out)
    key_file = out / "pseudonym.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes().strip()
    for tar in out.rglob("*.tar"):
        assert key not in tar.read_bytes()
    assert key not in (out / "dataset.json").read_bytes()


def test_other_key_other_pseudonyms_same_folds(make_manifest: Callable[..., Path], tmp_path: Path,
                                               id_key: Path) -> None:
    manifest = make_manifest(patients=20)
    other_key = tmp_path / "other.key"
    other_key.write_text("another-secret-key-of-enough-length")
    first = shard(manifest, tmp_path / "a", id_key=id_key)
    second = shard(manifest, tmp_path / "b", id_key=other_key)
    rows_a = {s["meta"]["row"]: s["meta"]["patient"] for s in samples_of(tmp_path / "a", "fold0")}
    rows_b = {s["meta"]["row"]: s["meta"]["patient"] for s in samples_of(tmp_path / "b", "fold0")}
    assert rows_a.keys() == rows_b.keys()  # the folds do not depend on the key
    assert not set(rows_a.values()) & set(rows_b.values())
    assert first["splits"]["fold0"]["samples"] == second["splits"]["fold0"]["samples"]


def _break_rows(manifest: Path) -> None:
    """Row 1 missing (its path embeds the patient ID, as PACS exports do), row 2 truncated, row 3 a PNG,
    row 4 X-ray and MRI 200 days apart."""
    table = pd.read_csv(manifest, dtype=str)
    table.loc[1, "image_path"] = f"img/{table.loc[1, 'patient_id']}_lost.jpg"
    truncated = manifest.parent / table.loc[2, "image_path"]
    truncated.write_bytes(truncated.read_bytes()[:100])
    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    (manifest.parent / table.loc[3, "image_path"]).write_bytes(png.tobytes())
    table["xray_date"], table["mri_date"] = "2020-01-01", "2020-02-01"
    table.loc[4, "mri_date"] = "2020-07-19"
    table.to_csv(manifest, index=False)


def test_bad_rows_are_excluded_with_reasons(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=20)
    _break_rows(manifest)
    out = tmp_path / "out"
    dataset = shard(manifest, out)
    excluded = pd.read_csv(out / "excluded.csv")
    assert list(excluded.columns) == ["row", "image_path", "reason"]
    assert excluded["row"].tolist() == [1, 2, 3, 4]
    reasons = excluded["reason"].tolist()
    assert "file not found" in reasons[0] and "truncated" in reasons[1] and "PNG" in reasons[2]
    assert "days apart" in reasons[3]
    assert PATIENT_ID_PREFIX not in excluded.to_csv()
    assert excluded["image_path"][0].startswith("img/<patient ") and excluded["image_path"][0].endswith("_lost.jpg")
    assert dataset["rows"] == {"manifest": 40, "sharded": 36, "excluded": 4}
    sharded = {s["meta"]["row"] for split in SPLITS for s in samples_of(out, split)}
    assert sharded == set(range(40)) - {1, 2, 3, 4}


def test_strict_refuses_exclusions(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=20)
    _break_rows(manifest)
    with pytest.raises(HnpError, match=r"--strict: rows would be excluded \(4\)") as err:
        run_cli(["--manifest", str(manifest), "--out", str(tmp_path / "out"), "--strict", "--no-progress"])
    assert "row 1" in str(err.value) and PATIENT_ID_PREFIX not in str(err.value)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_manifest_errors_are_refused(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=20)
    table = pd.read_csv(manifest)
    table.loc[5, "L4_5"] = 2
    table.to_csv(manifest, index=False)
    with pytest.raises(HnpError, match="the manifest has errors") as err:
        shard(manifest, tmp_path / "out")
    assert "row 5" in str(err.value) and "L4_5" in str(err.value)
    assert not list((tmp_path / "out").rglob("*.tar"))


def test_downscale_reencodes_large_images_once(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    manifest = make_manifest(patients=10, image_shape=(80, 60))
    out = tmp_path / "out"
    dataset = shard(manifest, out, max_side=40, jpeg_quality=90)
    assert dataset["image_encoding"] == {"reencoded": True, "max_side": 40, "jpeg_quality": 90}
    sample = samples_of(out, "fold0")[0]
    image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (40, 30)
    kept = shard(manifest, tmp_path / "big", max_side=100)
    assert kept["image_encoding"]["reencoded"] is False
    table = pd.read_csv(manifest)
    first = samples_of(tmp_path / "big", "fold0")[0]
    assert first["jpg"] == (manifest.parent / table["image_path"][first["meta"]["row"]]).read_bytes()


def test_no_raw_patient_id_in_any_output_byte_or_log(make_manifest: Callable[..., Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    manifest = make_manifest(patients=20)
    patients = pd.read_csv(manifest)["patient_id"].unique()
    _break_rows(manifest)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        assert run_cli(["--manifest", str(manifest), "--out", str(out), "--shard-size", "8KB", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    logs = captured.out + captured.err + caplog.text
    assert "rows: 40 in the manifest = 36 sharded + 4 excluded" in captured.out
    assert "| fold0 | No-HNP |" in captured.out
    assert PATIENT_ID_PREFIX not in logs
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert PATIENT_ID_PREFIX.encode() not in data, path
        for patient in patients:
            assert patient.encode() not in data and patient.encode("utf-16-le") not in data, path


def test_table1_file_matches_dataset(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=30), out)
    text = (out / "table1.md").read_text()
    for split in SPLITS:
        record = dataset["splits"][split]
        hnp = " | ".join(f"{record['positives'][level]:,}" for level in LEVELS)
        assert f"|  | HNP | {hnp} |" in text


def test_lbl_member_is_28_bytes_little_endian(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=8), out)
    with tarfile.open(out / dataset["splits"]["test"]["shards"][0]["file"]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".lbl"))
        data = tar.extractfile(member).read()
        meta = json.loads(io.BytesIO(tar.extractfile(member.name.replace(".lbl", ".json")).read()).read())
    assert len(data) == 28
    assert list(struct.unpack("<7f", data)) == [*meta["labels"], meta["any"], meta["age"]]


def test_no_test_rows_gives_an_empty_test_split(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    dataset = shard(make_manifest(patients=12, test_fraction=0.0), out)
    assert dataset["splits"]["test"] == {"samples": 0, "patients": 0,
                                         "positives": {**dict.fromkeys(LEVELS, 0), "any": 0}, "shards": [],
                                         "studies": {"file": "test/studies.json", "count": 0, "films": 0,
                                                     "sha256": dataset["splits"]["test"]["studies"]["sha256"]}}
    assert sum(dataset["splits"][f"fold{k}"]["samples"] for k in range(4)) == 24


def test_image_changed_before_planning_is_an_error(make_manifest: Callable[..., Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from sharding import build

    manifest = make_manifest(patients=8)
    victim = manifest.parent / pd.read_csv(manifest)["image_path"][2]
    assign_splits = build.assign_splits

    def touch_then_assign(*args, **kwargs):  # the file changes after its check, before the plan
        victim.write_bytes(victim.read_bytes()[:-2])  # its end marker gone: it would fail the check now
        return assign_splits(*args, **kwargs)

    monkeypatch.setattr(build, "assign_splits", touch_then_assign)
    with pytest.raises(HnpError, match=r"manifest row 2 \(sample r0000002\): image: file changed after"):
        shard(manifest, tmp_path / "out")


def test_image_changed_after_validation_is_an_error_without_the_path(make_manifest: Callable[..., Path],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from sharding import build

    manifest = make_manifest(patients=8)
    victim = manifest.parent / pd.read_csv(manifest)["image_path"][3]
    plan_shards = build.plan_shards

    def plan_then_touch(*args, **kwargs):  # the file changes between planning and writing
        specs = plan_shards(*args, **kwargs)
        victim.write_bytes(victim.read_bytes() + b"\0")
        return specs

    monkeypatch.setattr(build, "plan_shards", plan_then_touch)
    with pytest.raises(HnpError, match=r"manifest row 3 \(sample r0000003\): image: file changed after") as err:
        shard(manifest, tmp_path / "out")
    assert str(victim) not in str(err.value)
