"""The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016) on phantom data:
does the Grad-CAM peak of a correctly detected herniation fall on the herniated level?

Ground truth is the phantom's `truth.parquet` (`hnp phantom`, format in docs/phantom.md): per image, each
level's disc centre `<level>_x`, `<level>_y`, `<level>_half_width`, `<level>_half_height` and `<level>_angle`
(levels spelled as LEVELS: `L4-5_x`) in the pixels of the written radiograph (`height` x `width`), and its
manifest `row`, from which shard keys are made (`hnp.shard_format.sample_key`); the views of the shard samples
are checked against the truth's to catch a truth file of another data set.

Counted images: the Grad-CAM top images (`gradcam/index.csv`) that are true positives at their level (label 1
and bagged image probability >= the level's threshold).

Level region (a hit): a box rotated with the disc, centred on the disc centre, as wide as the disc (half-width
across), and reaching half-way to the neighbouring disc centres along the spine (half-height = half the distance
to the nearest other disc centre). The five level regions tile the lumbar spine without overlapping, so a hit
means "the peak is nearer this disc than any other, and on the spine". A stricter figure uses the disc itself
(the truth half-height). The chance rate is what a uniformly random peak would score: the region's share of
the image area.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.shard_format import sample_key

_FIELDS = ("x", "y", "half_width", "half_height", "angle")


def read_truth(path: Path) -> pd.DataFrame:
    """The phantom's truth table with a `key` column (shard key of the manifest row), checked for its columns."""
    try:
        truth = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for foreign files
        raise HnpError(f"{path}: not a readable Parquet file: {err}") from err
    needed = ["row", "view", "height", "width", *(f"{level}_{f}" for level in LEVELS for f in _FIELDS)]
    missing = [column for column in needed if column not in truth]
    if missing:
        raise HnpError(f"{path}: not a phantom truth table (missing {', '.join(missing[:4])}); "
                       "it is written by hnp phantom")
    return truth.assign(key=[sample_key(int(row)) for row in truth["row"]])


def level_boxes(truth_row: pd.Series, level: str, scale: float) -> dict[str, Any]:
    """A level's disc centre, axes and region half-extents, in the heatmap's pixels.

    Args:
        truth_row: one image's truth.
        level: the level, e.g. "L4-5".
        scale: heatmap size / truth image size (1 unless the shards were downscaled, which keeps the aspect).
    """
    centres = {lv: np.array([truth_row[f"{lv}_x"], truth_row[f"{lv}_y"]]) * scale for lv in LEVELS}
    gaps = [np.linalg.norm(centres[level] - centres[other]) for other in LEVELS if other != level]
    angle = np.radians(truth_row[f"{level}_angle"])
    return {
        "centre": centres[level],
        "across": np.array([np.cos(angle), np.sin(angle)]),
        "along": np.array([-np.sin(angle), np.cos(angle)]),
        "half_width": truth_row[f"{level}_half_width"] * scale,
        "disc_half_height": truth_row[f"{level}_half_height"] * scale,
        "level_half_height": min(gaps) / 2.0,
    }


def inside(point: np.ndarray, box: dict[str, Any], half_height_key: str) -> bool:
    """Whether an (x, y) point lies in the rotated box with the given half-height."""
    offset = point - box["centre"]
    return bool(abs(offset @ box["across"]) <= box["half_width"]
                and abs(offset @ box["along"]) <= box[half_height_key])


def pointing_game(index: pd.DataFrame, images: pd.DataFrame, thresholds: dict[str, float], truth_path: Path,
                  gradcam_dir: Path) -> dict[str, Any]:
    """Score the Grad-CAM peaks of the true-positive top images against the phantom truth.

    Args:
        index: gradcam/index.csv as a frame (key, level, probability, label, heatmap).
        images: predictions_images (key, view), to check the truth belongs to these shards.
        thresholds: the decision threshold per level (display names).
        truth_path: the phantom's truth.parquet.
        gradcam_dir: the folder the index's heatmap paths are relative to.

    Returns:
        overall and per-level counts, hit rates (level region, disc) and chance rates.
    """
    truth = read_truth(truth_path).set_index("key")
    counted = index[index["level"].isin(LEVELS) & (index["label"] == 1)]
    counted = counted[counted["probability"] >= counted["level"].map(thresholds)]
    _check_same_data(counted["key"], images, truth, truth_path)
    rows = [_score(row, truth.loc[row.key], gradcam_dir) for row in counted.itertuples()]
    scored = pd.DataFrame(rows, columns=["level", "hit", "disc_hit", "spine_hit", "chance", "disc_chance"])
    return _summarise(scored)


