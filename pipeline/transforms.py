"""The preprocessing of Kim et al. 2022 (Methods 2.3) in OpenCV: CLAHE, resize, normalization, and the training
jitter. The torch loader, `hnp predict` and `hnp preview` use these; `pipeline.dali` builds the same steps from
DALI operators (CLAHE identical pixel for pixel, resize within a few gray levels; tests/test_pipeline_equivalence.py).

    gray = decode_gray(jpeg_bytes, where="shards/fold0/fold0-000000.tar: sample r0000042")
    x = preprocess(gray, cfg.data)        # float32 (C, S, S), what the model sees at evaluation

Order of steps, for both loaders: decode to 8-bit gray -> CLAHE at full resolution -> resize to S x S (stretch, or
keep the aspect and pad with black) -> [training: random scale and shift, brightness and contrast jitter] ->
scale to [0, 1], replicate to C channels, subtract the mean and divide by the std per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from hnp.config import AugmentConfig, DataConfig
from hnp.errors import HnpError
from hnp.jpeg import JpegError, inspect_jpeg

CONTRAST_CENTER = 128.0  # contrast jitter pivots around mid-gray, in 8-bit units


def decode_gray(data: bytes, where: str) -> np.ndarray:
    """Decode JPEG bytes to an 8-bit grayscale (H, W) array.

    Args:
        data: the `.jpg` component of a sample.
        where: names the shard and sample in the error, e.g. "fold0/fold0-000000.tar: sample r0000042".

    Raises:
        HnpError: the bytes are not a complete JPEG (checked first: libjpeg decodes a truncated file with a
            warning and gray filler, which would be a silent corruption) or the decoder refuses them.
    """
    try:
        inspect_jpeg(data)
    except JpegError as err:
        raise HnpError(f"{where}: undecodable image: {err}") from None
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise HnpError(f"{where}: undecodable image: OpenCV could not decode the JPEG")
    return gray


def apply_clahe(gray: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization (Zuiderveld 1994) as OpenCV does it; DALI's `fn.clahe`
    gives the same pixels. Returns the input unchanged when `cfg.clahe` is off."""
    if not cfg.clahe:
        return gray
    tiles = (cfg.clahe_tiles, cfg.clahe_tiles)
    return cv2.createCLAHE(clipLimit=cfg.clahe_clip_limit, tileGridSize=tiles).apply(gray)


def resize_square(gray: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Resize an (H, W) image to (S, S): stretched, or aspect kept with the longer side S and black padding."""
    size = cfg.image_size
    if cfg.resize == "stretch":
        return _resize(gray, size, size)
    height, width = gray.shape
    scale = size / max(height, width)
    # half up, as DALI rounds the output size (Python's round() would take 92.5 to 92)
    new_h, new_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
    resized = _resize(gray, new_w, new_h)
    # DALI's centered crop-with-padding puts the odd pixel of padding on the top/left side.
    top, left = (size - new_h + 1) // 2, (size - new_w + 1) // 2
    out = np.zeros((size, size), np.uint8)
    out[top:top + new_h, left:left + new_w] = resized
    return out


def _resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    # Pillow's bilinear filter widens with the shrink factor (antialiasing), as DALI's default linear resize does:
    # within 6 gray levels of DALI at hard edges, 0.2 on average. cv2.INTER_AREA, a box filter, differed by up to
    # 29 at edges (2.5 on average) for about 2/3 of the time.
    return np.array(Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR))  # writable copy


def channel_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units, one value per output channel.

    One channel takes the average of three-value statistics (e.g. ImageNet's): a gray image is their average.
    Three channels repeat a single value.
    """
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if len(mean) == cfg.channels:
        return mean, std
    if cfg.channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean * cfg.channels, std * cfg.channels


def normalize_batch(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (N, S, S) images -> float32 (N, C, S, S), scaled to [0, 1], replicated to C channels and normalized
    per channel, on the images' device. Both loaders hand uint8 over and normalize here, on the training device:
    a quarter (a twelfth, with 3 channels) of the bytes to copy, and the same arithmetic for both."""
    mean, std = channel_stats(cfg)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    scale_t = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1))
    return (images[:, None].float() - mean_t * 255.0) * scale_t  # (N, C, S, S) by broadcasting


def normalize(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """One uint8 (S, S) image -> float32 (C, S, S): `normalize_batch` for a single image."""
    return normalize_batch(torch.from_numpy(np.ascontiguousarray(image))[None], cfg)[0].numpy()


def model_image(gray: np.ndarray, cfg: DataConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (H, W) -> uint8 (S, S): CLAHE, resize, and the training jitter when `rng` is given and
    `cfg.augment.enabled`. What the loaders compute per image before `normalize_batch`."""
    image = resize_square(apply_clahe(gray, cfg), cfg)
    if rng is not None and cfg.augment.enabled:
        image = apply_jitter(image, sample_jitter(rng, cfg.augment, cfg.image_size))
    return image


def preprocess(gray: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The evaluation transform: uint8 (H, W) -> float32 (C, S, S). No randomness."""
    return normalize(model_image(gray, cfg), cfg)


@dataclass(frozen=True)
class Jitter:
    """One draw of the training augmentation. Flips and rotations are deliberately absent (paper, Methods 2.3)."""

    scale: float  # zoom factor about the image center
    shift_x: float  # translation in pixels of the S x S image
    shift_y: float
    brightness: float  # added, in 8-bit units
    contrast: float  # multiplier around CONTRAST_CENTER


def sample_jitter(rng: np.random.Generator, aug: AugmentConfig, size: int) -> Jitter:
    """Draw uniform jitter within the configured ranges (the same ranges the DALI pipeline draws from)."""
    shift_x, shift_y = rng.uniform(-aug.shift, aug.shift, size=2) * size
    return Jitter(scale=float(rng.uniform(1 - aug.scale, 1 + aug.scale)), shift_x=float(shift_x),
                  shift_y=float(shift_y), brightness=float(rng.uniform(-aug.brightness, aug.brightness) * 255),
                  contrast=float(rng.uniform(1 - aug.contrast, 1 + aug.contrast)))


def jitter_matrix(jitter: Jitter, center: float) -> np.ndarray:
    """The 2x3 destination -> source map, in pixels of the S x S image, of a zoom about `center` then a shift.

    Args:
        jitter: the draw.
        center: the image center in OpenCV's convention, (S - 1) / 2: pixel centers sit on integers (DALI puts
            0 at the corner of the first pixel, so `pipeline.dali` uses S / 2 for the same map).
    """
    inv = 1.0 / jitter.scale
    return np.array([[inv, 0.0, center - (center + jitter.shift_x) * inv],
                     [0.0, inv, center - (center + jitter.shift_y) * inv]], np.float32)


def apply_jitter(image: np.ndarray, jitter: Jitter) -> np.ndarray:
    """uint8 (S, S) -> uint8 (S, S): zoom and shift (black outside), then contrast and brightness, rounded and
    clipped to [0, 255] as DALI's `fn.brightness_contrast` does with a uint8 output."""
    size = image.shape[0]
    matrix = jitter_matrix(jitter, center=(size - 1) / 2)
    warped = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = (warped.astype(np.float32) - CONTRAST_CENTER) * jitter.contrast + CONTRAST_CENTER + jitter.brightness
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
