from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from support.manifests import save_rows

from hnp import cli
from hnp.errors import HnpError
from sharding import manifest as manifest_module
from sharding.manifest import ManifestCheck, read_manifest, validate_manifest

# Patient ids that cannot turn up in a message by chance; image paths embed them, as PACS exports often do.
PATIENTS = [f"PHI-SECRET-{k:03d}" for k in range(4)]
LABELS = {0: (0, 0, 0, 1, 0), 1: (0, 0, 1, 1, 1), 2: (0, 0, 0, 0, 0), 3: (1, 0, 0, 0, 1)}


def _jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (24, 16), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def _good_rows(folder: Path) -> list[dict]:
    """4 patients x 2 images: patients 0-2 train (rows 0-5), patient 3 test (rows 6-7)."""
    (folder / "img").mkdir(exist_ok=True)
    rows = []
    for k, patient in enumerate(PATIENTS):
        for j in range(2):
            name = f"img/{patient}_{j}.jpg"
            (folder / name).write_bytes(_jpeg())
            labels = dict(zip(("L1_2", "L2_3", "L3_4", "L4_5", "L5_S1"), LABELS[k], strict=True))
            rows.append(
                {
                    "patient_id": patient,
                    "image_path": name,
                    "split": "test" if k == 3 else "train",
                    "age": 40 + k,
                    **labels,
                    "view": ("AP", "LAT")[j],
                    "sex": "F",
                    "study_id": f"ST{k}",
                    "xray_date": "2020-01-01",
                    "mri_date": "2020-03-31",
                }
            )
    (folder / "img" / "not_jpeg.jpg").write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    (folder / "img" / "truncated.jpg").write_bytes(_jpeg()[:150])
    return rows


def _assert_no_phi(check: ManifestCheck) -> None:
    texts = [str(p) for p in check.problems] + [check.summary(), *check.exclusions.values()]
    assert not [t for t in texts if "PHI-SECRET" in t]


def test_good_manifest_has_no_problems_and_typed_columns(tmp_path: Path) -> None:
    check = validate_manifest(save_rows(tmp_path, _good_rows(tmp_path)))
    assert check.problems == [] and check.exclusions == {}
    assert check.table["L4_5"].dtype == "int64"
    assert check.table["image_file"][0] == str((tmp_path / "img" / f"{PATIENTS[0]}_0.jpg").resolve())
    assert check.table["patient_id"][0] == PATIENTS[0]


def test_summary_counts_patients_views_and_prevalence(tmp_path: Path) -> None:
    summary = validate_manifest(save_rows(tmp_path, _good_rows(tmp_path))).summary()
    assert "8 rows, 0 excluded, 8 kept" in summary
    assert "train: 6 images of 3 patients" in summary and "test: 2 images of 1 patients" in summary
    assert "views: AP 4, LAT 4" in summary
    train_row = next(line for line in summary.splitlines() if line.startswith("train "))
    # train L4-5: patients 0 and 1 positive = 4 of 6 images; any: the same 4
    assert train_row.split() == [
        "train",
        "0",
        "(0.0%)",
        "0",
        "(0.0%)",
        "2",
        "(33.3%)",
        "4",
        "(66.7%)",
        "2",
        "(33.3%)",
        "4",
        "(66.7%)",
    ]
    assert "errors: 0" in summary and "warning" not in summary


