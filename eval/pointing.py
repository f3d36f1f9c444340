"""Do the maps point at the herniated level? Two scores of the true-positive top images against a truth
(`eval.truth.ExplanationTruth`; on phantom data its truth.parquet).

- The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016): a hit when the
  map's peak falls in the level's region. Chance: the region's share of the image (a uniformly random peak).
- The energy-based pointing game (Wang et al., "Score-CAM", CVPR workshops 2020, https://arxiv.org/abs/1910.01279):
  the share of the map's mass inside the level's region. Chance: again the region's share of the image (a flat
  map), so energy / chance says how many times more mass the region holds than a map that points nowhere.

Counted images: the top images of each level (`gradcam/index.csv`) that are true positives there (label 1 and
bagged image probability >= the level's threshold) and in which the truth says the level's sign is visible.
Regions are those of `eval.truth` (the level's box, tiling the spine; the disc box as the strict figure), scaled
to the heatmap when the shards were downscaled. Figures are given per level and per view.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.truth import ExplanationTruth, LevelTruth
from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.predictions import VIEW

SCORE_COLUMNS = ("hit", "disc_hit", "spine_hit", "chance", "disc_chance", "energy", "energy_chance", "peak_x",
                 "peak_y")


def counted_images(index: pd.DataFrame, thresholds: Mapping[str, float], truth: ExplanationTruth) -> pd.DataFrame:
    """The index rows the scores count: level tasks only, true positives, sign visible.

    Args:
        index: gradcam/index.csv as a frame (key, level, probability, label, heatmap).
        thresholds: the decision threshold per level.
        truth: where each level's sign is visible.
    """
    rows = index[index["level"].isin(LEVELS) & (index["label"] == 1)]
    rows = rows[rows["probability"] >= rows["level"].map(thresholds)]
    visible = [truth.levels(row.key)[row.level].visible for row in rows.itertuples()]
    return rows[np.asarray(visible, dtype=bool)]


def score_maps(rows: pd.DataFrame, truth: ExplanationTruth, gradcam_dir: Path) -> pd.DataFrame:
    """One row per counted image and level: the rows' own columns plus SCORE_COLUMNS.

    Args:
        rows: from `counted_images` (key, level, heatmap: a .npy path relative to `gradcam_dir`).
        truth: the regions.
        gradcam_dir: the folder the heatmap paths are relative to.
    """
    scores = [score_map(np.load(gradcam_dir / row.heatmap), truth.levels(row.key), row.level,
                        truth.image_size(row.key), row.key) for row in rows.itertuples()]
    return pd.concat([rows.reset_index(drop=True), pd.DataFrame(scores, columns=list(SCORE_COLUMNS))], axis=1)


def score_map(heat: np.ndarray, levels: Mapping[str, LevelTruth], level: str, truth_size: tuple[int, int],
              key: str) -> dict[str, Any]:
    """Pointing and energy scores of one heatmap for one level.

    Args:
        heat: (H, W) non-negative map on the radiograph (it may be a downscaled copy of the truth's image).
        levels: the image's truth per level.
        level: the level the map explains.
        truth_size: (height, width) of the image the truth's pixels refer to.
        key: the sample, for error messages.
    """
    height, width = heat.shape
    scale_y, scale_x = height / truth_size[0], width / truth_size[1]
    if abs(scale_x / scale_y - 1.0) > 0.02:
        raise HnpError(f"sample {key}: heatmap {width}x{height} does not keep the aspect of the truth image "
                       f"{truth_size[1]}x{truth_size[0]}: is it the phantom these shards came from?")
    scale = (scale_x + scale_y) / 2.0
    region, disc = levels[level].region.scaled(scale), levels[level].disc.scaled(scale)
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = np.array([peak_x, peak_y], dtype=float)
    inside = region.mask(height, width)
    mass = float(heat.sum())
    return {
        "hit": bool(region.contains(peak)[0]),
        "disc_hit": bool(disc.contains(peak)[0]),
        "spine_hit": any(bool(t.region.scaled(scale).contains(peak)[0]) for t in levels.values()),
        "chance": float(inside.mean()),
        "disc_chance": float(disc.mask(height, width).mean()),
        "energy": float(heat[inside].sum()) / mass if mass > 0 else 0.0,  # an empty map holds nothing anywhere
        "energy_chance": float(inside.mean()),
        "peak_x": int(peak_x), "peak_y": int(peak_y),
    }


def summarise(scored: pd.DataFrame) -> dict[str, Any]:
    """Overall, per-level and per-view figures: n, hits, hit/chance rates, energy share and its chance."""
    return {
        "overall": _figures(scored),
        "levels": {level: _figures(scored[scored["level"] == level]) for level in LEVELS},
        "views": {str(view): _figures(part) for view, part in scored.groupby(VIEW, sort=True)},
    }


def _figures(part: pd.DataFrame) -> dict[str, float | int]:
    def mean(column: str) -> float:
        return float(part[column].mean()) if len(part) else float("nan")

    energy, energy_chance = mean("energy"), mean("energy_chance")
    return {
        "n": len(part), "hits": int(part["hit"].sum()), "hit_rate": mean("hit"), "chance_rate": mean("chance"),
        "disc_hit_rate": mean("disc_hit"), "disc_chance_rate": mean("disc_chance"), "spine_rate": mean("spine_hit"),
        "energy": energy, "energy_chance": energy_chance,
        "energy_ratio": energy / energy_chance if len(part) and energy_chance > 0 else float("nan"),
    }


def pointing_markdown(result: dict[str, Any]) -> str:
    """The report.md section: the definitions in one paragraph, the figures per level and per view."""
    overall = result["overall"]
    lines = [
        f"Share of true-positive top images whose map peak falls in the positive level's region: "
        f"**{_rate(overall['hit_rate'])}** ({overall['hits']} of {overall['n']}; a random peak would score "
        f"{_rate(overall['chance_rate'])}); share of the map's mass in that region: **{_rate(overall['energy'])}**, "
        f"{_ratio(overall['energy_ratio'])} its chance. Region: a box along the disc, as wide as the disc and reaching "
        "half-way to the neighbouring disc centres; inside the disc itself: "
        f"{_rate(overall['disc_hit_rate'])} (chance {_rate(overall['disc_chance_rate'])}). Peaks in any of the "
        f"five level regions (on the lumbar spine at all): {_rate(overall['spine_rate'])}. Counted: images whose "
        "level sign the truth marks visible. See `eval/pointing.py`.",
        "",
        _table("Level", result["levels"]),
        "",
        _table("View", result["views"]),
    ]
    return "\n".join(lines)


def _table(first: str, groups: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"| {first} | True-positive top images | Hit rate | Chance | Energy share | × chance | Disc hit rate "
             "| On the spine |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {f['n']} | {_rate(f['hit_rate'])} | {_rate(f['chance_rate'])} | {_rate(f['energy'])} "
              f"| {_ratio(f['energy_ratio'])} | {_rate(f['disc_hit_rate'])} | {_rate(f['spine_rate'])} |"
              for name, f in groups.items()]
    return "\n".join(lines)


def _rate(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.1%}"


def _ratio(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.1f}×"
