"""One DICOM file to one 8-bit grayscale JPEG and its record: the work of an import process.

    record = convert_file(Job(path, "PAT1/IM0001", slot=7, out=Path("out"), settings=ConvertSettings()))
    record["reason"]        # None: imported as out/images/0000007.jpg; else one of ingest.reasons

The JPEG holds pixels only: OpenCV writes a JFIF header and the image, no EXIF or comment segment, and the file
is named by its slot number, never by a header value.
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from hnp.errors import HnpError
from hnp.files import naming_a_full_disk
from ingest import reasons
from ingest.header import header_skip_reason, image_meta
from ingest.pixels import Skipped, display_image, pixel_skip_reason

IMAGES_DIR = "images"
# A record: the job (slot, source, size, mtime_ns), its outcome (image or reason) and, if imported, the metadata.
RECORD_COLUMNS: tuple[str, ...] = ("slot", "source", "size", "mtime_ns", "image", "reason", "patient_id", "study_id",
                                   "sop_instance_uid", "xray_date", "age", "sex", "view")
_TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)  # Data Set Trailing Padding: may be cut without losing anything
_UNDEFINED_LENGTH = 0xFFFFFFFF
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@dataclass(frozen=True)
class ConvertSettings:
    """What every file of one import is held to (the import refuses to resume with other settings).

    Args:
        any_body_part: keep radiographs whatever their body part and descriptions say.
        keep_burned_in: keep images flagged BurnedInAnnotation = YES.
        jpeg_quality: quality of the written JPEGs, 1-100.
    """

    any_body_part: bool = False
    keep_burned_in: bool = False
    jpeg_quality: int = 95


@dataclass(frozen=True)
class Job:
    """One file to convert.

    Args:
        path: the file.
        source: its name in skipped.csv (relative to the import's root).
        slot: its number in this import; an imported file becomes images/<slot:07d>.jpg.
        out: the import's output folder.
        settings: the import's settings.
        size, mtime_ns: the file's size and modification time when listed (None if it could not be stat'ed): a
            resumed import redoes a file whose size or time differ from its record.
    """

    path: Path
    source: str
    slot: int
    out: Path
    settings: ConvertSettings
    size: int | None = None
    mtime_ns: int | None = None


def image_name(slot: int) -> str:
    """The imported image's path relative to the output folder: a number, never a header value."""
    return f"{IMAGES_DIR}/{slot:07d}.jpg"


def quiet_pydicom() -> None:
    """Keep pydicom's log messages (they quote header values and paths) out of every log handler."""
    logger = logging.getLogger("pydicom")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False


def keep_freed_memory() -> None:
    """Keep freed buffers in this process's heap (glibc only; elsewhere nothing to do).

    glibc hands a freed buffer above its mmap threshold back to the kernel and maps fresh zero-filled pages for the
    next one; with two or three 10 MB buffers per radiograph, allocated and freed in changing order, its adaptive
    threshold kept doing so, and the page faults doubled the time per file (measured on 600 files of 10 MB, one
    process: 46 ms a file, 23 ms with this setting). Buffers up to 32 MB (glibc's maximum; a 3000 x 3000 16-bit
    image is 18 MB) now come from the heap, which keeps up to 512 MB freed before trimming.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(_M_TRIM_THRESHOLD, 512 * 2**20)


def convert_file(job: Job) -> dict:
    """Read, check, display and write one file; the record of what happened (see `ingest.journal`).

    Args:
        job: the file and where its image goes.
    """
    record: dict = {"slot": job.slot, "source": job.source, "size": job.size, "mtime_ns": job.mtime_ns,
                    "image": None, "reason": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns as it converts values, quoting them: never to the console
        return record | _convert(job)


def _convert(job: Job) -> dict:
    try:
        if not job.path.is_file():  # a pipe would block the read forever
            return {"reason": reasons.NOT_A_FILE if job.path.exists() else reasons.MISSING}
        ds = read_dicom(job.path)
        reason = header_skip_reason(ds, any_body_part=job.settings.any_body_part,
                                    keep_burned_in=job.settings.keep_burned_in) or pixel_skip_reason(ds)
        if reason:
            raise Skipped(reason)
        meta = image_meta(ds)
        gray = display_image(ds)
        _write_jpeg(job.out / image_name(job.slot), gray, job.settings.jpeg_quality)
    except Skipped as skipped:
        return {"reason": str(skipped)}
    except HnpError:
        raise
    except FileNotFoundError:
        return {"reason": reasons.MISSING}
    except OSError:
        return {"reason": reasons.UNREADABLE}
    except Exception as err:  # noqa: BLE001 - one odd file must not stop an import of thousands; it is reported
        return {"reason": f"{reasons.UNEXPECTED}: {type(err).__name__}"}
    return {"image": image_name(job.slot), "patient_id": meta.patient_id, "study_id": meta.study_id,
                     "sop_instance_uid": meta.sop_instance_uid,
                     "xray_date": meta.xray_date.isoformat() if meta.xray_date else None, "age": meta.age,
                     "sex": meta.sex, "view": meta.view}


def read_dicom(path: Path) -> Dataset:
    """The file as pydicom reads it, with or without the Part 10 preamble (old files have none).

    Raises:
        Skipped: not DICOM, unreadable, corrupt or truncated.
        OSError: the file cannot be opened.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(path, force=True)
        except InvalidDicomError:
            raise Skipped(reasons.NOT_DICOM) from None
        except OSError:
            raise
        except Exception:  # noqa: BLE001 - whatever the parser trips on, the header is broken
            raise Skipped(reasons.CORRUPT) from None
    # force=True parses anything; a file is DICOM if it had the preamble or reads as a dataset with a SOP class
    if ds.preamble is None and "SOPClassUID" not in ds:
        raise Skipped(reasons.NOT_DICOM)
    if any("End of file" in str(w.message) for w in caught) or _last_element_cut(ds):
        raise Skipped(reasons.TRUNCATED)
    return ds


def _last_element_cut(ds: Dataset) -> bool:
    """pydicom stops quietly at the end of a file: an element shorter than its own length field was cut there."""
    if not len(ds):
        return False
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or last.tag == _TRAILING_PADDING or last.length == _UNDEFINED_LENGTH:
        return False
    return last.value is not None and len(last.value) < last.length


def _write_jpeg(path: Path, gray, quality: int) -> None:
    ok, encoded = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise Skipped(reasons.UNDECODABLE)
    # No temporary file and rename (1.5 ms a file): an image counts only once its record is journaled, after this
    # write; one cut short by a crash has no record, and the import deletes images without one when it ends.
    try:
        with naming_a_full_disk(path):
            path.write_bytes(encoded.tobytes())
    except OSError as err:  # the output's fault (a folder gone; a full disk above), not the file's: the import stops
        raise HnpError(f"{path}: cannot write the image: {err.strerror or err}") from None
