"""MRI-read labels: the CSV is checked cell by cell, and each X-ray takes the read nearest in time within 90 days."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS
from ingest import reasons
from ingest.labels import match_reads, read_mri_reads
from ingest.outputs import SplitRule

HEADER = "patient_id,mri_date," + ",".join(LEVEL_COLUMNS)


def _labels(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def test_reads_are_parsed_and_identical_repeats_dropped(tmp_path: Path) -> None:
    reads = read_mri_reads(_labels(tmp_path, "00123,2019-04-02,0,0,1,1,0", "", "00123,2019-04-02,0,0,1,1,0",
                                   "PHI-MRN-7,2020-01-31,1,0,0,0,1"))
    assert reads["patient_id"].tolist() == ["00123", "PHI-MRN-7"]  # leading zeros kept, the blank line ignored
    assert reads["mri_date"].dt.strftime("%Y-%m-%d").tolist() == ["2019-04-02", "2020-01-31"]
    assert reads[list(LEVEL_COLUMNS)].to_numpy().tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]


def test_every_bad_cell_is_named_by_line_and_column_never_by_patient(tmp_path: Path) -> None:
    path = _labels(tmp_path, "PHI-MRN-1,2019-04-02,0,0,1,1,0", "PHI-MRN-2,2019-02-30,0,0,1,1,0",
                   "PHI-MRN-3,2019-04-02,0,2,1,1,0", "PHI-MRN-4,2019-04-02,0,0,1,,0", ",2019-04-02,0,0,0,0,0")
    with pytest.raises(HnpError) as error:
        read_mri_reads(path)
    message = str(error.value)
    assert "4 problems" in message
    assert "line 3, column mri_date: '2019-02-30' is not an ISO date" in message
    assert "line 4, column L2_3: '2' is not 0 or 1" in message
    assert "line 5, column L4_5: '' is not 0 or 1" in message
    assert "line 6, column patient_id: empty" in message
    assert "PHI-MRN" not in message


def test_two_reads_of_one_day_that_disagree_are_refused(tmp_path: Path) -> None:
    path = _labels(tmp_path, "PHI-MRN-1,2019-04-02,0,0,1,1,0", "PHI-MRN-1,2019-04-02,0,0,0,1,0")
    with pytest.raises(HnpError, match="line 2: another row has the same patient and MRI date with other labels"):
        read_mri_reads(path)


@pytest.mark.parametrize(("content", "message"), [
    ("patient_id,date,L1_2\nA,2019-01-01,0\n", "no column mri_date, L2_3, L3_4, L4_5, L5_S1"),
    (b"patient_id\n\xff\xfe\n", "not UTF-8|UnicodeDecodeError"),
])
def test_unusable_files_are_refused_naming_the_file(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(HnpError, match=message) as error:
        read_mri_reads(path)
    assert str(path) in str(error.value)
    with pytest.raises(HnpError, match="labels file not found"):
        read_mri_reads(tmp_path / "absent.csv")


def test_each_xray_takes_the_nearest_read_within_90_days(tmp_path: Path) -> None:
    reads = read_mri_reads(_labels(
        tmp_path,
        "A,2020-01-01,1,0,0,0,0", "A,2020-06-01,0,1,0,0,0",  # two studies, each has its own read
        "B,2020-04-01,0,0,1,0,0",  # 91 days after its X-ray
        "C,2020-03-01,0,0,0,1,0", "C,2020-03-21,0,0,0,0,1",  # equally near: the earlier read
        "D,2020-03-31,1,1,1,1,1",  # exactly 90 days
    ))
    images = pd.DataFrame({"patient_id": ["A", "A", "B", "C", "D", "E"],
                           "xray_date": pd.to_datetime(["2019-12-20", "2020-05-01", "2020-01-01", "2020-03-11",
                                                        "2020-01-01", "2020-01-01"])}, index=[10, 11, 12, 13, 14, 15])
    matched = match_reads(images, reads)

    assert matched.index.tolist() == [10, 11, 12, 13, 14, 15]
    assert matched["reason"].tolist() == [None, None, reasons.NO_MRI_NEAR, None, None, reasons.NO_MRI]
    assert matched["mri_date"].dt.strftime("%Y-%m-%d").fillna("").tolist() == [
        "2020-01-01", "2020-06-01", "", "2020-03-01", "2020-03-31", ""]
    assert matched.loc[[10, 11, 13], list(LEVEL_COLUMNS)].to_numpy().tolist() == [
        [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]


@pytest.mark.parametrize(("rule", "test_patients"), [
    (SplitRule(test_fraction=0.25), {"D"}),
    (SplitRule(test_fraction=0.5), {"C", "D"}),
    (SplitRule(test_fraction=0.0), set()),
    (SplitRule(test_from=pd.Timestamp("2020-03-01").date()), {"C", "D"}),
])
def test_split_is_by_patient_first_xray(rule: SplitRule, test_patients: set[str]) -> None:
    patients = pd.Series(["A", "A", "B", "C", "C", "D"])
    # A is seen again after the cutoff: still a train patient, with every image (no patient in both splits)
    dates = pd.Series(pd.to_datetime(["2019-01-01", "2021-01-01", "2019-06-01", "2020-03-01", "2020-04-01",
                                      "2020-09-01"]))
    split = rule.assign(patients, dates)
    assert set(patients[split == "test"]) == test_patients
    assert split.groupby(patients).nunique().max() == 1
