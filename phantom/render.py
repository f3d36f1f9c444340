"""Rasterise a view layout into an 8-bit radiograph: pose, soft tissue, bone texture, blur, exposure, noise, JPEG.

All randomness comes from the generator passed in, so an image is a pure function of (patient, view, generator).
The pose (tilt, shift, scale) is applied to the millimetre shapes before drawing, so the disc truth and the sign
boxes returned with the image are exact in the pixel coordinates of the written image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from hnp.levels import LEVELS
from phantom.anatomy import Patient
from phantom.views import AIR, Shape, ViewLayout, build_layout, drawn_signs, rotation

FIELD_MM = (280.0, 220.0)  # (height, width) of the field of view at pose scale 1
ANCHOR_Y = 0.45  # the anchor (between L1 and S1) sits this far down the image
SOFT_DOWNSAMPLE = 4  # soft tissue is smooth: paint it at 1/4 resolution and upsample
RIM_MM = 1.2  # cortical bone thickness
JPEG_QUALITY = 92
# The brightest attenuation of a vertebral body over muscle (texture and heel effect included) maps at most to this
# fraction of white: bone is never burnt out, so signs inside it (sclerosis) stay visible.
BONE_ATTENUATION, BONE_WHITE = 0.85, 0.97
SUBPIXEL_BITS = 4  # cv2 drawing with 1/16-pixel vertex precision, so disc heights are not rounded to pixels


@dataclass(frozen=True)
class Radiograph:
    """One rendered film and its truth in its own pixels.

    Args:
        pixels: (H, W) uint8 image.
        discs: each level's disc centre, half-height, half-width and angle (see `disc_truth`).
        boxes: (5, 7, 4) per level and sign (LEVELS x phantom.signs.SIGNS) the box x0, y0, x1, y1 (pixels,
            clipped to the image) where the sign lies, whether or not this film shows it.
    """

    pixels: np.ndarray
    discs: dict[str, float]
    boxes: np.ndarray


@dataclass(frozen=True)
class Pose:
    """Per-image patient positioning: scale factor, tilt in degrees, shift as fractions of the image size."""

    scale: float
    tilt: float
    shift_x: float
    shift_y: float


@dataclass(frozen=True)
class Exposure:
    """Per-image acquisition: brightness = offset + gain * attenuation, then gamma; blur and noise in pixels."""

    gain: float
    offset: float
    gamma: float
    blur_sigma: float
    noise_sigma: float
    heel: float  # vertical exposure gradient (anode heel effect), fraction per half image


def sample_pose(rng: np.random.Generator) -> Pose:
    """Small random tilt (+-5 deg), shift (+-4%) and scale (+-8%)."""
    return Pose(scale=rng.uniform(0.92, 1.08), tilt=rng.uniform(-5.0, 5.0),
                shift_x=rng.uniform(-0.04, 0.04), shift_y=rng.uniform(-0.04, 0.04))


def sample_exposure(rng: np.random.Generator, height: int) -> Exposure:
    """Exposure and contrast that vary enough between images that histogram equalisation (CLAHE) matters, windowed
    so that a vertebral body stays below white (brighter signs such as sclerosis may clip, the body may not).

    Args:
        height: image height in pixels; blur scales with it.
    """
    gain, offset = rng.uniform(0.5, 1.3), rng.uniform(0.0, 0.2)
    return Exposure(gain=min(gain, (BONE_WHITE - offset) / BONE_ATTENUATION), offset=offset,
                    gamma=float(np.exp(rng.uniform(-0.45, 0.4))), blur_sigma=rng.uniform(0.7, 1.6) * height / 512,
                    noise_sigma=rng.uniform(0.01, 0.035), heel=rng.uniform(-0.15, 0.15))


def view_matrix(size: tuple[int, int], pose: Pose) -> np.ndarray:
    """(2, 3) affine map from layout millimetres to pixel coordinates of an image of `size` (H, W)."""
    height, width = size
    px_per_mm = min(height / FIELD_MM[0], width / FIELD_MM[1]) * pose.scale
    linear = rotation(np.radians(pose.tilt)) * px_per_mm
    origin = (width * (0.5 + pose.shift_x), height * (ANCHOR_Y + pose.shift_y))
    return np.column_stack([linear, origin])


def disc_truth(layout: ViewLayout, matrix: np.ndarray, tilt: float) -> dict[str, float]:
    """Each disc's centre, half-height, half-width (pixels) and angle, keyed `<level>_<field>` (LEVELS spelling).

    The angle `a` (degrees) gives the disc's across direction (cos a, sin a) in image coordinates (x right,
    y down); its height runs along (-sin a, cos a). Together they define the disc region as a rotated box.

    Args:
        layout: the view's geometry in mm.
        matrix: the mm-to-pixel map of the image.
        tilt: the pose tilt in degrees (part of `matrix`, given separately to avoid decomposing it).
    """
    px_per_mm = float(np.hypot(*matrix[:, 0]))
    truth: dict[str, float] = {}
    for level, disc in zip(LEVELS, layout.discs, strict=True):
        x, y = matrix[:, :2] @ disc.center + matrix[:, 2]
        truth |= {f"{level}_x": float(x), f"{level}_y": float(y),
                  f"{level}_half_height": disc.half_height * px_per_mm,
                  f"{level}_half_width": disc.half_width * px_per_mm,
                  f"{level}_angle": float(np.degrees(disc.theta) + tilt)}
    return truth


def sign_boxes(layout: ViewLayout, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(5, 7, 4) pixel boxes x0, y0, x1, y1 of the layout's sign regions, clipped to an image of `size` (H, W)."""
    corners = np.array(layout.regions) @ matrix[:, :2].T + matrix[:, 2]  # (5, 7, 4 corners, 2)
    low, high = corners.min(axis=2), corners.max(axis=2)
    limits = np.array([size[1], size[0]], dtype=float)
    return np.concatenate([np.clip(low, 0.0, limits), np.clip(high, 0.0, limits)], axis=-1)


