"""What a header says: radiograph or not, lumbar or not, the view, the age and the date (case tables)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from ingest import reasons
from ingest.header import age_at, header_skip_reason, image_meta, is_lumbar, parse_date, view_of


def _dataset(**elements) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = Sequence([_dataset(**item) for item in value])
        setattr(ds, keyword, value)
    return ds


def _radiograph(**elements) -> Dataset:
    defaults = {"SOPClassUID": DigitalXRayImageStorageForPresentation, "Modality": "DX", "BodyPartExamined": "LSPINE",
                "PatientID": "PHI-MRN-1", "PixelData": b"\0\0"}
    return _dataset(**(defaults | elements))


@pytest.mark.parametrize(("elements", "reason"), [
    ({}, None),
    ({"Modality": "CR", "SOPClassUID": ComputedRadiographyImageStorage}, None),
    ({"Modality": "", "SOPClassUID": ComputedRadiographyImageStorage}, None),  # no modality: the SOP class says
    ({"Modality": "CT", "SOPClassUID": CTImageStorage}, reasons.NOT_RADIOGRAPH),
    ({"Modality": "MG"}, reasons.NOT_RADIOGRAPH),
    ({"SOPClassUID": DigitalXRayImageStorageForProcessing}, reasons.FOR_PROCESSING),
    ({"BodyPartExamined": "CHEST"}, reasons.NOT_LUMBAR),
    ({"BurnedInAnnotation": "YES"}, reasons.BURNED_IN),
    ({"BurnedInAnnotation": "NO"}, None),
    ({"PatientID": "  "}, reasons.NO_PATIENT_ID),
    ({"DirectoryRecordSequence": []}, reasons.DICOMDIR),
])
def test_header_decides_what_is_imported(elements: dict, reason: str | None) -> None:
    assert header_skip_reason(_radiograph(**elements), any_body_part=False, keep_burned_in=False) == reason


def test_no_pixel_data_comes_before_the_rest() -> None:
    ds = _radiograph(Modality="SR")
    del ds.PixelData
    assert header_skip_reason(ds, any_body_part=False, keep_burned_in=False) == reasons.NO_PIXELS


def test_options_keep_other_body_parts_and_burned_in_images() -> None:
    ds = _radiograph(BodyPartExamined="CHEST", BurnedInAnnotation="YES")
    assert header_skip_reason(ds, any_body_part=True, keep_burned_in=True) is None


@pytest.mark.parametrize(("elements", "lumbar"), [
    ({"BodyPartExamined": "LSPINE"}, True),
    ({"BodyPartExamined": "TLSPINE"}, True),
    ({"BodyPartExamined": "SPINE", "StudyDescription": "LUMBAR SPINE 4 VIEWS"}, True),
    ({"BodyPartExamined": "", "SeriesDescription": "L-SPINE AP"}, True),
    ({"SeriesDescription": "LS SPINE LAT"}, True),
    ({"ProtocolName": "X-ray L/S flexion"}, True),
    ({"StudyDescription": "LWS in 2 Ebenen"}, True),  # German
    ({"StudyDescription": "요추 전후면"}, True),  # Korean
    ({"AnatomicRegionSequence": [{"CodeMeaning": "Lumbar spine"}]}, True),
    ({"BodyPartExamined": "SPINE", "StudyDescription": "C-SPINE AP"}, False),
    ({"BodyPartExamined": "CHEST", "SeriesDescription": "PA"}, False),
    ({"SeriesDescription": "SPLENIC"}, False),
    ({}, False),
])
def test_lumbar_spine_is_recognised_in_body_part_region_and_descriptions(elements: dict, lumbar: bool) -> None:
    assert is_lumbar(_dataset(**elements)) is lumbar


@pytest.mark.parametrize(("elements", "view"), [
    ({"ViewPosition": "AP"}, "AP"),
    ({"ViewPosition": "PA"}, "AP"),
    ({"ViewPosition": "LL"}, "LAT"),
    ({"ViewPosition": "RL"}, "LAT"),
    ({"ViewPosition": "LPO"}, "OBL_L"),
    ({"ViewPosition": "RAO"}, "OBL_R"),
    ({"ViewPosition": "LL", "SeriesDescription": "L-SPINE FLEXION"}, "FLEX"),
    ({"ViewPosition": "LL", "ProtocolName": "LUMBAR EXT"}, "EXT"),
    ({"ViewCodeSequence": [{"CodeMeaning": "lateral", "ViewModifierCodeSequence": [{"CodeMeaning": "flexion"}]}]},
     "FLEX"),
    ({"ViewCodeSequence": [{"CodeMeaning": "left lateral"}]}, "LAT"),
    ({"ViewCodeSequence": [{"CodeMeaning": "antero-posterior"}]}, "AP"),
    ({"ViewCodeSequence": [{"CodeMeaning": "right posterior oblique"}]}, "OBL_R"),
    ({"SeriesDescription": "L-SPINE OBL LT"}, "OBL_L"),  # the L of L-SPINE is not a side
    ({"SeriesDescription": "L-SPINE OBLIQUE"}, "OTHER"),  # an oblique of no known side
    ({"SeriesDescription": "L-SPINE OBLIQUE", "ImageLaterality": "R"}, "OBL_R"),
    ({"ViewPosition": "OBL", "ImageLaterality": "L"}, "OBL_L"),
    ({"SeriesDescription": "L-SPINE LAT"}, "LAT"),
    ({"SeriesDescription": "요추 측면"}, "LAT"),
    ({"ViewPosition": "RLD"}, "OTHER"),
    ({}, "OTHER"),
])
def test_view_from_position_codes_and_descriptions(elements: dict, view: str) -> None:
    assert view_of(_dataset(**elements)) == view


@pytest.mark.parametrize(("patient_age", "birth", "xray", "age"), [
    ("054Y", None, None, 54.0),
    ("054Y", dt.date(1900, 1, 1), dt.date(2020, 1, 1), 54.0),  # PatientAge wins over the birth date
    ("240M", None, None, 20.0),
    ("", dt.date(1966, 6, 15), dt.date(2020, 6, 14), 53.0),  # the day before the birthday
    ("", dt.date(1966, 6, 15), dt.date(2020, 6, 15), 54.0),
    ("", dt.date(1966, 6, 15), None, None),
    ("", None, dt.date(2020, 6, 15), None),
    ("54", dt.date(1966, 6, 15), dt.date(2020, 6, 15), 54.0),  # no unit: not a valid age string, birth date used
])
def test_age_from_patient_age_or_birth_date(patient_age: str, birth: dt.date | None, xray: dt.date | None,
                                            age: float | None) -> None:
    assert age_at(patient_age, birth, xray) == age


@pytest.mark.parametrize(("value", "date"), [
    ("20200314", dt.date(2020, 3, 14)), ("2020.03.14", dt.date(2020, 3, 14)), ("20200231", None), ("", None),
    ("2020-03", None),
])
def test_dicom_dates(value: str, date: dt.date | None) -> None:
    assert parse_date(value) == date


def test_image_meta_takes_the_study_date_then_the_acquisition_date() -> None:
    ds = _radiograph(StudyInstanceUID="1.2.3", SOPInstanceUID="1.2.3.4", PatientSex="F ", PatientAge="061Y",
                     AcquisitionDate="20190102", ViewPosition="AP")
    meta = image_meta(ds)
    assert (meta.patient_id, meta.study_id, meta.sop_instance_uid) == ("PHI-MRN-1", "1.2.3", "1.2.3.4")
    assert (meta.xray_date, meta.age, meta.sex, meta.view) == (dt.date(2019, 1, 2), 61.0, "F", "AP")
    ds.StudyDate = "20181231"
    assert image_meta(ds).xray_date == dt.date(2018, 12, 31)
