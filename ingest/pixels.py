"""A DICOM radiograph's pixels as a viewer displays them, in 8 bits: the grayscale standard display pipeline.

    reason = pixel_skip_reason(ds)        # None: decodable grayscale single frame of 8-16 bits
    gray = display_image(ds)              # (H, W) uint8, or raises Skipped with the reason

Stored values -> Modality LUT (Rescale Slope/Intercept or the Modality LUT Sequence, PS3.3 C.11.1) -> VOI LUT
(the VOI LUT Sequence, else Window Center/Width with its VOI LUT Function, PS3.3 C.11.2) -> MONOCHROME1 inverted ->
pixel padding black -> 0-255. A file with neither a VOI LUT nor a window is shown from the 0.5th to the 99.5th
percentile of its (non-padding) modality values, the "auto window" of common viewers: robust to the collimator edges
and lead markers that a min-max stretch would let decide the contrast.

The Modality and VOI steps are pydicom's own (`apply_modality_lut`, `apply_voi`, `apply_windowing`), applied once to
every possible stored value (2^BitsStored of them) rather than to every pixel: the result is a lookup table, and the
image is one table lookup; on a 5 MP 16-bit radiograph that replaces a dozen float64 passes over the image. When the
table is a straight ramp (a linear window: checked value by value) OpenCV computes it instead, in a third of the
time of the lookup. The table reads only the low Bits Stored bits of a pixel, so pydicom need not copy the image to
clear the others.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ingest import reasons
from ingest.header import text

PERCENTILE_WINDOW = (0.5, 99.5)  # percent: the window of a file that has no VOI LUT and no window
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_LOOKUP_BLOCK = 1 << 19  # pixels per np.take call in `apply_lut`
# Halves round up: round-number windows put many values exactly half-way between two grey levels, where the float64
# table and OpenCV's float32 ramp would otherwise round apart. 1/1000 of a grey level is far above float32's error.
HALF_UP = 1e-3


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


@dataclass(frozen=True)
class Ramp:
    """A display table that is a straight ramp: `saturate(round(|alpha * held + beta|))` of every stored value, where
    `held` is the value held at `edge` on the side where the ramp would go below black. OpenCV computes that for a
    whole 16-bit image (min/max, then convertScaleAbs) in a third of the time of a table lookup."""

    alpha: float
    beta: float
    edge: int

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(H, W) uint8 of (H, W) stored values (int or uint, 8 or 16 bits)."""
        held = cv2.max(values, self.edge) if self.alpha > 0 else cv2.min(values, self.edge)
        return cv2.convertScaleAbs(held, alpha=self.alpha, beta=self.beta)