def render_view(patient: Patient, view: str, rng: np.random.Generator, size: tuple[int, int]) -> Radiograph:
    """Draw one radiograph of a patient with what this view shows of its signs, and its truth.

    Args:
        patient: whose spine to draw.
        view: AP, LAT, OBL_L, OBL_R, FLEX or EXT.
        rng: this image's generator.
        size: (height, width) in pixels.
    """
    drawn = drawn_signs(patient, view, rng)
    layout = build_layout(patient.anatomy, drawn, view, rng)
    pose = sample_pose(rng)
    exposure = sample_exposure(rng, size[0])
    matrix = view_matrix(size, pose)
    attenuation = _soft_layer(layout.soft, matrix, size, exposure.heel) + _bone_layer(layout.bone, matrix, size, rng)
    _mark_side(attenuation, rng)
    return Radiograph(pixels=_expose(attenuation, exposure, rng), discs=disc_truth(layout, matrix, pose.tilt),
                      boxes=sign_boxes(layout, matrix, size))


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline grayscale JPEG bytes of an 8-bit image."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG")
    return buffer.tobytes()


def _paint(canvas: np.ndarray, shapes: list[Shape], matrix: np.ndarray) -> None:
    """Draw shapes in order onto a float canvas; `matrix` maps mm to the canvas's pixels."""
    px_per_mm = float(np.hypot(*matrix[:, 0]))
    rim = max(1, round(RIM_MM * px_per_mm))
    linear, origin = matrix[:, :2].T, matrix[:, 2]
    for shape in shapes:
        points = np.round((shape.points @ linear + origin) * (1 << SUBPIXEL_BITS)).astype(np.int32)
        if shape.line:
            thickness = max(1, round(shape.line * px_per_mm))
            cv2.polylines(canvas, [points], False, shape.value, thickness, cv2.LINE_8, SUBPIXEL_BITS)
            continue
        cv2.fillPoly(canvas, [points], shape.value, cv2.LINE_8, SUBPIXEL_BITS)
        if shape.rim:
            cv2.polylines(canvas, [points], True, shape.rim, rim, cv2.LINE_8, SUBPIXEL_BITS)


def _soft_layer(shapes: list[Shape], matrix: np.ndarray, size: tuple[int, int], heel: float) -> np.ndarray:
    """Soft tissue painted at low resolution, shaded by the heel effect, upsampled (which also blurs it)."""
    height, width = size
    small = np.full((-(-height // SOFT_DOWNSAMPLE), -(-width // SOFT_DOWNSAMPLE)), AIR, np.float32)
    _paint(small, shapes, matrix / SOFT_DOWNSAMPLE)
    small *= np.linspace(1 - heel, 1 + heel, small.shape[0], dtype=np.float32)[:, None]
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _bone_layer(shapes: list[Shape], matrix: np.ndarray, size: tuple[int, int],
                rng: np.random.Generator) -> np.ndarray:
    """Bones painted at full resolution with a mottled trabecular texture."""
    height, width = size
    bone = np.zeros(size, np.float32)
    _paint(bone, shapes, matrix)
    grain = 1.0 + 0.12 * rng.standard_normal((max(1, height // 3), max(1, width // 3)), dtype=np.float32)
    return cv2.multiply(bone, cv2.resize(grain, (width, height), interpolation=cv2.INTER_LINEAR))


def _mark_side(image: np.ndarray, rng: np.random.Generator) -> None:
    """Burn in a lead side marker ("L" or "R") near a top corner, as radiographers do."""
    height, width = image.shape
    scale = height / 400
    thickness = max(1, round(2 * scale))
    letter = "LR"[int(rng.integers(0, 2))]
    (text_w, text_h), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    patch = np.zeros((text_h + 2 * thickness, text_w + 2 * thickness), np.uint8)  # putText draws on 8-bit only
    cv2.putText(patch, letter, (thickness, text_h + thickness), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness,
                cv2.LINE_AA)
    x = min(int(width * (0.04 + 0.82 * rng.integers(0, 2) + rng.uniform(0, 0.05))), width - patch.shape[1])
    y = min(int(height * rng.uniform(0.03, 0.08)), height - patch.shape[0])
    image[y:y + patch.shape[0], x:x + patch.shape[1]] += patch.astype(np.float32) * (1.4 / 255)


@functools.lru_cache(maxsize=4)
def _noise_tile(height: int, width: int) -> np.ndarray:
    """A fixed (2H, 2W) field of unit Gaussian noise; each image takes a random window of it, which costs a
    slice instead of 200k fresh normal draws (the single most expensive step otherwise)."""
    return np.random.default_rng(20221).standard_normal((2 * height, 2 * width), dtype=np.float32)


def _expose(attenuation: np.ndarray, exposure: Exposure, rng: np.random.Generator) -> np.ndarray:
    """Blur, add detector noise, map to 8 bits with the image's gain, offset and gamma."""
    height, width = attenuation.shape
    image = cv2.GaussianBlur(attenuation, (0, 0), exposure.blur_sigma)
    top, left = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
    image = cv2.scaleAdd(_noise_tile(height, width)[top:top + height, left:left + width], exposure.noise_sigma, image)
    # |.| only touches noise dipping below zero in the air around the body
    image = cv2.convertScaleAbs(image, alpha=255 * exposure.gain, beta=255 * exposure.offset)
    lut = np.round(255 * (np.arange(256) / 255) ** exposure.gamma).astype(np.uint8)
    return cv2.LUT(image, lut)