def _check_same_data(keys: pd.Series, images: pd.DataFrame, truth: pd.DataFrame, truth_path: Path) -> None:
    unknown = sorted(set(keys) - set(truth.index))
    if unknown:
        raise HnpError(f"{truth_path}: no truth row for sample {unknown[0]}: is it the phantom these shards came from?")
    views = images.set_index("key").loc[keys.unique(), "view"]
    mismatch = views[views != truth.loc[views.index, "view"]]
    if not mismatch.empty:
        key = mismatch.index[0]
        raise HnpError(f"{truth_path}: sample {key} is a {mismatch.iloc[0]} view in the shards but "
                       f"{truth.loc[key, 'view']} in the truth: is it the phantom these shards came from?")


def _score(row: Any, truth_row: pd.Series, gradcam_dir: Path) -> dict[str, Any]:
    heat = np.load(gradcam_dir / row.heatmap)
    height, width = heat.shape
    scale_x, scale_y = width / truth_row["width"], height / truth_row["height"]
    if abs(scale_x / scale_y - 1.0) > 0.02:
        raise HnpError(f"sample {row.key}: heatmap {width}x{height} does not keep the aspect of the truth image "
                       f"{truth_row['width']}x{truth_row['height']}: is it the phantom these shards came from?")
    boxes = {level: level_boxes(truth_row, level, (scale_x + scale_y) / 2.0) for level in LEVELS}
    box = boxes[row.level]
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = np.array([peak_x, peak_y], dtype=float)
    area = float(height * width)
    return {
        "level": row.level,
        "hit": inside(peak, box, "level_half_height"),
        "disc_hit": inside(peak, box, "disc_half_height"),
        "spine_hit": any(inside(peak, other, "level_half_height") for other in boxes.values()),
        "chance": min(1.0, 4 * box["half_width"] * box["level_half_height"] / area),
        "disc_chance": min(1.0, 4 * box["half_width"] * box["disc_half_height"] / area),
    }


def _summarise(scored: pd.DataFrame) -> dict[str, Any]:
    def figures(part: pd.DataFrame) -> dict[str, float | int]:
        n = len(part)
        return {
            "n": n, "hits": int(part["hit"].sum()), "hit_rate": float(part["hit"].mean()) if n else float("nan"),
            "chance_rate": float(part["chance"].mean()) if n else float("nan"),
            "disc_hit_rate": float(part["disc_hit"].mean()) if n else float("nan"),
            "disc_chance_rate": float(part["disc_chance"].mean()) if n else float("nan"),
            "spine_rate": float(part["spine_hit"].mean()) if n else float("nan"),
        }

    return {"overall": figures(scored),
            "levels": {level: figures(scored[scored["level"] == level]) for level in LEVELS}}


def pointing_markdown(result: dict[str, Any]) -> str:
    """The report.md section: the definition in one paragraph and the figures per level."""
    overall = result["overall"]
    lines = [
        f"Share of true-positive Grad-CAM top images whose heatmap peak falls in the positive level's region: "
        f"**{_rate(overall['hit_rate'])}** ({overall['hits']} of {overall['n']}; a random peak would score "
        f"{_rate(overall['chance_rate'])}). Region: a box along the disc, as wide as the disc and reaching half-way "
        "to the neighbouring disc centres; inside the disc itself: "
        f"{_rate(overall['disc_hit_rate'])} (chance {_rate(overall['disc_chance_rate'])}). Peaks in any of the "
        f"five level regions (on the lumbar spine at all): {_rate(overall['spine_rate'])}. See `eval/pointing.py`.",
        "",
        "| Level | True-positive top images | Hit rate | Chance | Disc hit rate | Disc chance | On the spine |",
        "|---|---|---|---|---|---|---|",
    ]
    for level, f in result["levels"].items():
        lines.append(f"| {level} | {f['n']} | {_rate(f['hit_rate'])} | {_rate(f['chance_rate'])} "
                     f"| {_rate(f['disc_hit_rate'])} | {_rate(f['disc_chance_rate'])} | {_rate(f['spine_rate'])} |")
    return "\n".join(lines)


def _rate(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.1%}"
