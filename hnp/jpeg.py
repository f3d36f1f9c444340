"""Cheap JPEG checks from the header and the end marker, without decoding the pixels.

Validation and sharding look at every one of ~180k radiographs; a full decode of each would cost an hour
of CPU, while reading the markers costs microseconds and catches what actually goes wrong in PACS exports:
empty or truncated files, PNG or DICOM files named `.jpg`, and encodings the decoders refuse.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Start-of-frame markers: C0-CF except C4 (DHT), C8 (reserved) and CC (DAC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SUPPORTED_SOF = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_NO_FRAME_HEADER = "truncated JPEG: no frame header"
_SIGNATURES = {b"\x89PNG": "a PNG file", b"DICM": "a DICOM file", b"II*\x00": "a TIFF file", b"MM\x00*": "a TIFF file"}


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int  # 1 = grayscale, 3 = YCbCr colour
    precision: int  # bits per sample
    mode: str  # "baseline", "extended sequential" or "progressive"


class JpegError(ValueError):
    """The bytes are not a JPEG this project can decode; the message says why."""


def inspect_jpeg(data: bytes) -> JpegInfo:
    """Read the frame header of a JPEG and check the file is complete.

    Raises:
        JpegError: empty, not a JPEG (names PNG/DICOM/TIFF when it recognises them), truncated (no end
            marker), or an encoding we don't decode (lossless, arithmetic, 12/16-bit, CMYK).
    """
    return _inspect(head=data, tail=data[-_TAIL_BYTES:], size=len(data))


def inspect_jpeg_file(path: str | Path) -> JpegInfo:
    """`inspect_jpeg` reading only the file's head and tail; a missing or unreadable file raises JpegError too."""
    return inspect_jpeg_file_stat(path)[0]


def inspect_jpeg_file_stat(path: str | Path) -> tuple[JpegInfo, os.stat_result]:
    """`inspect_jpeg_file`, and the status of the file it read: whoever reads the file later can compare size and
    modification time to know the bytes are the ones checked.

    Raises:
        JpegError: as `inspect_jpeg_file`.
    """
    try:
        # os-level calls: Python's buffered file objects cost more than the few reads (~15 us a file in all)
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            size = stat.st_size
            head = os.pread(fd, _HEAD_BYTES, 0)
            tail = os.pread(fd, _TAIL_BYTES, max(size - _TAIL_BYTES, 0))
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise JpegError("file not found") from None
    except OSError as err:
        raise JpegError(f"unreadable: {err.strerror or err}") from None
    if size > len(head) and _frame_header_beyond(head):
        return inspect_jpeg(Path(path).read_bytes()), stat  # metadata segments longer than the head: read it all
    return _inspect(head, tail, size), stat


# Frame headers sit after the metadata segments, within the first few KB of nearly every radiograph (a file
# whose frame header lies further is read whole).
_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 64


def _inspect(head: bytes, tail: bytes, size: int) -> JpegInfo:
    if size == 0:
        raise JpegError("empty file (0 bytes)")
    if not head.startswith(SOI):
        raise JpegError(f"not a JPEG: {_recognise(head)}")
    info = _read_frame_header(head)
    if not tail.rstrip(b"\x00").endswith(EOI):
        raise JpegError("truncated JPEG: no end-of-image marker")
    if info.precision != 8:
        raise JpegError(f"{info.precision}-bit JPEG: only 8-bit samples are supported")
    if info.components not in (1, 3):
        raise JpegError(f"{info.components}-component JPEG (CMYK?): only grayscale or colour are supported")
    return info


def _frame_header_beyond(head: bytes) -> bool:
    try:
        _read_frame_header(head)
    except JpegError as err:
        return str(err) == _NO_FRAME_HEADER
    return False


def _recognise(data: bytes) -> str:
    if len(data) > 132 and data[128:132] == b"DICM":
        return "a DICOM file"
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    return f"starts with bytes {data[:4].hex(' ')}"


def _read_frame_header(data: bytes) -> JpegInfo:
    """Walk the marker segments up to the first start-of-frame."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise JpegError(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            return _parse_sof(marker, data[pos + 4 : pos + 2 + length])
        if marker == 0xDA:
            raise JpegError("corrupt JPEG: image data before any frame header")
        pos += 2 + length
    raise JpegError(_NO_FRAME_HEADER)


def _parse_sof(marker: int, segment: bytes) -> JpegInfo:
    if len(segment) < 6:
        raise JpegError("truncated JPEG: short frame header")
    if marker not in _SUPPORTED_SOF:
        raise JpegError(
            f"unsupported JPEG encoding (start-of-frame 0x{marker:02X}: lossless, hierarchical or arithmetic)"
        )
    precision, height, width, components = struct.unpack(">BHHB", segment[:6])
    if width == 0 or height == 0:
        raise JpegError(f"JPEG with zero size ({width}x{height})")
    return JpegInfo(width, height, components, precision, _SUPPORTED_SOF[marker])
