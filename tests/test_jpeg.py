from __future__ import annotations

import cv2
import numpy as np
import pytest

from hnp.jpeg import JpegError, inspect_jpeg, inspect_jpeg_file


def _jpeg(height: int = 40, width: int = 30, channels: int = 1, **params: int) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, channels), dtype=np.uint8).squeeze()
    flags = [int(k) for pair in params.items() for k in (getattr(cv2, pair[0]), pair[1])]
    ok, buf = cv2.imencode(".jpg", image, flags)
    assert ok
    return buf.tobytes()


def test_reads_size_and_components_of_good_jpegs() -> None:
    gray = inspect_jpeg(_jpeg(40, 30))
    colour = inspect_jpeg(_jpeg(40, 30, channels=3))
    progressive = inspect_jpeg(_jpeg(40, 30, IMWRITE_JPEG_PROGRESSIVE=1))
    assert (gray.width, gray.height, gray.components, gray.precision) == (30, 40, 1, 8)
    assert colour.components == 3
    assert progressive.mode == "progressive"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (_jpeg()[:200], "truncated JPEG"),
        (_jpeg()[:2], "truncated JPEG: no frame header"),
        (cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes(), "not a JPEG: a PNG file"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 64, "not a JPEG: a DICOM file"),
        (b"hello world", "not a JPEG: starts with bytes 68 65 6c 6c"),
    ],
)
def test_rejects_what_decoders_cannot_read(data: bytes, reason: str) -> None:
    with pytest.raises(JpegError, match=reason):
        inspect_jpeg(data)


def test_rejects_cmyk_and_12_bit_frames() -> None:
    good = bytearray(_jpeg())
    sof = good.index(b"\xff\xc0")
    cmyk, twelve_bit = bytearray(good), bytearray(good)
    cmyk[sof + 9] = 4  # component count
    twelve_bit[sof + 4] = 12  # sample precision
    with pytest.raises(JpegError, match="4-component"):
        inspect_jpeg(bytes(cmyk))
    with pytest.raises(JpegError, match="12-bit"):
        inspect_jpeg(bytes(twelve_bit))


def test_file_check_reads_head_and_tail_and_agrees_with_bytes(tmp_path) -> None:
    good, truncated = tmp_path / "good.jpg", tmp_path / "truncated.jpg"
    data = _jpeg(600, 500)
    good.write_bytes(data)
    truncated.write_bytes(data[: len(data) // 2])
    assert inspect_jpeg_file(good) == inspect_jpeg(data)
    with pytest.raises(JpegError, match="truncated JPEG: no end-of-image marker"):
        inspect_jpeg_file(truncated)
    with pytest.raises(JpegError, match="file not found"):
        inspect_jpeg_file(tmp_path / "missing.jpg")


def test_file_check_finds_a_frame_header_behind_long_metadata(tmp_path) -> None:
    data = _jpeg(40, 30)
    # Five 64 KB comment segments (COM, 0xFFFE) push the frame header past the first 256 KB read.
    comment = b"\xff\xfe" + (65535).to_bytes(2, "big") + b"x" * 65533
    path = tmp_path / "long_metadata.jpg"
    path.write_bytes(data[:2] + comment * 5 + data[2:])
    assert inspect_jpeg_file(path).width == 30
