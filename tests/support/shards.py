"""Test shards for the pipeline tests: the shared tiny manifest, its images repainted as smooth radiograph-like
pictures of varied size and aspect, sharded by the real `hnp shard` library (several small tars per split)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.dataset import SampleEntry
from sharding.build import ShardOptions, shard_manifest
from support.manifests import write_manifest

MARK = 255  # a bright block in the top-left quadrant of every image: a flip would move it


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Soft gradients and blobs with mild noise: resize differences behave as on radiographs, unlike pure noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 60 + 80 * (yy / height) + 40 * np.sin(xx / rng.uniform(20, 50)) * np.cos(yy / rng.uniform(20, 50))
    image += rng.normal(0, 6, (height, width))
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.2)
    image[height // 8:height // 3, width // 8:width // 3] = MARK
    return np.clip(image, 0, 255).astype(np.uint8)


def build_shards(folder: Path, patients: int = 16, images_per_patient: int = 2, sides: tuple[int, int] = (80, 260),
                 seed: int = 0) -> Path:
    """Write a manifest with `patients` x `images_per_patient` images under `folder`, shard it, return the shard
    folder. Image height and width are drawn independently from `sides` (low, high)."""
    manifest = write_manifest(folder / "data", patients=patients, images_per_patient=images_per_patient,
                              test_fraction=0.25, seed=seed)
    rng = np.random.default_rng(seed)
    for path in pd.read_csv(manifest)["image_path"]:
        height, width = (int(side) for side in rng.integers(*sides, size=2))
        ok, encoded = cv2.imencode(".jpg", smooth_image(rng, height, width), [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        (manifest.parent / path).write_bytes(encoded.tobytes())
    out = folder / "shards"
    shard_manifest(ShardOptions(manifest=manifest, out=out, shard_bytes=24 * 2**10, progress=False))
    return out


def overwrite_component(sample: SampleEntry, ext: str, data: bytes) -> None:
    """Write `data` over the first bytes of a sample's `.ext` component, in place in its tar: the DALI index and the
    tar headers stay valid, as in a shard damaged or edited after `hnp shard` wrote it."""
    offset, size = sample.components[ext]
    assert len(data) <= size, f"{len(data)} bytes do not fit the {size} of .{ext}"
    with open(sample.shard, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
