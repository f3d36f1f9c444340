"""`hnp eval`'s explanations: maps of the top test images per level, and the checks that say whether they mean
anything.

1. Maps (`eval.gradcam`): the method and layer(s) of `--gradcam-method` / `--gradcam-layer`, bagged over the fold
   models, written to `gradcam/` with their index.
2. On phantom data (`--truth`): the pointing game and its energy-based form per level and per view
   (`eval.pointing`), and per level a figure of the counted top images with the map, the level's region (green) and
   the peak (a cross: white on a hit, red on a miss), in `explanations/<level>.png`.
3. On any data: deletion against random deletion, and the randomization sanity check (`eval.faithfulness`), on
   the `checks` most confident images per level.

    found = explain_test_set(folds, images, tars, data, thresholds, ExplainOptions(out=Path("reports/x"), top=20))
    sections = explanation_sections(found)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eval.faithfulness import (
    DELETE_FRACTIONS,
    SANITY_MAX_RHO,
    deletion_scores,
    deletion_summary,
    randomized_copy,
    rank_correlations,
    sanity_summary,
)
from eval.gradcam import (
    ClassActivationMap,
    bagged_maps,
    export_gradcam,
    map_targets,
    resolve_layers,
    select_top,
)
from eval.map_options import DEFAULT_METHOD
from eval.samples import GrayImages
from hnp.config import DataConfig
from hnp.predictions import KEY, VIEW
from train.model import FoldCheckpoint

FIGURE_IMAGES = 8  # per level: enough to see hits and misses, small enough to read
RANDOM_SEED = 20181203  # the randomized models' weights (the sanity paper's NeurIPS date)


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain and check; see `eval.cli` for each option.

    Args:
        out: the report folder (maps go to `gradcam/`, figures to `explanations/`).
        top: images per level that get a map.
        method: a key of `eval.gradcam.METHODS`.
        layer: `auto`, `last-conv` or module names (`eval.gradcam.resolve_layers`).
        truth: the phantom's truth.parquet, or None.
        checks: images per level for the deletion and randomization checks (the most confident first); 0 = none.
        seed: the checks' random pixels and noise.
    """

    out: Path
    top: int
    method: str = DEFAULT_METHOD
    layer: str | None = None
    truth: Path | None = None
    checks: int = 20
    seed: int = 0


@dataclass
class Explanations:
    """What `explain_test_set` found: the map index and description, and each check's figures (None = not run)."""

    index: pd.DataFrame
    description: str
    top: int
    pointing: dict[str, Any] | None = None
    figures: dict[str, str] = field(default_factory=dict)
    deletion: dict[str, Any] | None = None
    sanity: dict[str, Any] | None = None
    selected: str = "test images"  # what the top K per level are: images, or studies with a map per film
    source: str = "eval/gradcam.py"


def explain_test_set(folds: Sequence[FoldCheckpoint], images: pd.DataFrame, tars: Sequence[Path], data: DataConfig,
                     thresholds: Mapping[str, float], options: ExplainOptions) -> Explanations:
    """Maps of the top test images per level, then the checks the options ask for.

    Args:
        folds: the fold checkpoints (their models on the device to explain on).
        images: predictions_images (key, view, label_<target>, prob_<target>).
        tars: the test shards.
        data: the evaluation data config (the input transform).
        thresholds: the decision threshold per target.
        options: see ExplainOptions.
    """
    from pipeline import preprocess

    task = folds[0].config.model.task
    selection = select_top(images, map_targets(task), options.top)
    grays = GrayImages(tars, selection["key"].unique())
    inputs: dict[str, np.ndarray] = {}

    def load(key: str) -> tuple[np.ndarray, np.ndarray]:
        gray = grays[key]
        return gray, inputs.setdefault(key, preprocess(gray, data))

    layers = resolve_layers(folds[0].model, options.layer, (data.channels, data.image_size, data.image_size))
    cams = [ClassActivationMap(fold.model, options.method, layers) for fold in folds]
    gradcam_dir = options.out / "gradcam"
    index = export_gradcam(cams, selection, load, gradcam_dir, resize=data.resize, batch_size=data.batch_size)
    found = Explanations(index=index.merge(images[[KEY, VIEW]], on=KEY, how="left"), description=cams[0].describe(),
                         top=options.top)
    if options.truth is not None:
        score_on_truth(found, images, thresholds, options, gradcam_dir)
    if options.checks > 0:
        checked = selection[selection["rank"] <= options.checks]
        batch = torch.from_numpy(np.stack([load(key)[1] for key in checked["key"]]))
        _run_checks(found, folds, cams, checked, batch, task, options.seed)
    write_explanation_json(found, options.out)
    return found


