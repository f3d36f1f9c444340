"""A DICOM radiograph's pixels as a viewer displays them, in 8 bits: the grayscale standard display pipeline.

    reason = pixel_skip_reason(ds)        # None: decodable grayscale single frame of 8-16 bits
    gray = display_image(ds)              # (H, W) uint8, or raises Skipped with the reason

Stored values -> Modality LUT (Rescale Slope/Intercept or the Modality LUT Sequence, PS3.3 C.11.1) -> VOI LUT
(the VOI LUT Sequence, else Window Center/Width with its VOI LUT Function, PS3.3 C.11.2) -> MONOCHROME1 inverted ->
pixel padding black -> 0-255. A file with neither a VOI LUT nor a window is shown from the 0.5th to the 99.5th
percentile of its (non-padding) modality values, the "auto window" of common viewers: robust to the collimator edges
and lead markers that a min-max stretch would let decide the contrast.

The Modality and VOI steps are pydicom's own (`apply_modality_lut`, `apply_voi`, `apply_windowing`), applied once to
every possible stored value (2^8 or 2^16 of them) rather than to every pixel: the result is a lookup table, and the
image is one table lookup. On a 2 MP 16-bit radiograph that replaces a dozen float64 passes over the image.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ingest import reasons
from ingest.header import text

PERCENTILE_WINDOW = (0.5, 99.5)  # percent: the window of a file that has no VOI LUT and no window
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class Skipped(Exception):
    """The file is not imported; the message is one of `ingest.reasons` (never a header value)."""


def transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; for an old file without one, the encoding pydicom read it with."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(uid)
    implicit, little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def pixel_skip_reason(ds: Dataset) -> str | None:
    """Why the pixel data cannot become one 8-bit grayscale image, before decoding it; None when it can.

    Args:
        ds: a file with Pixel Data.
    """
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        samples, bits_allocated = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 0)
        bits_stored = int(ds.get("BitsStored") or bits_allocated)
    except (TypeError, ValueError):
        return reasons.CORRUPT
    if frames > 1:
        return reasons.MULTI_FRAME
    if samples != 1 or text(ds, "PhotometricInterpretation").upper() not in MONOCHROME:
        return reasons.NOT_GRAYSCALE
    if bits_allocated not in (8, 16) or not 8 <= bits_stored <= bits_allocated:
        return reasons.BIT_DEPTH
    syntax = transfer_syntax(ds)
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        known = syntax.is_valid and syntax.name != syntax  # an unknown UID's name is the UID itself
        return f"{reasons.UNSUPPORTED_SYNTAX}: {syntax.name if known else 'an unknown UID'}"
    if not syntax.is_compressed and len(ds.PixelData) < int(ds.Rows) * int(ds.Columns) * bits_allocated // 8:
        return reasons.TRUNCATED_PIXELS
    return None


def display_image(ds: Dataset) -> np.ndarray:
    """The radiograph as displayed: (H, W) uint8, 0 black.

    Args:
        ds: a file that passed `pixel_skip_reason`.

    Raises:
        Skipped: the pixel data does not decode, or every pixel shows the same value.
    """
    try:
        stored = ds.pixel_array
    except Exception:  # noqa: BLE001 - any decoder failure means the same to the user: it does not decode
        raise Skipped(reasons.UNDECODABLE) from None
    if stored.ndim != 2 or stored.dtype.itemsize not in (1, 2):
        raise Skipped(reasons.UNDECODABLE)
    # Table positions: the stored value modulo 2^bits, so a signed value indexes as its unsigned bit pattern.
    positions = stored.astype(stored.dtype.newbyteorder("="), copy=False).view(f"u{stored.dtype.itemsize}")
    lut = display_lut(ds, positions, signed=stored.dtype.kind == "i")
    gray = cv2.LUT(positions, lut) if lut.size == 256 else lut[positions]
    low, high, _, _ = cv2.minMaxLoc(gray)
    if low == high:
        raise Skipped(reasons.BLANK)
    return gray


def display_lut(ds: Dataset, positions: np.ndarray, *, signed: bool) -> np.ndarray:
    """The 8-bit displayed value of every stored value, indexed by the value's unsigned bit pattern.

    Args:
        ds: the file (Modality LUT, VOI LUT, photometric interpretation, pixel padding).
        positions: the image's stored values as unsigned bit patterns (uint8 or uint16); read only without a VOI.
        signed: Pixel Representation 1 (two's complement stored values).

    Raises:
        Skipped: nothing but padding, or a constant image, with no VOI to show it by.
    """
    bits = positions.dtype.itemsize * 8
    domain = np.arange(2**bits, dtype=f"u{bits // 8}")
    values = domain.view(f"i{bits // 8}") if signed else domain  # (2^bits,) every stored value, at its position
    modality = apply_modality_lut(values, ds)
    padding = padding_mask(ds, values)
    shown = _voi_fraction(ds, modality, padding, positions)
    if text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        shown = 1.0 - shown  # after the VOI: MONOCHROME1 shows high values dark
    lut = np.rint(np.clip(shown, 0.0, 1.0) * 255).astype(np.uint8)
    lut[padding] = 0
    return lut


def padding_mask(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """True for the stored values that are pixel padding (Pixel Padding Value, up to its Range Limit if given).

    Args:
        ds: the file.
        values: stored values.
    """
    if ds.get("PixelPaddingValue") is None:
        return np.zeros(values.shape, bool)
    first = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    last = first if limit is None else int(limit)
    return (values >= min(first, last)) & (values <= max(first, last))


def _voi_fraction(ds: Dataset, modality: np.ndarray, padding: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Brightness in [0, 1] of each modality value: the VOI LUT Sequence, else the window, else the percentile
    window. A VOI the file gets wrong (pydicom refuses it: a width below 1, an unknown LUT depth) falls back to the
    percentile window, as viewers do, rather than losing the image."""
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore")  # pydicom's warnings quote header values; they must not reach the log
        try:
            if _has_voi_lut(ds):
                depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                return apply_voi(np.rint(modality).astype(np.int64), ds) / float(2**depth - 1)
            if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
                return _window_fraction(ds, modality)
        except (ValueError, TypeError, IndexError, NotImplementedError, AttributeError):
            pass
    return _percentile_fraction(modality, padding, positions)


def _has_voi_lut(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None


def _window_fraction(ds: Dataset, modality: np.ndarray) -> np.ndarray:
    """Window Center/Width through pydicom, rescaled from its output range: the outputs for values far below
    and far above any window are the range pydicom maps to, whatever the VOI LUT Function and rescale."""
    low, high = apply_windowing(np.array([-1e300, 1e300]), ds)
    return (apply_windowing(modality, ds) - low) / (high - low)


def _percentile_fraction(modality: np.ndarray, padding: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """A linear window from the PERCENTILE_WINDOW percentiles (inverted CDF, as numpy's method of that name) of the
    image's non-padding modality values; from their minimum and maximum where those percentiles coincide."""
    counts = np.bincount(positions.ravel(), minlength=modality.size)
    counts[padding] = 0
    order = np.argsort(modality, kind="stable")
    cumulative = np.cumsum(counts[order])
    total = int(cumulative[-1])
    if total == 0:
        raise Skipped(reasons.BLANK)
    ranks = [max(q / 100 * total, 1) for q in (*PERCENTILE_WINDOW, 0, 100)]
    low, high, lowest, highest = (float(modality[order[np.searchsorted(cumulative, r)]]) for r in ranks)
    if high <= low:
        low, high = lowest, highest
    if high <= low:
        raise Skipped(reasons.BLANK)
    return (modality - low) / (high - low)
