"""Measurements of phantom signs on the rendered pixels alone, for the tests that prove the truth tables right.

The truth says only where to look (a level's disc centre, angle and size, or a sign's box); every value comes from
the image. Each function takes the 8-bit image and the image's truth.parquet row as a dict (`frame.to_dict(
"records")`), resamples a strip in the disc's frame (columns across the disc, rows along the spine, downwards) and
measures one thing:

- `disc_height`: the dark disc gap's height, as a fraction of the distance between neighbouring disc centres;
- `wedge`: the angle (degrees) between the two endplates, from the gap's edges column by column;
- `body_angle`: the angle (degrees) between the anterior edges of the bodies above and below (lateral views);
- `anterior_step`: how far the body above stands out towards -across (anterior in lateral views) over the body below;
- `endplate_band`: the brightness of the 1-3 mm inside each endplate over the body 7-9 mm in (sclerosis);
- `lateral_excess`: the brightness just beyond the body's sides at the disc (spurs);
- `spot_brightness`: the brightness at the centre of a box (an enlarged facet joint).
Brightness is divided by the image's bone-to-soft-tissue contrast (`contrast`), so exposure does not matter.
"""

from __future__ import annotations

import cv2
import numpy as np

from hnp.levels import LEVELS


def disc_strip(image: np.ndarray, truth: dict, level: str, half_across: float, half_along: float) -> np.ndarray:
    """(2 * half_along + 1, 2 * half_across + 1) float32 resampling of the image in the disc's frame, centred on it."""
    centre = np.array([truth[f"{level}_x"], truth[f"{level}_y"]])
    angle = np.radians(truth[f"{level}_angle"])
    across, along = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    cols, rows = int(round(half_across)), int(round(half_along))
    to_image = np.column_stack([across, along, centre - across * cols - along * rows])
    return cv2.warpAffine(image.astype(np.float32), to_image, (2 * cols + 1, 2 * rows + 1),
                          flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pitch(truth: dict, level: str) -> float:
    """Mean distance (pixels) from the level's disc centre to its neighbours'."""
    k = LEVELS.index(level)
    centre = np.array([truth[f"{level}_x"], truth[f"{level}_y"]])
    neighbours = [LEVELS[j] for j in (k - 1, k + 1) if 0 <= j < len(LEVELS)]
    return float(np.mean([np.hypot(truth[f"{n}_x"] - centre[0], truth[f"{n}_y"] - centre[1]) for n in neighbours]))


def disc_height(image: np.ndarray, truth: dict, level: str) -> float:
    """Disc-space height as a fraction of the level's pitch: the width of the dark dip, at half depth between its
    floor and the bone level, in the mean profile along the spine over the central 80% of the disc's width."""
    step = pitch(truth, level)
    strip = disc_strip(image, truth, level, 0.4 * truth[f"{level}_half_width"], step / 2)
    profile = np.convolve(strip.mean(axis=1), np.ones(3) / 3, mode="same")
    middle, search = len(profile) // 2, int(step / 4)
    floor_at = middle - search + int(np.argmin(profile[middle - search:middle + search + 1]))
    dark = profile < (profile[floor_at] + np.percentile(profile, 75)) / 2
    low, high = floor_at, floor_at
    while low > 0 and dark[low - 1]:
        low -= 1
    while high < len(profile) - 1 and dark[high + 1]:
        high += 1
    return (high - low + 1) / step


def relative_to_other_levels(values: np.ndarray) -> np.ndarray:
    """(5,) each level's value over the median of the other four (removes the patient's size, age and exposure)."""
    return np.array([values[k] / np.median(np.delete(values, k)) for k in range(len(values))])


def rising_crossing(profiles: np.ndarray, start: np.ndarray, level: np.ndarray, step: int) -> np.ndarray:
    """Per column of `profiles` (rows, columns): the subpixel row where the values, walking from row `start` by
    `step` (+1 down, -1 up), first reach `level`; NaN where they never do."""
    rows = np.arange(profiles.shape[0])[:, None]
    reached = ((rows > start) if step > 0 else (rows < start)) & (profiles >= level)
    found = reached.any(axis=0)
    first = reached.argmax(axis=0) if step > 0 else profiles.shape[0] - 1 - reached[::-1].argmax(axis=0)
    before = np.clip(first - step, 0, profiles.shape[0] - 1)
    columns = np.arange(profiles.shape[1])
    low, high = profiles[before, columns], profiles[first, columns]
    fraction = np.divide(level - low, high - low, out=np.zeros_like(low), where=high != low)
    return np.where(found, before + step * fraction, np.nan)


def gap_edges(strip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a disc strip: the subpixel rows of the dark gap's upper and lower edges (half-way from the
    gap's floor to the brightest bone above, and below)."""
    smooth = cv2.GaussianBlur(strip, (0, 0), 1.0)
    middle = smooth.shape[0] // 2
    search = max(1, middle // 2)
    floor_at = middle - search + smooth[middle - search:middle + search + 1].argmin(axis=0)
    floor = smooth[floor_at, np.arange(smooth.shape[1])]
    rows = np.arange(smooth.shape[0])[:, None]
    bone_above = np.where(rows <= floor_at, smooth, -np.inf).max(axis=0)
    bone_below = np.where(rows >= floor_at, smooth, -np.inf).max(axis=0)
    top = rising_crossing(smooth, floor_at, (floor + bone_above) / 2, -1)
    bottom = rising_crossing(smooth, floor_at, (floor + bone_below) / 2, 1)
    return top, bottom


def wedge(image: np.ndarray, truth: dict, level: str, half_width: float = 0.4) -> float:
    """Angle in degrees between the lower and the upper endplate of the disc, from straight lines fitted to the gap
    edges over the central `half_width` x half-width of the disc on each side (away from the oblique view's
    posterior elements)."""
    strip = disc_strip(image, truth, level, half_width * truth[f"{level}_half_width"], 0.3 * pitch(truth, level))
    top, bottom = gap_edges(strip)
    across = np.arange(strip.shape[1]) - strip.shape[1] / 2
    ok = np.isfinite(top) & np.isfinite(bottom)
    if ok.sum() < 3:
        return 0.0
    top_slope, bottom_slope = np.polyfit(across[ok], top[ok], 1)[0], np.polyfit(across[ok], bottom[ok], 1)[0]
    return float(np.degrees(np.arctan(bottom_slope) - np.arctan(top_slope)))


def body_angle(image: np.ndarray, truth: dict, level: str) -> float:
    """Angle in degrees between the -across (anterior, in lateral views) edges of the bodies above and below the
    disc, each a straight line fitted to the edge over the body's middle (0.15-0.45 pitches from the disc); a narrow
    disc gap does not disturb it."""
    half_width, half_height, step = truth[f"{level}_half_width"], truth[f"{level}_half_height"], pitch(truth, level)
    strip = cv2.GaussianBlur(disc_strip(image, truth, level, 1.5 * half_width, half_height + 0.45 * step),
                             (0, 0), 1.0)
    middle, centre = strip.shape[0] // 2, strip.shape[1] // 2
    near, far = int(half_height + 0.15 * step), int(half_height + 0.45 * step)
    slopes = []
    for rows in (np.arange(middle - far, middle - near + 1), np.arange(middle + near, middle + far + 1)):
        profiles = strip[rows].T  # (across, rows)
        background = np.median(profiles[:int(0.3 * half_width)], axis=0)
        inside = np.median(profiles[centre - int(0.4 * half_width):centre + 1], axis=0)
        edges = rising_crossing(profiles, np.full(len(rows), -1), (background + inside) / 2, 1)
        ok = np.isfinite(edges)
        slopes.append(np.polyfit(rows[ok], edges[ok], 1)[0] if ok.sum() >= 3 else 0.0)
    return float(np.degrees(np.arctan(slopes[0]) - np.arctan(slopes[1])))


def contrast(image: np.ndarray, truth: dict) -> tuple[float, float]:
    """(soft tissue, bone) brightness of an image: the darker side just beyond 1.45-1.7 half-widths of each disc
    (clear of the transverse processes at disc height), and the middle of the bodies, medians over the levels."""
    soft, bone = [], []
    for level in LEVELS:
        half_width, half_height = truth[f"{level}_half_width"], truth[f"{level}_half_height"]
        strip = disc_strip(image, truth, level, 1.7 * half_width, 0.5 * pitch(truth, level))
        middle, centre = strip.shape[0] // 2, strip.shape[1] // 2
        band = strip[middle - int(0.6 * half_height):middle + int(0.6 * half_height) + 1]
        edge = max(1, int(0.25 * half_width))
        soft.append(min(np.median(band[:, :edge]), np.median(band[:, -edge:])))
        bone.append(np.median(strip[:max(1, int(0.25 * strip.shape[0])),
                                    centre - int(0.3 * half_width):centre + int(0.3 * half_width) + 1]))
    return float(np.median(soft)), float(np.median(bone))


def anterior_step(image: np.ndarray, truth: dict, level: str) -> float:
    """How far (in half-widths) the -across edge of the body above the disc lies beyond the one of the body below,
    each found 0.12-0.3 half-widths from the disc, where the profile across first rises half-way from the
    background to the bone when walking in from the outside."""
    half_width, half_height = truth[f"{level}_half_width"], truth[f"{level}_half_height"]
    strip = cv2.GaussianBlur(disc_strip(image, truth, level, 1.5 * half_width, half_height + 0.4 * half_width),
                             (0, 0), 1.0)
    middle, centre = strip.shape[0] // 2, strip.shape[1] // 2
    near, far = int(half_height + 0.12 * half_width), int(half_height + 0.3 * half_width)
    bodies = np.stack([strip[middle - far:middle - near + 1].mean(axis=0),
                       strip[middle + near:middle + far + 1].mean(axis=0)], axis=1)  # (across, 2)
    background = np.median(bodies[:int(0.3 * half_width)], axis=0)
    inside = np.median(bodies[centre - int(0.4 * half_width):centre + 1], axis=0)
    edges = rising_crossing(bodies, np.full(2, -1), (background + inside) / 2, 1)
    edges = np.where(np.isfinite(edges), edges, centre)
    return float((edges[1] - edges[0]) / half_width)


def endplate_band(image: np.ndarray, truth: dict, level: str, soft_and_bone: tuple[float, float]) -> float:
    """Brightness 0.03-0.08 pitches (about 1-3 mm) inside each endplate, beyond the cortical rim, minus the body
    0.2-0.25 pitches (7-9 mm) in, over the image's contrast; columns 0.15-0.45 half-widths either side of the centre
    (away from the spinous process and the pedicles). Pitches, not half-widths, set the depth: a body is as tall in
    every view, not as wide."""
    half_width, step = truth[f"{level}_half_width"], pitch(truth, level)
    strip = disc_strip(image, truth, level, 0.45 * half_width, 0.45 * step)
    top, bottom = gap_edges(strip)
    centre = strip.shape[1] // 2
    columns = np.arange(strip.shape[1])
    use = (np.abs(columns - centre) >= 0.15 * half_width) & np.isfinite(top) & np.isfinite(bottom)

    def mean_at(low: float, high: float) -> float:
        offsets = np.arange(low * step, high * step + 1e-9, 1.0)
        samples = []
        for edge, direction in ((top[use], -1.0), (bottom[use], 1.0)):
            rows = np.round(edge[None, :] + direction * offsets[:, None]).astype(int)
            samples.append(strip[np.clip(rows, 0, strip.shape[0] - 1), columns[use][None, :]])
        return float(np.mean(np.concatenate(samples, axis=1)))

    soft, bone = soft_and_bone
    return (mean_at(0.03, 0.08) - mean_at(0.2, 0.25)) / (bone - soft)


def lateral_excess(image: np.ndarray, truth: dict, level: str, soft_and_bone: tuple[float, float]) -> float:
    """Brightness 1.06-1.22 half-widths out from the disc centre on the brighter side, over the disc's height plus
    0.15 half-widths, above the soft tissue, over the image's contrast."""
    half_width, half_height = truth[f"{level}_half_width"], truth[f"{level}_half_height"]
    strip = disc_strip(image, truth, level, 1.4 * half_width, half_height + 0.15 * half_width)
    centre, inner, outer = strip.shape[1] // 2, int(1.06 * half_width), int(1.22 * half_width)
    soft, bone = soft_and_bone
    sides = (strip[:, centre + inner:centre + outer + 1], strip[:, centre - outer:centre - inner + 1])
    return max((float(np.mean(side)) - soft) / (bone - soft) for side in sides)


def spot_brightness(image: np.ndarray, box: np.ndarray, soft_and_bone: tuple[float, float]) -> float:
    """Mean brightness in the disc of a quarter of the box's width around the box centre, over the image's contrast.

    Args:
        box: x0, y0, x1, y1 in pixels.
    """
    x0, y0, x1, y1 = box
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, (x1 - x0) / 4)
    left, top = int(max(0, cx - radius)), int(max(0, cy - radius))
    patch = image[top:int(cy + radius) + 1, left:int(cx + radius) + 1].astype(np.float32)
    yy, xx = np.mgrid[top:top + patch.shape[0], left:left + patch.shape[1]]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
    soft, bone = soft_and_bone
    return (float(patch[inside].mean()) - soft) / (bone - soft)