@dataclass(frozen=True)
class DisplayTable:
    """How every pixel value is displayed.

    Attributes:
        lut: (2^8 or 2^16,) uint8, the displayed value of each bit pattern of a pixel.
        values: (lowest, highest) stored value (2^BitsStored of them).
        ramp: the same table as a Ramp over the stored values, when it is one (checked value by value); else None.
    """

    lut: np.ndarray
    values: tuple[int, int]
    ramp: Ramp | None

    def apply(self, stored: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The displayed image: by the ramp when there is one and no pixel has bits beyond Bits Stored, else by a
        lookup of each pixel's bit pattern.

        Args:
            stored: (H, W) pixel values, native byte order.
            positions: the same pixels as unsigned bit patterns.
        """
        if self.ramp is not None and self.lut.size > 256:
            low, high, _, _ = cv2.minMaxLoc(stored)
            if self.values[0] <= low and high <= self.values[1]:
                return self.ramp.apply(stored)
        return apply_lut(self.lut, positions)


def display_image(ds: Dataset) -> np.ndarray:
    """The radiograph as displayed: (H, W) uint8, 0 black.

    Args:
        ds: a file that passed `pixel_skip_reason`.

    Raises:
        Skipped: the pixel data does not decode, or every pixel shows the same value.
    """
    try:
        # the table ignores the unused high bits itself: no corrected copy of the image, a view of native data
        ds.pixel_array_options(correct_unused_bits=False, view_only=True)
        stored = ds.pixel_array
    except Exception:  # noqa: BLE001 - any decoder failure means the same to the user: it does not decode
        raise Skipped(reasons.UNDECODABLE) from None
    if stored.ndim != 2 or stored.dtype.itemsize not in (1, 2):
        raise Skipped(reasons.UNDECODABLE)
    stored = stored.astype(stored.dtype.newbyteorder("="), copy=False)
    # Table positions: the stored bits as an unsigned number, so a signed value indexes as its bit pattern.
    positions = stored.view(f"u{stored.dtype.itemsize}")
    gray = display_table(ds, positions).apply(stored, positions)
    low, high, _, _ = cv2.minMaxLoc(gray)
    if low == high:
        raise Skipped(reasons.BLANK)
    return gray


def display_table(ds: Dataset, positions: np.ndarray) -> DisplayTable:
    """How each pixel value is displayed, computed for the 2^BitsStored stored values and spread over the bit
    patterns that mean each of them.

    Args:
        ds: the file (bits, Modality LUT, VOI LUT, photometric interpretation, pixel padding).
        positions: the image's pixels as unsigned bit patterns (uint8 or uint16); read only without a VOI.

    Raises:
        Skipped: nothing but padding, or a constant image, with no VOI to show it by.
    """
    bits_stored, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation") or 0) == 1
    meaning = stored_values(positions.dtype.itemsize * 8, bits_stored, signed)  # (2^bits,) value of each pattern
    lowest = -(1 << (bits_stored - 1)) if signed else 0
    values = np.arange(lowest, lowest + (1 << bits_stored))  # (2^bits_stored,) every stored value
    modality = apply_modality_lut(values, ds)
    padding = padding_mask(ds, values)
    shown = _voi_fraction(ds, modality, padding, lambda: _value_counts(positions, meaning - lowest, values.size))
    if text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        shown = 1.0 - shown  # after the VOI: MONOCHROME1 shows high values dark
    by_value = np.rint(np.clip(shown * 255 + HALF_UP, 0, 255)).astype(np.uint8)
    by_value[padding] = 0
    ramp = _as_ramp(values.astype(f"{'i' if signed else 'u'}{positions.dtype.itemsize}"), shown, by_value)
    return DisplayTable(by_value[meaning - lowest], (int(values[0]), int(values[-1])), ramp)


def _as_ramp(values: np.ndarray, shown: np.ndarray, by_value: np.ndarray) -> Ramp | None:
    """The Ramp that gives exactly `by_value` for every one of `values`, or None (a VOI LUT or sigmoid, padding in
    the picture, a ramp steeper than one grey level per value, or a rounding that float32 makes differently).

    Args:
        values: every stored value, in the image's dtype.
        shown: their brightness in [0, 1] before clipping and rounding.
        by_value: their displayed 8-bit value.
    """
    sloped = np.flatnonzero((by_value > 0) & (by_value < 255))
    if sloped.size < 2:
        return None
    first, last = int(sloped[0]), int(sloped[-1])
    alpha = 255 * float(shown[last] - shown[first]) / float(int(values[last]) - int(values[first]))
    if alpha == 0:
        return None
    beta = 255 * float(shown[first]) - alpha * int(values[first]) + HALF_UP
    # the value from which on the ramp is above -0.5 (so |.| changes nothing once rounded), on the dark side
    edge = math.ceil((-0.5 - beta) / alpha) if alpha > 0 else math.floor((-0.5 - beta) / alpha)
    ramp = Ramp(alpha, beta, int(np.clip(edge, int(values[0]), int(values[-1]))))
    return ramp if np.array_equal(ramp.apply(values.reshape(1, -1)).ravel(), by_value) else None


def stored_values(bits_allocated: int, bits_stored: int, signed: bool) -> np.ndarray:
    """The stored value each bit pattern of a pixel means: its low `bits_stored` bits, sign-extended when signed
    (PS3.5 8.1.1: the unused high bits are not part of the value, whatever they hold).

    Args:
        bits_allocated: 8 or 16.
        bits_stored: at most bits_allocated.
        signed: two's complement values (Pixel Representation 1).
    """
    values = np.arange(2**bits_allocated, dtype=np.int64) & ((1 << bits_stored) - 1)
    if signed:
        values[values >= 1 << (bits_stored - 1)] -= 1 << bits_stored
    return values


def apply_lut(lut: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`lut[positions]` as a uint8 image, fast: OpenCV's LUT for 8 bits; for 16 bits numpy's take, by blocks of
    rows, whose int64 copy of the indices then stays in the cache (5.6 ms instead of 12 on a 5 MP image).

    Args:
        lut: (256,) or (65536,) uint8.
        positions: (H, W) uint8 or uint16 indices.
    """
    if lut.size == 256:
        return cv2.LUT(positions, lut)
    gray = np.empty(positions.shape, np.uint8)
    rows = max(1, _LOOKUP_BLOCK // positions.shape[1])
    for top in range(0, positions.shape[0], rows):
        np.take(lut, positions[top:top + rows], out=gray[top:top + rows])
    return gray


def _value_counts(positions: np.ndarray, value_index: np.ndarray, size: int) -> np.ndarray:
    """Pixels per stored value: OpenCV's histogram of the bit patterns (4x faster than np.bincount on a 5 MP 16-bit
    image; its float32 counts are exact below 2^24 pixels per pattern), added up by the value each pattern means."""
    bins = 2 ** (positions.dtype.itemsize * 8)
    by_pattern = cv2.calcHist([positions], [0], None, [bins], [0, bins]).ravel().astype(np.int64)
    return np.bincount(value_index, weights=by_pattern, minlength=size).astype(np.int64)


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


def _voi_fraction(ds: Dataset, modality: np.ndarray, padding: np.ndarray,
                  counts: Callable[[], np.ndarray]) -> np.ndarray:
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
    return _percentile_fraction(modality, padding, counts())


def _has_voi_lut(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None


def _window_fraction(ds: Dataset, modality: np.ndarray) -> np.ndarray:
    """Window Center/Width through pydicom, rescaled from its output range: the outputs for values far below
    and far above any window are the range pydicom maps to, whatever the VOI LUT Function and rescale."""
    low, high = apply_windowing(np.array([-1e300, 1e300]), ds)
    return (apply_windowing(modality, ds) - low) / (high - low)


def _percentile_fraction(modality: np.ndarray, padding: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A linear window from the PERCENTILE_WINDOW percentiles (inverted CDF, as numpy's method of that name) of the
    image's non-padding modality values; from their minimum and maximum where those percentiles coincide."""
    counts = np.where(padding, 0, counts)
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
