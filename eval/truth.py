"""What the explanation metrics score maps against: per image and level, the region a map should point at and
whether the level's sign can be seen in that image.

The metrics (`eval.pointing`) only ask an `ExplanationTruth` for `levels(key)`; `PhantomTruth` answers from the
phantom's `truth.parquet` (`hnp phantom`): per image, each disc's centre `<c>_x`, `<c>_y`, `<c>_half_width`,
`<c>_half_height` and `<c>_angle` in the pixels of the written radiograph (`height` x `width`), rows in manifest
row order (keys: `hnp.shard_format.sample_key`). That phantom narrows every herniated disc in every view, so a sign
is visible exactly where the image's label is positive; a truth table that records visibility per image and level
plugs in by reading it in `PhantomTruth._visible`.

Regions are rotated boxes in image pixels. A level's region is centred on its disc, as wide as the disc and
reaching half-way to the nearest other disc centre along the spine: the five regions tile the lumbar spine without
overlapping, so a peak inside means "nearer this disc than any other, and on the spine". The disc box (the truth
half-height) is the stricter target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS, LEVELS
from hnp.predictions import KEY, VIEW, label_column
from hnp.shard_format import sample_key

_FIELDS = ("x", "y", "half_width", "half_height", "angle")


@dataclass(frozen=True)
class Region:
    """A box rotated with the disc, in image pixels (x right, y down).

    Args:
        centre: (x, y).
        angle: degrees; the box's width runs along (cos a, sin a), its height along (-sin a, cos a).
        half_width: half the extent across the spine.
        half_height: half the extent along the spine.
    """

    centre: tuple[float, float]
    angle: float
    half_width: float
    half_height: float

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.radians(self.angle)
        return np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether each (x, y) point of `points` (N, 2) lies in the box: (N,) bool."""
        across, along = self._axes()
        offset = np.asarray(points, dtype=float).reshape(-1, 2) - np.asarray(self.centre)
        return (np.abs(offset @ across) <= self.half_width) & (np.abs(offset @ along) <= self.half_height)

    def mask(self, height: int, width: int) -> np.ndarray:
        """(height, width) bool: the pixels whose centres lie in the box."""
        ys, xs = np.mgrid[0:height, 0:width]
        return self.contains(np.stack([xs.ravel(), ys.ravel()], axis=1)).reshape(height, width)

    def corners(self) -> np.ndarray:
        """(4, 2) corner points, in drawing order."""
        across, along = self._axes()
        signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
        return np.asarray(self.centre) + (signs[:, :1] * self.half_width * across
                                          + signs[:, 1:] * self.half_height * along)

    def scaled(self, factor: float) -> Region:
        """The same box in an image resized by `factor` (the aspect kept)."""
        return Region((self.centre[0] * factor, self.centre[1] * factor), self.angle, self.half_width * factor,
                      self.half_height * factor)


@dataclass(frozen=True)
class LevelTruth:
    """One level of one image: where a map should point (`region`), the disc itself, and whether a sign shows."""

    region: Region
    disc: Region
    visible: bool


class ExplanationTruth(Protocol):
    """The interface the explanation metrics score against."""

    def image_size(self, key: str) -> tuple[int, int]:
        """(height, width) of the radiograph the regions are given in."""

    def levels(self, key: str) -> dict[str, LevelTruth]:
        """Every level of the image, LEVELS spelling."""


class PhantomTruth:
    """`ExplanationTruth` from the phantom's truth.parquet, checked against the shard samples it explains.

    Args:
        path: the truth.parquet.
        images: the samples (key, view, label_<level>), e.g. predictions_images; their views must match the truth's,
            which catches a truth file of another phantom.
    """

    def __init__(self, path: Path, images: pd.DataFrame) -> None:
        self.path = path
        self.table = read_truth(path).set_index(KEY)
        self.images = images.set_index(KEY)
        _check_same_data(self.images, self.table, path)

    def image_size(self, key: str) -> tuple[int, int]:
        row = self.table.loc[key]
        return int(row["height"]), int(row["width"])

    def levels(self, key: str) -> dict[str, LevelTruth]:
        row = self.table.loc[key]
        discs = {level: _disc(row, column) for level, column in zip(LEVELS, LEVEL_COLUMNS, strict=True)}
        return {level: LevelTruth(region=_level_region(disc, [d for other, d in discs.items() if other != level]),
                                  disc=disc, visible=self._visible(key, level))
                for level, disc in discs.items()}

    def _visible(self, key: str, level: str) -> bool:
        # This phantom narrows a herniated disc in every view: the sign shows wherever the label is positive.
        return bool(self.images.loc[key, label_column(level)] == 1)


def read_truth(path: Path) -> pd.DataFrame:
    """The phantom's truth table with a `key` column (shard key of the manifest row), checked for its columns."""
    try:
        truth = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for foreign files
        raise HnpError(f"{path}: not a readable Parquet file: {err}") from err
    needed = ["view", "height", "width", *(f"{c}_{f}" for c in LEVEL_COLUMNS for f in _FIELDS)]
    missing = [column for column in needed if column not in truth]
    if missing:
        raise HnpError(f"{path}: not a phantom truth table (missing {', '.join(missing[:4])}); "
                       "it is written by hnp phantom")
    return truth.assign(key=[sample_key(row) for row in range(len(truth))])


def _disc(row: pd.Series, column: str) -> Region:
    return Region((float(row[f"{column}_x"]), float(row[f"{column}_y"])), float(row[f"{column}_angle"]),
                  float(row[f"{column}_half_width"]), float(row[f"{column}_half_height"]))


def _level_region(disc: Region, others: list[Region]) -> Region:
    nearest = min(float(np.hypot(*np.subtract(disc.centre, other.centre))) for other in others)
    return Region(disc.centre, disc.angle, disc.half_width, nearest / 2.0)


def _check_same_data(images: pd.DataFrame, truth: pd.DataFrame, path: Path) -> None:
    unknown = images.index.difference(truth.index)
    if len(unknown):
        raise HnpError(f"{path}: no truth row for sample {unknown[0]}: is it the phantom these shards came from?")
    views = images[VIEW]
    mismatch = views[views != truth.loc[views.index, VIEW]]
    if not mismatch.empty:
        key = mismatch.index[0]
        raise HnpError(f"{path}: sample {key} is a {mismatch.iloc[0]} view in the shards but {truth.loc[key, VIEW]} "
                       "in the truth: is it the phantom these shards came from?")
