"""What the explanation metrics score maps against: per image and level, the region a map should point at and
whether the level's sign can be seen in that image.

The metrics (`eval.pointing`) only ask an `ExplanationTruth` for `levels(key)`; `PhantomTruth` answers from the
phantom's truth tables (`hnp phantom`, read through `phantom.truth.read_truth_table`): `truth.parquet` gives per
image each disc's centre `<level>_x`, `<level>_y`, `<level>_half_width`, `<level>_half_height` and `<level>_angle`
in the pixels of the written radiograph (`height` x `width`) and its manifest `row` (keys:
`hnp.shard_format.sample_key`); `truth_signs.parquet` beside it says, per image, level and sign, whether that film
shows the sign. A level's sign counts as visible in an image where the film shows any of the level's signs (on the
`paper` preset, e.g., narrowing on a lateral film but not on an AP one; on `easy`, every herniation in every view).

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
from hnp.levels import LEVELS
from hnp.predictions import KEY, VIEW
from hnp.shard_format import sample_key
from phantom.truth import TRUTH_FILES, read_truth_table


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
    """`ExplanationTruth` from the phantom's truth tables, checked against the shard samples it explains.

    Args:
        path: the truth.parquet; the truth_signs.parquet beside it gives what each film shows.
        images: the samples (key, view), e.g. predictions_images; their views must match the truth's,
            which catches a truth file of another phantom.
    """

    def __init__(self, path: Path, images: pd.DataFrame) -> None:
        self.path = path
        self.table = read_truth(path).set_index(KEY)
        self.images = images.set_index(KEY)
        _check_same_data(self.images, self.table, path)
        self.shown = visible_levels(path.parent / TRUTH_FILES["signs"])

    def image_size(self, key: str) -> tuple[int, int]:
        row = self.table.loc[key]
        return int(row["height"]), int(row["width"])

    def levels(self, key: str) -> dict[str, LevelTruth]:
        row = self.table.loc[key]
        discs = {level: _disc(row, level) for level in LEVELS}
        return {level: LevelTruth(region=_level_region(disc, [d for other, d in discs.items() if other != level]),
                                  disc=disc, visible=(key, level) in self.shown)
                for level, disc in discs.items()}


def read_truth(path: Path) -> pd.DataFrame:
    """The phantom's per-image truth table with a `key` column (the shard key of its manifest `row`)."""
    truth = read_truth_table(path, "images")
    return truth.assign(key=[sample_key(int(row)) for row in truth["row"]])


def visible_levels(path: Path) -> frozenset[tuple[str, str]]:
    """(key, level) of every image and level where the phantom's truth_signs.parquet marks some sign visible.

    Args:
        path: the truth_signs.parquet.
    """
    if not path.is_file():
        raise HnpError(f"{path}: no such file; the pointing games count only the levels whose sign a film shows, "
                       "and hnp phantom writes them there, beside truth.parquet")
    signs = read_truth_table(path, "signs")
    unknown = sorted(set(signs["level"]) - set(LEVELS))
    if unknown:
        raise HnpError(f"{path}: level {unknown[0]!r} is none of {', '.join(LEVELS)}")
    shown = signs.loc[signs["visible"].astype(bool), ["row", "level"]].drop_duplicates()
    return frozenset((sample_key(int(row)), str(level)) for row, level in shown.itertuples(index=False))


def _disc(row: pd.Series, level: str) -> Region:
    return Region((float(row[f"{level}_x"]), float(row[f"{level}_y"])), float(row[f"{level}_angle"]),
                  float(row[f"{level}_half_width"]), float(row[f"{level}_half_height"]))


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
