"""`hnp import-dicom` on one mixed export, as a user runs it (a subprocess, 2 workers, with MRI labels):

- DX files written from phantom radiographs in every encoding of `support.dicom.ENCODINGS`;
- every DICOM file pydicom ships (many vendors and encodings, some broken on purpose), as shipped;
- some of them rewritten as lumbar DX images, so that their real pixel data reaches the decoders;
- odd files (empty, a pipe, a broken link, a cut file, a duplicate, burned-in, chest, for processing, MPEG2, ...).

Every input file must end in the manifest or in skipped.csv with the reason the fixture expects; the manifest must pass
`hnp validate` and agree with the phantom's truth; and no header value may appear in any output byte or console line.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.uid import DigitalXRayImageStorageForProcessing, generate_uid
from support.dicom import (
    REAL_FILE_REASONS,
    RELABELLED_REAL_FILES,
    PatientHeader,
    dx_dataset,
    expected_display,
    header_values,
    pydicom_test_files,
    relabel_as_lumbar_dx,
    study_uid,
    write_labels,
    write_phantom_export,
)

from hnp.cli import main
from hnp.levels import LEVEL_COLUMNS
from hnp.schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from ingest import reasons
from phantom.generate import PhantomConfig, generate
from sharding.manifest import validate_manifest

REPO = Path(__file__).resolve().parents[1]
HNP = "import sys; from hnp.cli import main; sys.exit(main(sys.argv[1:]))"
MIN_SEARCHED = 5  # shorter header values ("M", "16", "054Y") occur in any file by chance


def hnp(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    """`hnp ARGV` in a fresh interpreter, as a user runs it; stdout and stderr captured (children's included)."""
    return subprocess.run([sys.executable, "-c", HNP, *argv], cwd=REPO, capture_output=True, timeout=timeout,
                          check=False, env={**os.environ, "PYTHONPATH": str(REPO)})


def _special_files(export: Path, phantom: pd.DataFrame) -> dict[str, str | None]:
    """Odd files next to the phantom ones; what each must become."""
    first = phantom.iloc[0]
    pixels = np.full((64, 48), 100, np.uint8)
    pixels[10:50, 10:40] = 180
    patient = phantom["patient_id"].iloc[-1]

    def dx(name: str, encoding: str = "mono2_12bit_rescale", **changes) -> str:
        header = PatientHeader(patient_id=patient, study_uid=generate_uid(), study_date=dt.date(2019, 1, 5), age=40)
        fields = {k: changes.pop(k) for k in list(changes) if k in PatientHeader.__dataclass_fields__}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd_values.dcm: pydicom warns of the invalid value, as it should
            ds = dx_dataset(pixels, encoding, PatientHeader(**(header.__dict__ | fields)))
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        source = f"special/{name}"
        (export / source).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(export / source, implicit_vr=False, little_endian=True, enforce_file_format=True)
        return source

    expected = {
        dx("burned_in.dcm", burned_in=True): reasons.BURNED_IN,
        dx("odd_values.dcm", burned_in=True, body_part="lumbar spine (l4-l5)"): reasons.BURNED_IN,  # not a CS value
        dx("chest.dcm", body_part="CHEST", StudyDescription="CHEST PA", SeriesDescription="PA"): reasons.NOT_LUMBAR,
        dx("ct.dcm", modality="CT"): reasons.NOT_RADIOGRAPH,
        dx("processing.dcm", SOPClassUID=DigitalXRayImageStorageForProcessing): reasons.FOR_PROCESSING,
        dx("no_patient.dcm", patient_id=""): reasons.NO_PATIENT_ID,
        dx("two_frames.dcm", NumberOfFrames=2): reasons.MULTI_FRAME,
        dx("no_date.dcm", StudyDate=None, SeriesDate=None, AcquisitionDate=None): reasons.NO_DATE,
        dx("no_age.dcm", age=None): reasons.NO_AGE,
        dx("minor.dcm", age=16): reasons.AGE_OUT_OF_RANGE,
    }
    mpeg = dx("mpeg2.dcm", "rle_mono1_12bit")
    ds = dcmread(export / mpeg)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.save_as(export / mpeg, enforce_file_format=True)
    expected[mpeg] = f"{reasons.UNSUPPORTED_SYNTAX}: MPEG2 Main Profile / Main Level"
    shutil.copy(export / first["source"], export / "special/copy_of_first.dcm")
    expected["special/copy_of_first.dcm"] = f"{reasons.DUPLICATE} (same as {first['source']})"
    data = (export / first["source"]).read_bytes()
    (export / "junk").mkdir()
    (export / "junk/cut.dcm").write_bytes(data[: len(data) * 2 // 3])
    (export / "junk/empty.dcm").write_bytes(b"")
    (export / "junk/notes.txt").write_text("exported 2024-05-02 by the PACS\n")
    os.mkfifo(export / "junk/pipe")
    (export / "junk/gone.dcm").symlink_to(export / "junk/nowhere.dcm")
    expected |= {"junk/cut.dcm": reasons.TRUNCATED, "junk/empty.dcm": reasons.NOT_DICOM,
                 "junk/notes.txt": reasons.NOT_DICOM, "junk/pipe": reasons.NOT_A_FILE, "junk/gone.dcm": reasons.MISSING}
    return expected


def _labels(phantom: pd.DataFrame, path: Path) -> tuple[str, str]:
    """The phantom's reads, except: the first patient's read moved to 91 days after the X-ray, the second patient's
    read left out, and a second, later read with other labels for the third. Returns the first two patients."""
    write_labels(phantom, path)
    reads = pd.read_csv(path, dtype={"patient_id": str})
    patients = reads["patient_id"].tolist()
    xray = phantom.set_index("patient_id")["xray_date"].groupby(level=0).first()
    reads.loc[0, "mri_date"] = (pd.Timestamp(xray[patients[0]]) + pd.Timedelta(days=91)).strftime("%Y-%m-%d")
    later = reads.iloc[[2]].assign(mri_date=(pd.Timestamp(xray[patients[2]]) + pd.Timedelta(days=200)).strftime(
        "%Y-%m-%d"), **{c: 1 - reads.loc[2, c] for c in LEVEL_COLUMNS})
    pd.concat([reads.drop(index=1), later]).to_csv(path, index=False)
    return patients[0], patients[1]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dicom-import")
    generate(PhantomConfig(out=root / "phantom", patients=12, seed=5, size=(128, 100), prevalence="balanced",
                           test_fraction=0.3), progress=False)
    export = root / "export"
    phantom = write_phantom_export(root / "phantom", export)
    too_far, unread = _labels(phantom, root / "labels.csv")
    expected: dict[str, str | None] = {}
    for source, patient in zip(phantom["source"], phantom["patient_id"], strict=True):
        expected[source] = {too_far: reasons.NO_MRI_NEAR, unread: reasons.NO_MRI}.get(patient)
    expected |= _special_files(export, phantom)
    for name, reason in RELABELLED_REAL_FILES.items():
        relabel_as_lumbar_dx(name, export / "relabelled" / name, patient_id="PHI-REAL-00001")
        expected[f"relabelled/{name}"] = reason or reasons.NO_MRI  # decoded, but this patient has no MRI read
    shutil.copytree(pydicom_test_files(), export / "pydicom")
    run = hnp("import-dicom", str(export), "--out", str(root / "out"), "--labels", str(root / "labels.csv"),
              "--test-from", "2020-03-01", "--workers", "2")
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    out = root / "out"
    return {"root": root, "export": export, "out": out, "phantom": phantom, "expected": expected, "run": run,
            "manifest": pd.read_csv(out / "manifest.csv", dtype={"patient_id": str}),
            "skipped": pd.read_csv(out / "skipped.csv")}


def test_every_input_file_is_imported_or_skipped_with_its_reason(imported: dict) -> None:
    export, expected, skipped = imported["export"], imported["expected"], imported["skipped"]
    inputs = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if not p.is_dir())
    by_source = dict(zip(skipped["source"], skipped["reason"], strict=True))
    assert len(by_source) == len(skipped)  # no file skipped twice
    assert set(by_source) <= set(inputs)
    # the controlled files: exactly the expected reason, and the rest imported
    controlled = {s: by_source.get(s) for s in expected}
    assert controlled == expected
    imported_files = [s for s in inputs if s not in by_source]
    assert sorted(imported_files) == sorted(s for s, r in expected.items() if r is None)
    assert len(imported["manifest"]) == len(imported_files)
    # every file pydicom ships is skipped (none is a lumbar radiograph), for a reason; a sample, exactly
    shipped = [s for s in inputs if s.startswith("pydicom/")]
    assert len(shipped) > 150 and all(s in by_source for s in shipped)
    assert {name: by_source[f"pydicom/{name}"] for name in REAL_FILE_REASONS} == REAL_FILE_REASONS
    summary = imported["run"].stdout.decode()
    assert f"{len(inputs):,} files: {len(imported_files):,} imported, {len(skipped):,} skipped" in summary
    assert not (imported["out"] / ".import").exists()  # the journal is gone once the outputs are written


def test_manifest_passes_validate_and_agrees_with_the_phantom(imported: dict) -> None:
    manifest, phantom = imported["manifest"], imported["phantom"]
    check = validate_manifest(imported["out"] / "manifest.csv", workers=1)
    assert check.errors == [] and check.exclusions == {}
    assert list(manifest.columns) == [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]
    as_text = pd.read_csv(imported["out"] / "manifest.csv", dtype=str, keep_default_na=False)
    parquet = pd.read_parquet(imported["out"] / "manifest.parquet")
    assert parquet.astype(object).where(parquet.notna(), "").astype(str).equals(as_text)
    truth = phantom[[r is None for r in (imported["expected"][s] for s in phantom["source"])]]
    merged = manifest.merge(truth, on=["patient_id", "view"], suffixes=("", "_truth"), validate="one_to_one")
    assert len(merged) == len(manifest) == len(truth) > 20
    for column in ("split", "age", "sex", "xray_date", "mri_date", *LEVEL_COLUMNS):
        assert (merged[column] == merged[f"{column}_truth"]).all(), column
    assert (merged["study_id"] == merged["study_id_truth"].map(study_uid)).all()
    assert set(merged["split"]) == {"train", "test"}
    for row in merged.itertuples():
        image = cv2.imread(str(imported["out"] / row.image_path), cv2.IMREAD_UNCHANGED)
        phantom_pixels = cv2.imread(str(imported["root"] / "phantom" / row.image_path_truth), cv2.IMREAD_GRAYSCALE)
        assert image.ndim == 2
        assert np.abs(image.astype(int) - expected_display(phantom_pixels, row.encoding)).mean() < 1.5, row.encoding


def test_images_folder_holds_exactly_the_manifest_images_with_pixels_only(imported: dict) -> None:
    out = imported["out"]
    assert sorted(f"images/{p.name}" for p in (out / "images").iterdir()) == sorted(imported["manifest"]["image_path"])
    assert all(re.fullmatch(r"images/\d{7}\.jpg", p) for p in imported["manifest"]["image_path"])
    for path in (out / "images").iterdir():
        assert _segments(path.read_bytes()) <= {"SOI", "APP0", "DQT", "SOF0", "DHT", "SOS"}, path


def _segments(jpeg: bytes) -> set[str]:
    """The marker segments of a JPEG up to its scan (EXIF is APP1, comments COM)."""
    names = {0xD8: "SOI", 0xDB: "DQT", 0xC0: "SOF0", 0xC4: "DHT", 0xDA: "SOS", 0xFE: "COM"}
    found, pos = {"SOI"}, 2
    while pos + 4 <= len(jpeg):
        marker = jpeg[pos + 1]
        found.add(names.get(marker, f"APP{marker - 0xE0}" if 0xE0 <= marker <= 0xEF else hex(marker)))
        if marker == 0xDA:
            break
        pos += 2 + int.from_bytes(jpeg[pos + 2:pos + 4], "big")
    return found


def test_no_header_value_in_any_output_byte_or_console_line(imported: dict, caplog: pytest.LogCaptureFixture) -> None:
    """Every value of every input header, UTF-8 and UTF-16: nowhere in the output, except the patient and study IDs
    (and only those) in manifest.csv/.parquet, the files `hnp shard` pseudonymizes."""
    out, export = imported["out"], imported["export"]
    values, ids = set(), set()
    caplog.set_level(logging.ERROR, logger="pydicom")  # its complaints about the broken files, as this test reads
    for path in export.rglob("*"):
        if not path.is_file() or path.is_fifo():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, force=True)
                values |= {v.strip() for v in header_values(ds)}
        except Exception:  # noqa: BLE001 - a file pydicom cannot parse has no header values to leak
            continue
        ids |= {str(ds.get("PatientID", "")).strip(), str(ds.get("StudyInstanceUID", "")).strip()}
    # Not searched: values that are part of the input file names (skipped.csv names the files, by design: e.g. a
    # DICOMDIR lists "IM000008") or of the fixed reason texts (a header value "patient").
    innocent = "\n".join([*(p.relative_to(export).as_posix() for p in export.rglob("*")), *_reason_texts()])
    long_values = {v for v in values if len(v) >= MIN_SEARCHED}
    searched = {v for v in long_values if v not in innocent}
    assert len(searched) > 1000 and len(long_values - searched) < 100, sorted(long_values - searched)
    assert {"DOE^JANE^Q", "SN-99887766", "Hallym Phantom Hospital", "ACC20240001"} <= searched
    manifest_text = (out / "manifest.csv").read_text()
    parquet_text = pd.read_parquet(out / "manifest.parquet").to_csv()
    outputs = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    outputs |= {"manifest.parquet as text": parquet_text.encode(), "stdout": imported["run"].stdout,
                "stderr": imported["run"].stderr}
    assert len(outputs) > 30 and b"import-dicom" in imported["run"].stderr  # the progress bar was captured
    hits = []
    for value in searched:
        forms = {value.encode(), value.encode("utf-16-le")}
        for where, data in outputs.items():
            allowed = value in ids and ("manifest.csv" in where or "manifest.parquet" in where)
            if not allowed and any(form in data for form in forms):
                hits.append(f"{where}: {value!r}")
    assert hits == []
    # nor a message of pydicom's: they quote paths and, converting values, the values (the export has files that
    # make it complain: a cut one, junk read as a dataset)
    assert b"UserWarning" not in imported["run"].stderr and b"pydicom" not in imported["run"].stderr
    # the search finds what is there: the manifest holds the IDs it may hold
    assert all(pid in manifest_text and pid in parquet_text for pid in imported["manifest"]["patient_id"])


def _reason_texts() -> list[str]:
    return [value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)]


