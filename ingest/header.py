"""What a DICOM header says about an image: is it a lumbar radiograph we can import, and its manifest metadata.

    reason = header_skip_reason(ds, any_body_part=False, keep_burned_in=False)   # None: import it
    meta = image_meta(ds)     # patient_id, study_id, sop_instance_uid, xray_date, age, sex, view

Radiographs are CR and DX images (the Modality, or the SOP class when the modality is missing); DX *for processing*
images are raw detector data that no viewer shows as they are, so only their *for presentation* twins are imported.
The lumbar spine is recognised from the body part, the anatomic region and the study and series descriptions, in
the spellings of `LUMBAR_WORDS`; views from the view position, the view code sequence and the series description.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MediaStorageDirectoryStorage,
)

from ingest import reasons

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
RADIOGRAPH_CLASSES = frozenset({ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation})
# Body Part Examined defined terms (PS3.16 Annex L) that include the lumbar spine.
LUMBAR_BODY_PARTS = frozenset({"LSPINE", "LSSPINE", "TLSPINE"})
# Lumbar spine as vendors and radiographers write it: LUMBAR, LUMBOSACRAL, L-SPINE, L SPINE, LS-SPINE, T-L SPINE,
# L/S, L-S; French/Italian/Portuguese LOMB..., German LWS, Korean and Japanese/Chinese.
LUMBAR_WORDS = re.compile(
    r"LUMB|LOMB|\bLWS\b|\b(T[-_ /]?)?L[-_ /]?S?[-_ /]?SPINE|\bL[-/]S\b|요추|腰椎", re.IGNORECASE
)
# The first of these dates that a file has is the X-ray date.
DATE_KEYWORDS = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")
SEXES = frozenset({"M", "F", "O"})
_AGE_UNITS = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}  # PatientAge "054Y": units per year


@dataclass(frozen=True)
class ImageMeta:
    """The manifest's view of one image. PHI: patient_id, study_id, the UID and the date only reach the manifest.

    Attributes:
        patient_id: PatientID.
        study_id: StudyInstanceUID ("" when missing).
        sop_instance_uid: SOPInstanceUID ("" when missing), to find the same image exported twice.
        xray_date: the first of DATE_KEYWORDS that parses, or None.
        age: years at the X-ray, from PatientAge or from PatientBirthDate and xray_date; None when neither.
        sex: M, F, O or None.
        view: one of hnp.levels.VIEWS.
    """

    patient_id: str
    study_id: str
    sop_instance_uid: str
    xray_date: dt.date | None
    age: float | None
    sex: str | None
    view: str


def text(ds: Dataset, keyword: str) -> str:
    """An element's value as stripped text ("" when missing or empty; the values of a multi-valued one joined)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


def header_skip_reason(ds: Dataset, *, any_body_part: bool, keep_burned_in: bool) -> str | None:
    """Why this file is not a lumbar radiograph to import, from its header alone; None when it is one.

    Args:
        ds: the file as read.
        any_body_part: keep radiographs whatever their body part says (exports without usable body parts).
        keep_burned_in: keep images flagged BurnedInAnnotation = YES.
    """
    sop_class = text(ds, "SOPClassUID") or text(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        return reasons.DICOMDIR
    if "PixelData" not in ds:
        return reasons.NO_PIXELS
    if sop_class == DigitalXRayImageStorageForProcessing:
        return reasons.FOR_PROCESSING
    modality = text(ds, "Modality").upper()
    if modality not in RADIOGRAPH_MODALITIES and not (modality == "" and sop_class in RADIOGRAPH_CLASSES):
        return reasons.NOT_RADIOGRAPH
    if not any_body_part and not is_lumbar(ds):
        return reasons.NOT_LUMBAR
    if not keep_burned_in and text(ds, "BurnedInAnnotation").upper() == "YES":
        return reasons.BURNED_IN
    if not text(ds, "PatientID"):
        return reasons.NO_PATIENT_ID
    return None


def is_lumbar(ds: Dataset) -> bool:
    """True when the body part is a lumbar one, or the anatomic region or a description names the lumbar spine."""
    if text(ds, "BodyPartExamined").upper().replace(" ", "") in LUMBAR_BODY_PARTS:
        return True
    words = [text(ds, k) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")]
    words += [text(item, "CodeMeaning") for item in ds.get("AnatomicRegionSequence") or []]
    return any(LUMBAR_WORDS.search(w) for w in words if w)


def image_meta(ds: Dataset) -> ImageMeta:
    """The manifest fields of a file that passed `header_skip_reason`.

    Args:
        ds: the file as read.
    """
    xray_date = next((d for d in (parse_date(text(ds, k)) for k in DATE_KEYWORDS) if d is not None), None)
    sex = text(ds, "PatientSex").upper()
    return ImageMeta(patient_id=text(ds, "PatientID"), study_id=text(ds, "StudyInstanceUID"),
                     sop_instance_uid=text(ds, "SOPInstanceUID"), xray_date=xray_date,
                     age=age_at(text(ds, "PatientAge"), parse_date(text(ds, "PatientBirthDate")), xray_date),
                     sex=sex if sex in SEXES else None, view=view_of(ds))


def parse_date(value: str) -> dt.date | None:
    """A DICOM date (DA: YYYYMMDD, or the old YYYY.MM.DD) as a date; None when empty or not a real date.

    Args:
        value: the element's text.
    """
    digits = value.replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def age_at(patient_age: str, birth_date: dt.date | None, xray_date: dt.date | None) -> float | None:
    """Age in years: PatientAge ("054Y", "006M", "012W", "003D") when valid, else whole years from the birth date
    to the X-ray date; None when neither is known.

    Args:
        patient_age: the PatientAge text.
        birth_date: PatientBirthDate, parsed.
        xray_date: the X-ray date.
    """
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD])", patient_age.upper())
    if match:
        return int(match[1]) / _AGE_UNITS[match[2]]
    if birth_date is None or xray_date is None or birth_date > xray_date:
        return None
    before_birthday = (xray_date.month, xray_date.day) < (birth_date.month, birth_date.day)
    return float(xray_date.year - birth_date.year - before_birthday)


