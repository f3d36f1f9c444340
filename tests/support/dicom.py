"""DX files written from phantom radiographs, in the encodings a PACS export holds, for the import tests.

Each encoding stores an 8-bit phantom image `p` as other stored values and gives the file the display attributes
(rescale, window, VOI LUT, photometric interpretation) under which a correct viewer shows `p` again, so the imported
JPEG must match the phantom (`expected_display` says what it must match where the file has no VOI: the percentile
window). Header values are distinctive (names, accession numbers, serials, UIDs) so that the privacy test can search
every output byte for them.

    ds = dx_dataset(pixels, "mono1_12bit", PatientHeader(patient_id="PHI-MRN-00001", ...))
    ds.save_as(path, enforce_file_format=True)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from hnp.levels import LEVEL_COLUMNS
from ingest import reasons

# The phantom's views as a DX modality writes them: (ViewPosition, series description).
VIEW_HEADERS = {"AP": ("AP", "L-SPINE AP"), "LAT": ("LL", "L-SPINE LAT"), "OBL_L": ("LPO", "L-SPINE OBLIQUE"),
                "OBL_R": ("RPO", "L-SPINE OBLIQUE"), "FLEX": ("LL", "L-SPINE FLEXION"),
                "EXT": ("LL", "L-SPINE EXTENSION")}


@dataclass(frozen=True)
class PatientHeader:
    """The identifying header of one image (every value distinctive, for the privacy search)."""

    patient_id: str
    study_uid: str
    study_date: dt.date
    age: int | None = None  # written as PatientAge; None: no PatientAge
    birth_date: dt.date | None = None
    sex: str = "F"
    view: str = "AP"
    name: str = "DOE^JANE^Q"
    accession: str = "ACC20240001"
    burned_in: bool = False
    body_part: str = "LSPINE"
    modality: str = "DX"
    sop_uid: str = ""  # "" = a new UID


@dataclass(frozen=True)
class Encoding:
    """Stored values from the phantom image, and the attributes that display them as the phantom again."""

    stored: Callable[[np.ndarray], np.ndarray]
    attributes: Callable[[Dataset], None]
    bits_allocated: int = 16
    bits_stored: int = 12
    signed: bool = False
    syntax: str = ExplicitVRLittleEndian


def linear_window(low: float, high: float) -> tuple[float, float]:
    """(Window Center, Window Width) under which DICOM's LINEAR function maps `low` to black and `high` to white."""
    width = high - low + 1
    return (low + high) / 2 + 0.5, width


def _window(low: float, high: float) -> Callable[[Dataset], None]:
    def attributes(ds: Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = linear_window(low, high)

    return attributes


def _rescaled_window(ds: Dataset) -> None:
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 0.5, -1000, "US"
    # stored p * 16 + 8 -> modality 8 p - 996
    ds.WindowCenter, ds.WindowWidth = linear_window(-996, 8 * 255 - 996)


def _voi_lut(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    lut = np.clip(np.rint((np.arange(4096) - 8) / 16), 0, 255).astype(np.uint16) * 257
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    item.LUTExplanation = "PHANTOM VOI LUT"
    ds.VOILUTSequence = Sequence([item])
    # a window that would show something else: the VOI LUT must win
    ds.WindowCenter, ds.WindowWidth = 100, 50


def _modality_lut(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.arange(4096, dtype=np.uint16) * 4).tolist()  # stored p * 16 + 8 -> modality 64 p + 32
    item["LUTData"].VR = "US"
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = linear_window(32, 64 * 255 + 32)


def _padded(ds: Dataset) -> None:
    ds.PixelPaddingValue = 0
    ds.WindowCenter, ds.WindowWidth = linear_window(8, 4088)


ENCODINGS: dict[str, Encoding] = {
    "mono2_8bit": Encoding(lambda p: p, _window(0, 255), bits_allocated=8, bits_stored=8),
    "mono2_12bit_rescale": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, _rescaled_window),
    "mono1_12bit": Encoding(lambda p: (255 - p.astype(np.uint16)) * 16 + 8, _window(8, 4088)),
    "signed_16bit": Encoding(lambda p: (p.astype(np.int16) * 200 - 25000), _window(-25000, 26000), bits_stored=16,
                             signed=True),
    "modality_lut_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, _modality_lut),
    "voi_lut_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, _voi_lut),
    "no_voi_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, lambda ds: None),
    "padded_12bit": Encoding(lambda p: _pad_border(p.astype(np.uint16) * 16 + 8), _padded),
    "rle_signed_16bit": Encoding(lambda p: (p.astype(np.int16) * 200 - 25000), _window(-25000, 26000),
                                 bits_stored=16, signed=True, syntax=RLELossless),
    "rle_mono1_12bit": Encoding(lambda p: (255 - p.astype(np.uint16)) * 16 + 8, _window(8, 4088), syntax=RLELossless),
    "jpeg_lossless_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, _window(8, 4088), syntax=JPEGLosslessSV1),
    "j2k_lossless_16bit": Encoding(lambda p: p.astype(np.uint16) * 250 + 100, _window(100, 63850), bits_stored=16,
                                   syntax=JPEG2000Lossless),
    "j2k_voi_lut_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, _voi_lut, syntax=JPEG2000Lossless),
    "jpegls_lossless_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, _rescaled_window,
                                      syntax=JPEGLSLossless),
    "deflate_no_voi_12bit": Encoding(lambda p: p.astype(np.uint16) * 16 + 8, lambda ds: None,
                                     syntax=DeflatedExplicitVRLittleEndian),
}
PAD_ROWS = 6  # padded_12bit: the top rows hold the padding value