# (case, edits {row: {column: value}}, expected (row, column, excludable), text in the reason)
BAD_ROWS = [
    ("label yes", {1: {"L3_4": "yes"}}, (1, "L3_4", False), "label 'yes' is not 0 or 1"),
    ("label 2", {1: {"L3_4": 2}}, (1, "L3_4", False), "'2' is not 0 or 1"),
    ("label -1", {5: {"L1_2": -1}}, (5, "L1_2", False), "'-1' is not 0 or 1"),
    ("label empty", {6: {"L5_S1": None}}, (6, "L5_S1", False), "label is empty"),
    ("age text", {3: {"age": "abc"}}, (3, "age", False), "'abc' is not a number"),
    ("age too high", {3: {"age": 130}}, (3, "age", False), "age 130 is outside 18-120"),
    ("age too low", {3: {"age": 17}}, (3, "age", False), "age 17 is outside 18-120"),
    ("age empty", {3: {"age": None}}, (3, "age", False), "age is empty"),
    ("split", {2: {"split": "validation"}}, (2, "split", False), "'validation' is not one of train, test"),
    ("split case", {2: {"split": "Train"}}, (2, "split", False), "'Train' is not one of"),
    ("view", {4: {"view": "lateral"}}, (4, "view", False), "'lateral' is not one of AP, LAT"),
    ("view empty", {4: {"view": None}}, (4, "view", False), "use OTHER when unknown"),
    ("patient_id empty", {4: {"patient_id": None}}, (4, "patient_id", False), "patient_id is empty"),
    ("image_path empty", {4: {"image_path": None}}, (4, "image_path", False), "image_path is empty"),
    ("image missing", {2: {"image_path": "img/gone.jpg"}}, (2, "image_path", True), "'img/gone.jpg': file not found"),
    ("image png", {2: {"image_path": "img/not_jpeg.jpg"}}, (2, "image_path", True), "not a JPEG: a PNG file"),
    ("image truncated", {2: {"image_path": "img/truncated.jpg"}}, (2, "image_path", True), "truncated JPEG"),
    (
        "duplicate image",
        {3: {"image_path": f"img/../img/{PATIENTS[1]}_0.jpg"}},
        (3, "image_path", False),
        "same image file as row 2",
    ),
    ("train and test", {1: {"split": "test"}}, (1, "split", False), "patient also has train rows (row 0)"),
    ("labels differ", {7: {"L2_3": 1}}, (7, "L2_3", False), "label 1 differs from row 6 (0) of the same patient and"),
    ("dates apart", {4: {"mri_date": "2020-04-01"}}, (4, "mri_date", True), "X-ray and MRI 91 days apart"),
    ("date unparseable", {4: {"xray_date": "31/01/2020"}}, (4, "xray_date", False), "'31/01/2020' is not an ISO date"),
]