# ---- views -------------------------------------------------------------------------------------------------------

# View Position defined terms (CR and DX) for the views of the manifest; decubitus and the rest map to nothing.
_VIEW_POSITIONS = {"AP": "AP", "PA": "AP", "LL": "LAT", "RL": "LAT", "LAT": "LAT", "LATERAL": "LAT",
                   "LPO": "OBL_L", "LAO": "OBL_L", "LLO": "OBL_L", "RPO": "OBL_R", "RAO": "OBL_R", "RLO": "OBL_R",
                   "OBL": "OBL", "OBLIQUE": "OBL"}
# Words for each view, tried in this order (a lateral flexion view is FLEX, not LAT), in English abbreviations and
# Korean (굴곡 flexion, 신전 extension, 사위 oblique, 측면 lateral, 전후/정면 AP).
_VIEW_WORDS = (
    ("FLEX", re.compile(r"FLEX|굴곡")),
    ("EXT", re.compile(r"\bEXT|신전")),
    ("OBL", re.compile(r"OBL|\b[LR][APL]O\b|사위")),
    ("LAT", re.compile(r"\bLAT|\b[LR]L\b|측면")),
    ("AP", re.compile(r"\bA-?P\b|\bP-?A\b|FRONTAL|ANTERO|POSTERO|전후|정면")),
)
_LEFT = re.compile(r"\b(L|LT|LEFT|LAO|LPO|LLO)\b")
_RIGHT = re.compile(r"\b(R|RT|RIGHT|RAO|RPO|RLO)\b")


def view_of(ds: Dataset) -> str:
    """The manifest view (AP, LAT, OBL_L, OBL_R, FLEX, EXT or OTHER) of a radiograph.

    Evidence, strongest first: flexion or extension named by the view code modifiers or the series description or
    protocol name (they are lateral views by position); the View Position; the View Code Sequence meaning; the
    series description or protocol name. An oblique takes its side from the same words, else from ImageLaterality.

    Args:
        ds: the file as read.
    """
    codes = list(ds.get("ViewCodeSequence") or [])
    code_words = [text(code, "CodeMeaning") for code in codes]
    modifier_words = [text(m, "CodeMeaning") for code in codes for m in code.get("ViewModifierCodeSequence") or []]
    series_words = [text(ds, "SeriesDescription"), text(ds, "ProtocolName")]
    named = _view_from_words(modifier_words + series_words)
    if named in ("FLEX", "EXT"):
        return named
    position = _VIEW_POSITIONS.get(text(ds, "ViewPosition").upper())
    candidates = [v for v in (position, _view_from_words(code_words), named) if v is not None]
    view = candidates[0] if candidates else "OTHER"
    if view == "OBL":
        sided = [v for v in candidates if v in ("OBL_L", "OBL_R")]
        view = sided[0] if sided else {"L": "OBL_L", "R": "OBL_R"}.get(text(ds, "ImageLaterality").upper(), "OTHER")
    return view


def _view_from_words(words: list[str]) -> str | None:
    """The first view named in `words`: FLEX, EXT, OBL_L, OBL_R, OBL (side unknown), LAT, AP; None if none."""
    cleaned = LUMBAR_WORDS.sub(" ", " ".join(w for w in words if w).upper())  # "L-SPINE" must not read as left
    for view, pattern in _VIEW_WORDS:
        if pattern.search(cleaned):
            if view != "OBL":
                return view
            left, right = bool(_LEFT.search(cleaned)), bool(_RIGHT.search(cleaned))
            return "OBL_L" if left and not right else "OBL_R" if right and not left else "OBL"
    return None