def _pad_border(stored: np.ndarray) -> np.ndarray:
    stored = stored.copy()
    stored[:PAD_ROWS] = 0
    return stored


def expected_display(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """What a correct import shows for the phantom `pixels` in `encoding`: the phantom itself, except where the file
    has no VOI (then the phantom stretched between its 0.5th and 99.5th percentiles, numpy's inverted CDF) and where
    it is padding (black). A stretched value exactly half-way between two levels rounds up, as the importer's
    window does (numpy's rint would round it to even: 76.5 -> 76)."""
    shown = pixels.astype(np.float64)
    if encoding.startswith(("no_voi", "deflate_no_voi")):
        low, high = np.percentile(shown, (0.5, 99.5), method="inverted_cdf")
        shown = np.clip((shown - low) / (high - low), 0, 1) * 255
    if encoding.startswith("padded"):
        shown[:PAD_ROWS] = 0
    return np.floor(shown + 0.5).astype(np.uint8)


def dx_dataset(pixels: np.ndarray, encoding: str, header: PatientHeader) -> Dataset:
    """A DX For Presentation dataset holding `pixels` (uint8, H x W) in `encoding`, ready for `save_as`.

    Args:
        pixels: the phantom radiograph.
        encoding: a key of ENCODINGS.
        header: the patient, study and view.
    """
    spec = ENCODINGS[encoding]
    ds = Dataset()
    _identify(ds, header)
    stored = spec.stored(pixels)
    ds.SamplesPerPixel, ds.Rows, ds.Columns = 1, *pixels.shape
    ds.PhotometricInterpretation = "MONOCHROME1" if "mono1" in encoding else "MONOCHROME2"
    ds.PresentationLUTShape = "INVERSE" if "mono1" in encoding else "IDENTITY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = spec.bits_allocated, spec.bits_stored, spec.bits_stored - 1
    ds.PixelRepresentation = int(spec.signed)
    spec.attributes(ds)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(spec.bits_allocated, spec.signed)]
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
    ds["PixelData"].VR = "OB" if spec.bits_allocated == 8 else "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _encode(ds, stored.astype(dtype), spec)
    return ds