def score_on_truth(found: Explanations, images: pd.DataFrame, thresholds: Mapping[str, float],
                   options: ExplainOptions, gradcam_dir: Path) -> None:
    """The pointing game of the maps in `found.index` against `options.truth`, and a figure per level.

    Args:
        found: the maps; `pointing` and `figures` are filled in.
        images: the explained samples (key, view), checked against the truth's.
        thresholds: the decision threshold per level (only true positives count).
        options: `truth` and `out`.
        gradcam_dir: the folder of the index's heatmap paths.
    """
    from eval.pointing import counted_images, score_maps, summarise
    from eval.truth import PhantomTruth

    truth = PhantomTruth(options.truth, images)
    scored = score_maps(counted_images(found.index, thresholds, truth), truth, gradcam_dir)
    found.pointing = summarise(scored)
    figure_dir = options.out / "explanations"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for level, part in scored.groupby("level", sort=False):
        path = figure_dir / f"{level}.png"
        level_figure(part.sort_values("rank").head(FIGURE_IMAGES), truth, gradcam_dir, path, found.description)
        found.figures[str(level)] = str(path.relative_to(options.out))


def _run_checks(found: Explanations, folds: Sequence[FoldCheckpoint], cams: Sequence[ClassActivationMap],
                checked: pd.DataFrame, batch: torch.Tensor, task: str, seed: int) -> None:
    outputs = checked["output"].tolist()
    maps = bagged_maps(cams, batch, outputs)
    models = [fold.model for fold in folds]
    deletion = deletion_scores(models, task, batch, maps, outputs, seed).assign(level=checked["level"].to_numpy())
    found.deletion = {"fractions": list(DELETE_FRACTIONS), "overall": deletion_summary(deletion),
                      "levels": {str(level): deletion_summary(part) for level, part in deletion.groupby("level",
                                                                                                      sort=False)}}
    randomized = [ClassActivationMap(randomized_copy(fold.model, RANDOM_SEED + fold.fold), cam.method, cam.layers)
                  for fold, cam in zip(folds, cams, strict=True)]
    rhos = rank_correlations(maps, bagged_maps(randomized, batch, outputs))
    levels = checked["level"].to_numpy()
    found.sanity = {"overall": sanity_summary(rhos),
                    "levels": {str(level): sanity_summary(rhos[levels == level]) for level in pd.unique(levels)}}


def level_figure(rows: pd.DataFrame, truth: Any, gradcam_dir: Path, path: Path, description: str) -> None:
    """A grid of overlays of one level's counted images: map, the level's region (green), peak (white + on a hit,
    red x on a miss), titled with rank, view and the outcome.

    Args:
        rows: scored rows of one level (key, level, rank, view, file, hit, peak_x, peak_y), in display order.
        truth: the `ExplanationTruth` the rows were scored against.
        gradcam_dir: where the overlays (`file`) are.
        path: the PNG to write.
        description: the method and layers, for the title.
    """
    import cv2
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 3.3 * lines + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows.itertuples(), strict=False):
        picture = cv2.imread(str(gradcam_dir / row.file))[:, :, ::-1]
        scale = picture.shape[0] / truth.image_size(row.key)[0]
        ax.imshow(picture)
        ax.add_patch(plt.Polygon(truth.levels(row.key)[row.level].region.scaled(scale).corners(), fill=False,
                                 edgecolor="lime", linewidth=1.2))
        ax.plot(row.peak_x, row.peak_y, marker="+" if row.hit else "x", color="white" if row.hit else "red",
                markersize=11, markeredgewidth=2)
        ax.set_title(f"#{row.rank} {row.view}: {'hit' if row.hit else 'miss'}", fontsize=9)
    fig.suptitle(f"{rows['level'].iloc[0]}: {description}", fontsize=10)
    fig.tight_layout(h_pad=1.5)  # room for each row's titles under the pictures above
    fig.savefig(path, dpi=90)
    plt.close(fig)