@pytest.mark.parametrize(("edits", "expected", "text"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_each_bad_row_is_named_by_row_and_column(tmp_path: Path, edits: dict, expected: tuple, text: str) -> None:
    rows = _good_rows(tmp_path)
    for row, values in edits.items():
        rows[row].update(values)
    check = validate_manifest(save_rows(tmp_path, rows))
    assert [(p.row, p.column, p.excludable) for p in check.problems] == [expected]
    problem = check.problems[0]
    assert text in problem.reason
    row, column, excludable = expected
    assert str(problem).startswith(f"row {row} (line {row + 2} of manifest.csv), column {column}: ")
    assert (check.errors == []) == excludable
    assert check.exclusions == ({row: problem.reason} if excludable else {})
    _assert_no_phi(check)


@pytest.mark.parametrize(
    ("edits", "excluded"),
    [
        ({}, None),
        ({1: {"study_id": "ST-other", "L4_5": 0}}, None),  # another study of the same patient: another MRI read
        ({4: {"mri_date": "2020-03-31"}}, None),  # 90 days apart is within the paper's 3 months
        ({4: {"mri_date": None}}, None),  # gap unknown: allowed, counted in the summary
        ({4: {"xray_date": "2020-01-01", "mri_date": "2019-10-01"}}, 4),  # MRI before the X-ray counts too
    ],
)
def test_what_is_allowed_and_what_is_only_excluded(tmp_path: Path, edits: dict, excluded: int | None) -> None:
    rows = _good_rows(tmp_path)
    for row, values in edits.items():
        rows[row].update(values)
    check = validate_manifest(save_rows(tmp_path, rows))
    assert check.errors == []
    assert list(check.exclusions) == ([] if excluded is None else [excluded])


def test_without_study_id_labels_must_agree_per_patient(tmp_path: Path) -> None:
    rows = _good_rows(tmp_path)
    for row in rows:
        del row["study_id"]
    rows[1]["L4_5"] = 0
    check = validate_manifest(save_rows(tmp_path, rows))
    assert [(p.row, p.column) for p in check.problems] == [(1, "L4_5")]
    assert "of the same patient" in check.problems[0].reason


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    rows = _good_rows(tmp_path)
    for _, edits, _, _ in BAD_ROWS:
        for row, values in edits.items():
            rows[row].update(values)
    rows[0]["age"] = "old"
    check = validate_manifest(save_rows(tmp_path, rows))
    # Every edited cell holds its last planted value; each bad cell is one problem, in row order. Not reported:
    # row 3's image (it points at row 2's original image, but row 2 now points at truncated.jpg) and row 4's date
    # gap (its X-ray date does not parse).
    assert [(p.row, p.column) for p in check.problems] == [
        (0, "age"), (1, "L3_4"), (1, "split"), (2, "split"), (2, "image_path"), (3, "age"), (4, "patient_id"),
        (4, "image_path"), (4, "view"), (4, "xray_date"), (5, "L1_2"), (6, "L5_S1"), (7, "L2_3"),
    ]
    assert [p.row for p in check.problems if p.excludable] == [2]  # the truncated JPEG; the rest are errors
    _assert_no_phi(check)


def test_patient_id_inside_a_quoted_value_is_redacted(tmp_path: Path) -> None:
    rows = _good_rows(tmp_path)
    rows[0]["image_path"] = f"img/{PATIENTS[0]}_missing.jpg"
    check = validate_manifest(save_rows(tmp_path, rows))
    assert check.problems[0].reason == "image 'img/<patient_id>_missing.jpg': file not found"


@pytest.mark.parametrize(
    ("column", "misspelled"),
    [("L4_5", "L4-5"), ("L4_5", "l4_5"), ("patient_id", "patientid"), ("age", "Age"), ("image_path", "image path")],
)
def test_misspelled_column_gets_a_suggestion(tmp_path: Path, column: str, misspelled: str) -> None:
    rows = [{(misspelled if k == column else k): v for k, v in row.items()} for row in _good_rows(tmp_path)]
    check = validate_manifest(save_rows(tmp_path, rows))
    missing = [p for p in check.errors if p.row is None]
    assert [(p.column, p.kind) for p in missing] == [(column, "missing column")]
    assert f"the manifest has {misspelled!r}, did you mean {column}?" in missing[0].reason
    assert str(missing[0]).startswith(f"manifest.csv, column {column}: required column")


def test_missing_columns_without_lookalike_and_misspelled_optional_column(tmp_path: Path) -> None:
    rows = [
        {k: v for k, v in row.items() if k not in ("age", "split", "view")} | {"veiw": "AP"}
        for row in _good_rows(tmp_path)
    ]
    check = validate_manifest(save_rows(tmp_path, rows))
    assert [(p.row, p.column) for p in check.problems] == [(None, "split"), (None, "age")]
    assert "did you mean" not in check.problems[0].reason
    assert check.ignored_columns == {"veiw": " (did you mean view?)"}
    assert "ignored column 'veiw' (did you mean view?)" in check.summary()


def test_empty_manifest_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    pd.DataFrame(columns=list(_good_rows(tmp_path)[0])).to_csv(path, index=False)
    check = validate_manifest(path)
    assert [(p.row, p.reason) for p in check.errors] == [(None, "the manifest has no rows")]
    assert "warning: no test rows" in check.summary()


def test_no_test_rows_is_a_warning_not_an_error(tmp_path: Path) -> None:
    rows = [row for row in _good_rows(tmp_path) if row["split"] == "train"]
    check = validate_manifest(save_rows(tmp_path, rows))
    assert check.errors == []
    assert "warning: no test rows; the test set will be empty" in check.summary()


def test_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    rows = _good_rows(tmp_path)
    rows[4]["mri_date"] = "2021-01-01"
    from_csv, from_parquet = (validate_manifest(save_rows(tmp_path, rows, name)) for name in ("m.csv", "m.parquet"))
    assert from_parquet.exclusions == from_csv.exclusions == {4: "X-ray and MRI 366 days apart (more than 90)"}
    assert str(from_parquet.problems[0]).startswith("row 4 of m.parquet, column mri_date:")
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "m.csv"), read_manifest(tmp_path / "m.parquet"))


def test_parquet_with_typed_dates_and_numeric_ids(tmp_path: Path) -> None:
    table = pd.DataFrame(_good_rows(tmp_path))
    table["xray_date"] = pd.to_datetime(table["xray_date"])
    table["mri_date"] = pd.to_datetime(["2020-01-02"] * 7 + ["2020-09-01"])
    table["patient_id"] = table["patient_id"].str[-3:].astype(int) + 1000
    table.to_parquet(tmp_path / "m.parquet")
    check = validate_manifest(tmp_path / "m.parquet")
    assert check.errors == [] and list(check.exclusions) == [7]