def _identify(ds: Dataset, header: PatientHeader) -> None:
    position, series = VIEW_HEADERS[header.view]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = header.sop_uid or generate_uid()
    ds.Modality, ds.BodyPartExamined = header.modality, header.body_part
    ds.PatientID, ds.PatientName, ds.PatientSex = header.patient_id, header.name, header.sex
    if header.age is not None:
        ds.PatientAge = f"{header.age:03d}Y"
    if header.birth_date is not None:
        ds.PatientBirthDate = header.birth_date.strftime("%Y%m%d")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = header.study_uid, generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = header.study_date.strftime("%Y%m%d")
    ds.StudyTime = "093015.250"
    ds.AccessionNumber, ds.StudyID = header.accession, "STUDY-4711"
    ds.StudyDescription, ds.SeriesDescription = "LUMBAR SPINE 4 VIEWS", series
    ds.ViewPosition = position
    ds.ImageLaterality = "U"
    ds.InstitutionName, ds.InstitutionAddress = "Hallym Phantom Hospital", "1 Sacred Heart Road, Chuncheon"
    ds.StationName, ds.DeviceSerialNumber = "DXROOM-07", "SN-99887766"
    ds.Manufacturer, ds.ManufacturerModelName = "PhantomRay Medical", "PR-9000 Digital"
    ds.ReferringPhysicianName, ds.OperatorsName = "KIM^MINJUN", "PARK^SEOYEON"
    ds.OtherPatientIDs = f"OTHER-{header.patient_id}"
    ds.BurnedInAnnotation = "YES" if header.burned_in else "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = [0.139, 0.139]


def _encode(ds: Dataset, stored: np.ndarray, spec: Encoding) -> None:
    if spec.syntax == JPEGLosslessSV1:
        import imagecodecs  # pydicom has no JPEG lossless encoder; libjpeg-turbo's (in imagecodecs) has

        frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=spec.bits_stored)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    elif spec.syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # deflated as the file is written
    elif spec.syntax != ExplicitVRLittleEndian:
        ds.compress(spec.syntax, stored, generate_instance_uid=False)


def header_values(ds: Dataset) -> Iterator[str]:
    """Every value of a header as text (sequences included, the file meta too), pixel data and LUT data left out:
    what may not appear in any output byte."""
    for dataset in (getattr(ds, "file_meta", Dataset()), ds):
        yield from _values(dataset)


def _values(ds: Dataset) -> Iterator[str]:
    for element in ds:
        if element.tag.group in (0x7FE0,) or element.keyword in ("LUTData", "PixelData"):
            continue
        if element.VR == "SQ":
            for item in element.value:
                yield from _values(item)
            continue
        value = element.value
        if isinstance(value, bytes | bytearray) or value is None:
            continue
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        yield from (str(v) for v in items)
        if len(items) > 1:
            yield "\\".join(str(v) for v in items)


# ---- whole exports ------------------------------------------------------------------------------------------------

# Real files that pydicom ships, rewritten as lumbar DX images (`relabel_as_lumbar_dx`), and what the import must make
# of each: None = imported (decoded), else the reason. Vendors and encodings pydicom's tests gathered over years.
RELABELLED_REAL_FILES: dict[str, str | None] = {
    "CT_small.dcm": None,  # rescale slope/intercept, window
    "MR_small_bigendian.dcm": None,  # explicit VR big endian
    "MR_small_RLE.dcm": None,
    "MR_small_jpeg_ls_lossless.dcm": None,  # JPEG-LS
    "MR_small_padded.dcm": None,
    "JPGExtended.dcm": None,  # 12-bit JPEG extended: needs pylibjpeg-libjpeg
    "JPEG2000.dcm": None,
    "693_J2KI.dcm": None,  # JPEG 2000, signed 14-bit
    "JPEGLSNearLossless_16.dcm": None,
    "image_dfl.dcm": None,  # deflated transfer syntax
    "MR_truncated.dcm": reasons.TRUNCATED_PIXELS,
    "JPEG-lossy.dcm": reasons.UNDECODABLE,  # a broken JPEG stream every decoder refuses
    "JPEG2000-embedded-sequence-delimiter.dcm": reasons.UNDECODABLE,
    "examples_palette.dcm": reasons.NOT_GRAYSCALE,
    "SC_rgb_rle.dcm": reasons.NOT_GRAYSCALE,
    "examples_ybr_color.dcm": reasons.MULTI_FRAME,
    "liver_1frame.dcm": reasons.BIT_DEPTH,  # 1-bit segmentation
    "rtdose_1frame.dcm": reasons.BIT_DEPTH,  # 32-bit dose
    "badVR.dcm": reasons.CORRUPT,  # Number of Frames "1A"
}
# Real files as shipped, and the reason each is skipped: a sample of the ~190 (the accounting test covers them all).
REAL_FILE_REASONS: dict[str, str] = {
    "CT_small.dcm": reasons.NOT_RADIOGRAPH,
    "MR_small.dcm": reasons.NOT_RADIOGRAPH,
    "README.txt": reasons.NOT_DICOM,
    "zipMR.gz": reasons.NOT_DICOM,
    "no_meta.dcm": reasons.NOT_DICOM,  # CT_small without its header group: pydicom cannot parse it either
    "MR_truncated.dcm": reasons.TRUNCATED,
    "rtplan_truncated.dcm": reasons.TRUNCATED,
    "reportsi.dcm": reasons.NO_PIXELS,
    "ExplVR_LitEndNoMeta.dcm": reasons.NO_PIXELS,  # no preamble, read all the same
    "dicomdirtests/DICOMDIR": reasons.DICOMDIR,
    "dicomdirtests/77654033/CR1/6154": reasons.NOT_LUMBAR,  # a real CR, MONOCHROME1, of another body part
}


