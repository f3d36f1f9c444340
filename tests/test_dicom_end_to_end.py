"""The whole path from a DICOM folder, through the real CLI: import-dicom -> validate -> shard -> train (tiny) -> eval.

The export holds phantom DX files in every encoding of `support.dicom.ENCODINGS`, a few files that are not lumbar
radiographs, and a patient without an MRI read. Checked: every file accounted for, the manifest passes validate, the
shards hold exactly the imported images with their labels, the report has numbers, and no patient ID, study UID or
date of the DICOM headers is left in the shards, the run or the report.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from support.dicom import pydicom_test_files, write_labels, write_phantom_export

from hnp.cli import main
from hnp.levels import LEVEL_COLUMNS, LEVELS
from ingest import reasons
from phantom.generate import PhantomConfig, generate


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Ray's session folder of its own (short: Ray's unix sockets allow 107 bytes of path)."""
    folder = Path(tempfile.mkdtemp(prefix="hnpray", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _shard_samples(shards: Path) -> list[tuple]:
    """(split is test, age, view, labels) of every sample in the shards."""
    dataset = json.loads((shards / "dataset.json").read_text())
    samples = []
    for split, record in dataset["splits"].items():
        for shard in record["shards"]:
            with tarfile.open(shards / shard["file"]) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        meta = json.load(tar.extractfile(member))
                        samples.append((split == "test", float(meta["age"]), meta["view"], tuple(meta["labels"])))
    return samples


@pytest.mark.slow
def test_dicom_folder_to_report(tmp_path: Path, ray_tmpdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(PhantomConfig(out=tmp_path / "phantom", patients=40, seed=2, size=(128, 100), prevalence="balanced",
                           test_fraction=0.25), progress=False)
    export = tmp_path / "export"
    phantom = write_phantom_export(tmp_path / "phantom", export)
    unread = phantom["patient_id"].iloc[0]
    write_labels(phantom[phantom["patient_id"] != unread], tmp_path / "labels.csv")
    for name in ("CT_small.dcm", "JPEG2000.dcm", "dicomdirtests/77654033/CR1/6154", "README.txt"):
        shutil.copy(pydicom_test_files() / name, export / Path(name).name)
    data, shards, run, report = (tmp_path / name for name in ("data", "shards", "run", "report"))

    assert main(["import-dicom", str(export), "--out", str(data), "--labels", str(tmp_path / "labels.csv"),
                 "--test-from", "2020-03-01", "--workers", "2", "--no-progress"]) == 0
    assert main(["validate", str(data / "manifest.csv"), "--workers", "2"]) == 0
    assert main(["shard", "--manifest", str(data / "manifest.parquet"), "--out", str(shards), "--workers", "2",
                 "--shard-size", "1MB", "--no-progress"]) == 0
    assert main(["train", "--config", "tiny", "--shards", str(shards), "--out", str(run),
                 "--set", "data.image_size=64", "--set", "train.epochs=1", "--set", "wandb.mode=off"]) == 0
    assert main(["eval", "--run", str(run), "--shards", str(shards), "--out", str(report), "--gradcam-top", "2"]) == 0

    manifest = pd.read_csv(data / "manifest.csv", dtype={"patient_id": str})
    skipped = pd.read_csv(data / "skipped.csv")
    inputs = [p for p in export.rglob("*") if p.is_file()]
    assert len(manifest) + len(skipped) == len(inputs)
    assert Counter(skipped["reason"]) == {reasons.NO_MRI: int((phantom["patient_id"] == unread).sum()),
                                          reasons.NOT_RADIOGRAPH: 2, reasons.NOT_LUMBAR: 1, reasons.NOT_DICOM: 1}
    assert len(manifest) == len(phantom) - (phantom["patient_id"] == unread).sum()
    assert (manifest["split"] == "test").any() and (manifest["split"] == "train").any()
    # the shards hold every imported image once, with its split, age, view and labels
    dataset = json.loads((shards / "dataset.json").read_text())
    assert dataset["rows"] == {"manifest": len(manifest), "sharded": len(manifest), "excluded": 0}
    expected = [(row.split == "test", float(row.age), row.view, tuple(int(getattr(row, c)) for c in LEVEL_COLUMNS))
                for row in manifest.itertuples()]
    assert sorted(_shard_samples(shards)) == sorted(expected)
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    assert all(0.0 <= metrics[level]["precision"] <= 1.0 for level in LEVELS)
    assert sum(metrics[level]["roc_auc"] is not None for level in LEVELS) >= 3
    assert all(metrics[level]["n"] == manifest.loc[manifest["split"] == "test", "patient_id"].nunique()
               for level in LEVELS)
    assert (report / "report.md").read_text().startswith("# Evaluation")
    assert "imported" in capsys.readouterr().out
    # past the manifest, no patient ID, study UID or X-ray date of the DICOM files remains (shard pseudonymizes)
    words = {*manifest["patient_id"], *manifest["study_id"], *manifest["xray_date"], *manifest["mri_date"]}
    downstream = [p for folder in (shards, run, report) for p in folder.rglob("*") if p.is_file()]
    assert len(downstream) > 20 and any(p.suffix == ".tar" for p in downstream)
    assert [p for p in downstream if any(w.encode() in p.read_bytes() for w in words)] == []