def test_csv_line_numbers_follow_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    rows = _good_rows(tmp_path)
    rows[1]["sex"] = "F\nsee note"
    rows[3]["age"] = 200
    path = save_rows(tmp_path, rows)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")  # pandas skips the blank line 3
    check = validate_manifest(path)
    assert [(p.row, p.line) for p in check.problems] == [(3, 7)]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("absent.csv", None, "manifest not found"),
        ("manifest.xlsx", b"PK\x03\x04", "unknown manifest format '.xlsx'"),
        ("manifest.parquet", b"not parquet at all", "cannot read the manifest"),
        ("manifest.csv", b"", "cannot read the manifest"),
        (
            "manifest.csv",
            "patient_id,age\n\ud658\uc790,40\n".encode("cp949"),
            "cannot read the manifest: not UTF-8 text .* save it as UTF-8",
        ),
    ],
)
def test_unreadable_manifest_names_the_file(tmp_path: Path, name: str, content: bytes | None, reason: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(HnpError, match=f"{name}: {reason}"):
        validate_manifest(tmp_path / name)


def test_image_stats_are_recorded_for_the_images_that_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _good_rows(tmp_path)
    rows[0]["image_path"] = "img/truncated.jpg"
    path = save_rows(tmp_path, rows)
    monkeypatch.setattr(manifest_module, "_IMAGE_BATCH", 2)
    for workers in (1, 2):
        check = validate_manifest(path, workers=workers)
        files = check.table["image_file"]
        assert files[0] not in check.image_stats
        assert set(check.image_stats) == set(files[1:])
        for file in files[1:]:
            status = os.stat(file)
            assert check.image_stats[file] == (status.st_size, status.st_mtime_ns)
    assert validate_manifest(path, check_images=False).image_stats == {}


def test_images_checked_in_parallel_give_the_same_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _good_rows(tmp_path)
    rows[0]["image_path"] = "img/truncated.jpg"
    rows[5]["image_path"] = "img/gone.jpg"
    path = save_rows(tmp_path, rows)
    monkeypatch.setattr(manifest_module, "_IMAGE_BATCH", 2)  # several batches, so that worker processes run
    assert validate_manifest(path, workers=3).exclusions == validate_manifest(path, workers=1).exclusions
    assert list(validate_manifest(path, workers=3).exclusions) == [0, 5]
    assert validate_manifest(path, check_images=False).problems == []


@pytest.fixture
def hnp_validate(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """`hnp validate ARGS` through the real CLI entry, with the other subcommands (and their imports) left out."""
    monkeypatch.setattr(cli, "COMMANDS", {"validate": cli.COMMANDS["validate"]})
    return lambda argv: cli.main(["validate", *argv])


def test_cli_exit_status_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hnp_validate: Callable[[list[str]], int]
) -> None:
    rows = _good_rows(tmp_path)
    good = save_rows(tmp_path, rows, "good.csv")
    rows[6]["mri_date"] = "2021-01-01"
    excluded_only = save_rows(tmp_path, rows, "excluded.csv")
    rows[1]["age"], rows[2]["L1_2"], rows[3]["split"] = "abc", 3, "val"
    bad = save_rows(tmp_path, rows, "bad.csv")

    assert hnp_validate([str(good)]) == 0
    assert "train: 6 images of 3 patients" in capsys.readouterr().out
    assert hnp_validate([str(excluded_only), "--workers", "2"]) == 0
    assert "excluded rows, X-ray/MRI > 90 days apart: 1" in capsys.readouterr().out
    assert hnp_validate([str(bad), "--no-images"]) == 1
    out = capsys.readouterr().out
    assert "error: row 1 (line 3 of bad.csv), column age: age 'abc' is not a number" in out
    assert "errors: 3 (the manifest must be fixed)" in out and "PHI-SECRET" not in out


def test_cli_caps_the_list_and_writes_every_problem_to_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hnp_validate: Callable[[list[str]], int]
) -> None:
    rows = _good_rows(tmp_path)
    for row in rows:
        row["age"] = 5
    path = save_rows(tmp_path, rows)
    assert hnp_validate([str(path), "--show", "3"]) == 1
    out = capsys.readouterr().out
    assert out.count("is outside 18-120") == 3
    assert "... and 5 more (--problems-csv FILE lists them all)" in out
    assert hnp_validate([str(path), "--show", "3", "--problems-csv", str(tmp_path / "p.csv")]) == 1
    with (tmp_path / "p.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["row"], r["line"], r["column"]) for r in written] == [(str(i), str(i + 2), "age") for i in range(8)]
    capsys.readouterr()
    assert hnp_validate([str(path), "--problems-csv", str(tmp_path / "no" / "p.csv")]) == 2
    assert "p.csv: cannot write the problems file" in capsys.readouterr().err


def test_cli_unreadable_manifest_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hnp_validate: Callable[[list[str]], int]
) -> None:
    assert hnp_validate([str(tmp_path / "absent.csv")]) == 2
    assert capsys.readouterr().err == f"hnp validate: error: {tmp_path / 'absent.csv'}: manifest not found\n"