def explanation_sections(found: Explanations) -> dict[str, str]:
    """The report.md sections of the explanations, in order."""
    counts = found.index.groupby("level", sort=False).agg(images=(KEY, "size"), positives=("label", "sum"))
    lines = ["| Level | Maps | Of which HNP |", "|---|---|---|"]
    lines += [f"| {level} | {row.images} | {row.positives} |" for level, row in counts.iterrows()]
    sections = {"Grad-CAM": (
        f"Top {found.top} {found.selected} per level by bagged probability (ties by key). Maps: "
        f"**{found.description}** (pytorch-grad-cam), the mean of the fold models' maps, in `gradcam/` (overlays .png, "
        f"float32 heatmaps .npy at image resolution, index.csv). See `{found.source}`.\n\n" + "\n".join(lines))}
    if found.pointing is not None:
        from eval.pointing import pointing_markdown

        figures = "\n".join(f"![{level}]({file})" for level, file in found.figures.items())
        sections["Pointing game (phantom ground truth)"] = (
            f"Maps: {found.description}. " + pointing_markdown(found.pointing) + "\n\nPer level, the first "
            f"{FIGURE_IMAGES} counted images: the map, the level's region (green) and the map's peak (white + on a "
            f"hit, red x on a miss).\n\n" + figures)
    if found.deletion is not None and found.sanity is not None:
        sections["Faithfulness and randomization checks"] = checks_markdown(found)
    return sections


def checks_markdown(found: Explanations) -> str:
    """The deletion and randomization figures per level, with what they mean."""
    fractions = ", ".join(f"{f:.0%}" for f in found.deletion["fractions"])
    sanity = found.sanity["overall"]
    verdict = ("**flagged**: the maps barely change when the models' weights are re-drawn, so they show the image "
               "more than the model" if sanity["flagged"] else "passed: the maps change when the models' weights "
               "are re-drawn")
    lines = [
        f"Maps: {found.description}, on the most confident images per level. Deletion: the level's bagged "
        f"probability drop when the map's top {fractions} of the input pixels are removed (filled by noisy linear "
        "imputation, ROAD), against the same number of random pixels and against a hole of the same shape cut "
        "elsewhere (the map moved by a random offset), averaged over those shares; the map is faithful where it "
        "drops more than both. Randomization (Adebayo et al. 2018): Spearman rank correlation between each "
        f"map and the map of models with re-drawn weights; flagged at a median of {SANITY_MAX_RHO} or more. "
        f"Overall: {verdict} (median rho {sanity['median_rho']:.2f}). See `eval/faithfulness.py`.",
        "",
        "| Level | Images | Probability | Drop (map's pixels) | Drop (random pixels) | Drop (same hole elsewhere) "
        "| Map beats random in | Faithful | Rank correlation with random models (median) | Sanity check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, d in found.deletion["levels"].items():
        s = found.sanity["levels"][level]
        lines.append(f"| {level} | {d['n']} | {d['probability']:.3f} | {d['drop_map']:.3f} | {d['drop_random']:.3f} "
                     f"| {d['drop_shifted']:.3f} | {d['map_wins']:.0%} | {'yes' if d['faithful'] else 'no'} "
                     f"| {s['median_rho']:.2f} | {'flagged' if s['flagged'] else 'passed'} |")
    return "\n".join(lines)


def explanation_json(found: Explanations) -> dict[str, Any]:
    """explanations.json: the maps' method and layers, and each check's figures (null = not run or undefined)."""
    from eval.report import json_safe

    return json_safe({"maps": found.description, "top": found.top, "pointing": found.pointing,
                      "deletion": found.deletion, "sanity": found.sanity, "figures": found.figures})


def write_explanation_json(found: Explanations, out: Path) -> Path:
    """`<out>/explanations.json` (see `explanation_json`), written atomically."""
    import json

    from hnp.files import atomic_write_text

    return atomic_write_text(out / "explanations.json",
                             json.dumps(explanation_json(found), indent=2, allow_nan=False) + "\n")