def test_without_labels_an_inventory_lists_what_the_export_holds(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (50, 1))
    header = PatientHeader(patient_id="PHI-MRN-00777", study_uid=generate_uid(), study_date=dt.date(2021, 7, 9),
                           age=71, sex="M", view="OBL_R")
    dx_dataset(pixels, "rle_signed_16bit", header).save_as(tmp_path / "a.dcm", enforce_file_format=True)
    cut = (pydicom_test_files() / "JPEG2000.dcm").read_bytes()
    (tmp_path / "b.dcm").write_bytes(cut[: len(cut) * 19 // 20])  # pydicom logs the path as it reads this one
    run = hnp("import-dicom", str(tmp_path), "--out", str(tmp_path / "out"), "--workers", "1")
    assert run.returncode == 0, run.stderr.decode()
    assert b"pydicom" not in run.stderr and b"Warning" not in run.stderr  # in this process too: never a word
    inventory = pd.read_csv(tmp_path / "out" / "inventory.csv", dtype={"patient_id": str})
    assert inventory.to_dict("records") == [{"patient_id": "PHI-MRN-00777", "image_path": "images/0000000.jpg",
                                             "age": 71.0, "view": "OBL_R", "sex": "M", "study_id": header.study_uid,
                                             "xray_date": "2021-07-09"}]
    assert not (tmp_path / "out" / "manifest.csv").exists()
    assert pd.read_csv(tmp_path / "out" / "skipped.csv").to_dict("records") == [
        {"source": "b.dcm", "reason": reasons.TRUNCATED}]
    assert "an inventory, not a manifest" in run.stdout.decode()


def test_a_dicomdir_imports_the_files_it_lists(tmp_path: Path) -> None:
    shutil.copytree(pydicom_test_files() / "dicomdirtests", tmp_path / "cd")
    (tmp_path / "cd" / "98892001" / "CT2N" / "6293").unlink()  # listed, but lost
    assert main(["import-dicom", str(tmp_path / "cd" / "DICOMDIR"), "--out", str(tmp_path / "out"),
                 "--any-body-part", "--workers", "1", "--no-progress"]) == 0
    inventory = pd.read_csv(tmp_path / "out" / "inventory.csv")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    # the three real CR images (MONOCHROME1, 12-bit, rescaled) are imported; the CT and MR images are not
    assert len(inventory) == 3 and len(skipped) == 31 - 3
    assert dict(zip(skipped["source"], skipped["reason"], strict=True))["98892001/CT2N/6293"] == reasons.MISSING
    assert set(skipped["reason"]) == {reasons.MISSING, reasons.NOT_RADIOGRAPH}
    assert not skipped["source"].str.contains("TINY_ALPHA|README|DICOMDIR").any()  # not listed: not inputs


def test_a_folder_that_is_not_an_import_or_holds_a_finished_one_is_refused(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")

    def refused(src: str, out: str) -> str:
        assert main(["import-dicom", str(tmp_path / src), "--out", str(tmp_path / out), "--no-progress"]) == 2
        return capsys.readouterr().err

    assert "exists and is not an empty folder" in refused("src", "busy")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    assert main(["import-dicom", str(tmp_path / "src"), "--out", str(tmp_path / "done"), "--no-progress"]) == 0
    assert "holds a finished import (inventory.csv)" in refused("src", "done")
    assert "no such folder or DICOMDIR" in refused("nowhere", "new")
