"""Pixels as displayed: DX files written from phantom radiographs in many encodings must show the phantom again.

Tolerance: the displayed 8-bit image (`ingest.pixels.display_image`) equals the expected one exactly (every encoding
here is lossless); the written JPEG is then byte for byte OpenCV's quality-95 JPEG of the expected image, within
1.5 grey levels of the phantom on average (quality 95 on these noisy images: about 1.1).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from support.dicom import ENCODINGS, PatientHeader, dx_dataset, expected_display

from hnp.errors import HnpError
from ingest import reasons
from ingest.convert import ConvertSettings, Job, convert_file
from ingest.pixels import Skipped, apply_lut, display_image, display_table, pixel_skip_reason
from phantom.generate import PhantomConfig, generate

HEADER = PatientHeader(patient_id="PHI-MRN-00042", study_uid="1.2.826.0.1.3680043.8.498.1",
                       study_date=dt.date(2019, 5, 1), age=54)


@pytest.fixture(scope="module")
def phantom_image(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """One phantom radiograph (uint8, 160 x 128)."""
    out = tmp_path_factory.mktemp("phantom") / "p"
    manifest = generate(PhantomConfig(out=out, patients=1, seed=3, size=(160, 128)), progress=False)
    return cv2.imread(str(out / manifest["image_path"].iloc[0]), cv2.IMREAD_GRAYSCALE)


def _written(tmp_path: Path, pixels: np.ndarray, encoding: str, **attributes) -> Path:
    ds = dx_dataset(pixels, encoding, HEADER)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path = tmp_path / f"{encoding}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_displayed_image_is_the_phantom(tmp_path: Path, phantom_image: np.ndarray, encoding: str) -> None:
    ds = dcmread(_written(tmp_path, phantom_image, encoding))
    assert ds.file_meta.TransferSyntaxUID == ENCODINGS[encoding].syntax  # the encoding really is in the file
    assert pixel_skip_reason(ds) is None

    shown = display_image(ds)

    expected = expected_display(phantom_image, encoding)
    assert shown.dtype == np.uint8 and shown.shape == phantom_image.shape
    assert np.array_equal(shown, expected), np.abs(shown.astype(int) - expected).max()


@pytest.mark.parametrize("encoding", sorted(e for e in ENCODINGS if ENCODINGS[e].bits_allocated == 16))
def test_the_fast_ramp_and_the_lookup_table_show_the_same(tmp_path: Path, phantom_image: np.ndarray,
                                                          encoding: str) -> None:
    ds = dcmread(_written(tmp_path, phantom_image, encoding))
    stored = ds.pixel_array
    positions = stored.view(f"u{stored.dtype.itemsize}")
    table = display_table(ds, positions)
    # a window is a straight ramp (OpenCV computes it), a VOI LUT is not; a percentile window may be, or may not
    # (its ends are not round numbers, and float32 may round one of the 4096 values apart: then the table is used)
    if "voi_lut" in encoding:
        assert table.ramp is None
    elif "no_voi" not in encoding:
        assert table.ramp is not None
    if table.ramp is not None:
        assert np.array_equal(table.ramp.apply(stored), apply_lut(table.lut, positions))


@pytest.mark.parametrize("encoding", ["mono1_12bit", "signed_16bit", "jpeg_lossless_12bit", "no_voi_12bit"])
def test_written_jpeg_is_the_phantom_within_jpeg_error(tmp_path: Path, phantom_image: np.ndarray,
                                                       encoding: str) -> None:
    source = _written(tmp_path, phantom_image, encoding)
    (tmp_path / "out" / "images").mkdir(parents=True)
    record = convert_file(Job(source, source.name, 3, tmp_path / "out", ConvertSettings(jpeg_quality=95)))

    assert record["reason"] is None and record["image"] == "images/0000003.jpg"
    written = (tmp_path / "out" / record["image"]).read_bytes()
    expected = expected_display(phantom_image, encoding)
    assert written == cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(written, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.ndim == 2 and np.abs(decoded.astype(int) - expected).mean() < 1.5


def test_an_image_that_cannot_be_written_stops_the_import(tmp_path: Path, phantom_image: np.ndarray) -> None:
    # the output's fault (here: no images folder; in life, a full disk), not the file's: no skip, an error
    source = _written(tmp_path, phantom_image, "mono2_8bit")
    with pytest.raises(HnpError, match=r"images/0000000.jpg: cannot write the image: No such file or directory"):
        convert_file(Job(source, source.name, 0, tmp_path / "absent", ConvertSettings()))


def test_monochrome1_is_inverted_after_the_window(tmp_path: Path, phantom_image: np.ndarray) -> None:
    # The same stored values read as MONOCHROME2 show the negative: the inversion follows the window.
    as_mono2 = dcmread(_written(tmp_path, phantom_image, "mono1_12bit", PhotometricInterpretation="MONOCHROME2"))
    assert np.array_equal(display_image(as_mono2), 255 - phantom_image)


def test_padding_range_is_black_and_out_of_the_percentiles(tmp_path: Path, phantom_image: np.ndarray) -> None:
    # Padding values 4090-4095 (above every real value); without a window the percentile window must ignore them.
    pixels = phantom_image.copy()
    ds = dx_dataset(pixels, "no_voi_12bit", HEADER)
    stored = np.frombuffer(ds.PixelData, np.uint16).reshape(pixels.shape).copy()
    stored[:, :20] = 4090 + np.arange(20) % 6
    ds.PixelData = stored.tobytes()
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4095, 4090
    ds.save_as(tmp_path / "pad.dcm", enforce_file_format=True)

    shown = display_image(dcmread(tmp_path / "pad.dcm"))

    assert not shown[:, :20].any()
    expected = expected_display(pixels[:, 20:], "no_voi_12bit")
    assert np.abs(shown[:, 20:].astype(int) - expected).max() <= 1


def test_unused_high_bits_are_ignored_and_signed_values_sign_extended(tmp_path: Path,
                                                                     phantom_image: np.ndarray) -> None:
    # 12 bits stored in 16: bits 12-15 hold garbage (an old overlay, say) that is no part of the value
    ds = dx_dataset(phantom_image, "mono1_12bit", HEADER)
    stored = np.frombuffer(ds.PixelData, np.uint16).reshape(phantom_image.shape)
    ds.PixelData = (stored | np.uint16(0xA000)).tobytes()
    ds.save_as(tmp_path / "garbage.dcm", enforce_file_format=True)
    assert np.array_equal(display_image(dcmread(tmp_path / "garbage.dcm")), phantom_image)
    # signed 12-bit values written without their sign extended into the high bits: -1 as 0x0FFF
    ds = dx_dataset(phantom_image, "no_voi_12bit", HEADER)
    values = phantom_image.astype(np.int16) * 16 - 2040  # -2040 .. 2040
    ds.PixelRepresentation, ds.PixelData = 1, (values.astype(np.uint16) & 0x0FFF).tobytes()
    ds.save_as(tmp_path / "signed12.dcm", enforce_file_format=True)
    assert np.array_equal(display_image(dcmread(tmp_path / "signed12.dcm")),
                          expected_display(phantom_image, "no_voi_12bit"))


def test_an_invalid_window_falls_back_to_the_percentile_window(tmp_path: Path, phantom_image: np.ndarray) -> None:
    ds = dcmread(_written(tmp_path, phantom_image, "no_voi_12bit", WindowCenter=100, WindowWidth=0))
    assert np.array_equal(display_image(ds), expected_display(phantom_image, "no_voi_12bit"))


def test_a_constant_image_is_refused_as_blank(tmp_path: Path) -> None:
    ds = dcmread(_written(tmp_path, np.full((40, 30), 77, np.uint8), "no_voi_12bit"))
    with pytest.raises(Skipped, match="blank image"):
        display_image(ds)


@pytest.mark.parametrize(("attributes", "reason"), [
    ({"NumberOfFrames": 2}, reasons.MULTI_FRAME),
    ({"SamplesPerPixel": 3}, reasons.NOT_GRAYSCALE),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, reasons.NOT_GRAYSCALE),
    ({"BitsStored": 7}, reasons.BIT_DEPTH),
    ({"BitsAllocated": 32, "BitsStored": 32}, reasons.BIT_DEPTH),
])
def test_pixel_formats_outside_8_to_16_bit_grayscale_single_frames_are_refused(
        tmp_path: Path, phantom_image: np.ndarray, attributes: dict, reason: str) -> None:
    ds = dcmread(_written(tmp_path, phantom_image, "mono2_12bit_rescale", **attributes))
    assert pixel_skip_reason(ds) == reason


def test_unsupported_transfer_syntax_is_named(tmp_path: Path, phantom_image: np.ndarray) -> None:
    ds = dx_dataset(phantom_image, "rle_mono1_12bit", HEADER)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    mpeg = f"{reasons.UNSUPPORTED_SYNTAX}: MPEG2 Main Profile / Main Level"
    assert pixel_skip_reason(dcmread(tmp_path / "mpeg.dcm")) == mpeg
    ds.file_meta.TransferSyntaxUID = generate_uid()  # a private syntax: named as unknown, its UID not shown
    ds.save_as(tmp_path / "private.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True)
    assert pixel_skip_reason(dcmread(tmp_path / "private.dcm")) == f"{reasons.UNSUPPORTED_SYNTAX}: an unknown UID"