def pydicom_test_files() -> Path:
    """The folder of the DICOM files pydicom's wheel ships (offline)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).parent


def relabel_as_lumbar_dx(name: str, dest: Path, patient_id: str) -> Path:
    """Rewrite pydicom's test file `name` as a lumbar DX image of `patient_id` (aged 50, X-rayed 2019-06-01), its
    pixel data untouched."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(pydicom_test_files() / name)
        ds.Modality, ds.BodyPartExamined, ds.PatientID = "DX", "LSPINE", patient_id
        ds.StudyDate, ds.PatientAge = "20190601", "050Y"
        ds.SOPInstanceUID = generate_uid()  # the MR_small variants share one: they would be duplicates
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        dest.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dest, enforce_file_format=True)
    return dest


def study_uid(study_id: str) -> str:
    """A valid UID (2.25 + a number) for a phantom study ID."""
    return f"2.25.{int(hashlib.sha256(study_id.encode()).hexdigest()[:30], 16)}"


def write_phantom_export(phantom: Path, export: Path, encodings: tuple[str, ...] = tuple(ENCODINGS)) -> pd.DataFrame:
    """One DX file per image of a phantom data set, the encodings taken in turn, in a folder per patient.

    Every third image carries its age as a birth date instead of PatientAge. Names, accession numbers and the
    study UID differ per patient.

    Args:
        phantom: a folder written by `phantom.generate.generate`.
        export: where the DX files go.
        encodings: keys of ENCODINGS, cycled over the images.

    Returns:
        The phantom manifest with `source` (the file's path under `export`) and `encoding` per image.
    """
    manifest = pd.read_parquet(phantom / "manifest.parquet")
    sources, used = [], []
    for i, row in enumerate(manifest.itertuples()):
        pixels = cv2.imread(str(phantom / row.image_path), cv2.IMREAD_GRAYSCALE)
        encoding = encodings[i % len(encodings)]
        xray = dt.date.fromisoformat(row.xray_date)
        by_birth_date = i % 3 == 2
        patient = int(row.patient_id[2:]) % 10_000
        header = PatientHeader(patient_id=row.patient_id, study_uid=study_uid(row.study_id), study_date=xray,
                               age=None if by_birth_date else int(row.age), sex=row.sex, view=row.view,
                               birth_date=dt.date(xray.year - int(row.age), 1, 1) if by_birth_date else None,
                               name=f"PHANTOM^PATIENT^{patient:04d}", accession=f"ACC{row.study_id[2:]}")
        source = f"{patient:04d}/IM{i:05d}.dcm"
        (export / source).parent.mkdir(parents=True, exist_ok=True)
        dx_dataset(pixels, encoding, header).save_as(export / source, enforce_file_format=True)
        sources.append(source)
        used.append(encoding)
    return manifest.assign(source=sources, encoding=used)


def write_labels(manifest: pd.DataFrame, path: Path) -> Path:
    """The MRI reads of a phantom manifest: one per patient, at its MRI date with its labels."""
    reads = manifest[["patient_id", "mri_date", *LEVEL_COLUMNS]].drop_duplicates("patient_id")
    reads.to_csv(path, index=False)
    return path
