"""Grad-CAM of a fusion model's fused prediction, film by film: which of a study's films carries the evidence, and
where on it.

For each level, the top K test studies by bagged fused probability (`eval.gradcam.select_top` over the studies).
For each of their films:

- **where**: the map of the level's fused logit at the backbone layer of `--gradcam-layer`, by the method of
  `--gradcam-method` (pytorch-grad-cam). The fused logit depends on every film through the pooling, so the
  backward pass reaches each film's own backbone pass and gives each film its own map (`StudyClassifier` shows the
  fusion model to pytorch-grad-cam as a classifier of one study's films). Bagged over the fold models as the
  image-level maps are (`eval.gradcam.bagged_maps`); each film's map is scaled to [0, 1] on its own.
- **which film**: the drop of the bagged fused probability when the film is left out of its study (the mask
  without it), beside the film's pooling weight (`FusionModel.fuse`). A study's only film has no drop (NaN).

Files as the image-level maps (`gradcam/<level>/<rank>_<study>_<film>.png|.npy`, `gradcam/index.csv` with the
film's sample key as `key` and its study as `study`), so the pointing game (`eval.pointing`) scores each film
against the phantom's truth where that film shows the level's sign.

    found = explain_fused_test_set(folds, studies, shards, data, thresholds, ExplainOptions(out=out, top=20))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from eval.explain import ExplainOptions, Explanations, score_on_truth, write_explanation_json
from eval.fusion_eval import view_name
from eval.gradcam import ClassActivationMap, bagged_maps, map_targets, resolve_layers, select_top, write_map
from eval.samples import GrayImages
from hnp.bars import progress_bar
from hnp.config import DataConfig
from hnp.levels import VIEWS
from hnp.predictions import KEY, VIEW
from pipeline.studies import StudySample
from train.model import FoldCheckpoint

STUDY, WEIGHT, DROP = "study", "weight", "drop"
INDEX_COLUMNS = ("key", STUDY, "patient", "level", "rank", "probability", "label", VIEW, WEIGHT, DROP, "file",
                 "heatmap")


class StudyClassifier(nn.Module):
    """A fusion model as a classifier of one study's films: films (N, C, S, S) -> logits (1, outputs).

    Args:
        model: a `train.fusion.FusionModel`.
        views: (N,) the films' view ids.
    """

    def __init__(self, model: nn.Module, views: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("views", views[None], persistent=False)

    def forward(self, films: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(self.views, dtype=torch.bool)
        return self.model(films, self.views, mask)


def explain_fused_test_set(folds: Sequence[FoldCheckpoint], studies_frame: pd.DataFrame,
                           studies: Sequence[StudySample], tars: Sequence[Path], data: DataConfig,
                           thresholds: Mapping[str, float], options: ExplainOptions) -> Explanations:
    """Per-film maps and film shares of the top test studies per level, scored on the truth when there is one.

    Args:
        folds: the fold checkpoints (fusion models, on the device to explain on).
        studies_frame: predictions_studies (key = study key, patient, label_<target>, prob_<target>).
        studies: the test studies (`pipeline.studies.read_studies`), for their films and views.
        tars: the test shards.
        data: the evaluation data config (the input transform).
        thresholds: the decision threshold per target.
        options: see `eval.explain.ExplainOptions`; the deletion and randomization checks are not run here.
    """
    from pipeline import preprocess

    task = folds[0].config.model.task
    selection = select_top(studies_frame, map_targets(task), options.top)
    by_key = {study.key: study for study in studies}
    grays = GrayImages(tars, [entry.key for key in selection["key"].unique() for entry in by_key[key].films])
    backbone = folds[0].model.backbone
    layers = resolve_layers(backbone, options.layer, (data.channels, data.image_size, data.image_size))
    gradcam_dir = options.out / "gradcam"
    rows = []
    for _, chosen in progress_bar(list(selection.iterrows()), desc="fused grad-cam", unit="study",
                                  disable=len(selection) < 2):
        study = by_key[chosen["key"]]
        film_grays = [grays[entry.key] for entry in study.films]
        films = torch.from_numpy(np.stack([preprocess(gray, data) for gray in film_grays]))
        views = torch.tensor(study.views)
        cams = [ClassActivationMap(StudyClassifier(fold.model, views), options.method,
                                   [f"model.backbone.{layer}" for layer in layers]) for fold in folds]
        heats = bagged_maps(cams, films, int(chosen["output"])).numpy()
        weights, drops = film_shares(folds, films, views, int(chosen["output"]))
        for slot, (entry, gray, heat) in enumerate(zip(study.films, film_grays, heats, strict=True)):
            stem = Path(str(chosen["level"])) / f"{int(chosen['rank']):04d}_{study.key}_{entry.key}"
            rows.append({"key": entry.key, STUDY: study.key, "patient": chosen["patient"], "level": chosen["level"],
                         "rank": int(chosen["rank"]), "probability": float(chosen["probability"]),
                         "label": int(chosen["label"]), VIEW: view_name(study.views[slot]),
                         WEIGHT: float(weights[slot]), DROP: float(drops[slot]),
                         **write_map(gray, heat, gradcam_dir, stem, data.resize)})
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    gradcam_dir.mkdir(parents=True, exist_ok=True)
    index.to_csv(gradcam_dir / "index.csv", index=False)
    found = Explanations(index=index, description=f"{options.method} at {', '.join(layers)}, per film of the fused "
                         "prediction", top=options.top, selected="test studies (a map for each of their films)",
                         source="eval/fusion_explain.py")
    if options.truth is not None:
        films_meta = index[[KEY, VIEW]].drop_duplicates(KEY)
        score_on_truth(found, films_meta, thresholds, options, gradcam_dir)
    write_explanation_json(found, options.out)
    return found


@torch.no_grad()
def film_shares(folds: Sequence[FoldCheckpoint], films: torch.Tensor, views: torch.Tensor,
                output: int) -> tuple[np.ndarray, np.ndarray]:
    """Each film's pooling weight and the drop of the fused probability without it, both the mean over the folds.

    Args:
        folds: the fold checkpoints (fusion models).
        films: (N, C, S, S) one study's films.
        views: (N,) their view ids.
        output: the model output (level) whose probability is meant.

    Returns:
        (weights (N,), drops (N,)); drops are NaN for a study of one film.
    """
    n = len(films)
    device = next(folds[0].model.parameters()).device
    films, views = films.to(device), views.to(device)[None].expand(n + 1, n)
    # row 0: every film; row 1 + f: every film but f. The films are packed study after study.
    mask = torch.ones(n + 1, n, dtype=torch.bool, device=device)
    mask[1:].fill_diagonal_(False)
    rows = mask.sum(dim=1) > 0
    packed = torch.cat([films[row] for row in mask[rows]])
    weights, probabilities = [], []
    for fold in folds:
        fused = fold.model.fuse(packed, views[rows], mask[rows])
        weights.append(fused.weights[0].float().cpu())
        probabilities.append(torch.sigmoid(fused.logits[:, output].float()).cpu())
    weight = torch.stack(weights).mean(dim=0).numpy()
    probability = torch.stack(probabilities).mean(dim=0).numpy()
    drops = probability[0] - probability[1:] if n > 1 else np.full(1, np.nan)
    return weight, drops


def film_share_markdown(index: pd.DataFrame) -> str:
    """The report section: per level and view, how much of the top studies' fused probability a film of that view
    carries (the mean drop without it) and its mean pooling weight."""
    several = index.dropna(subset=[DROP])
    if several.empty:
        return "Every mapped study has a single film: no film's share to compare."
    views = pd.Categorical(several[VIEW], categories=[*VIEWS, ""], ordered=True)  # AP, LAT, ... then none
    table = several.assign(**{VIEW: views}).groupby(["level", VIEW], sort=False, observed=True).agg(
        films=(KEY, "size"), drop=(DROP, "mean"), weight=(WEIGHT, "mean")).sort_index()  # LEVELS order, then views
    lines = ["| Level | View | Films | Mean probability drop without the film | Mean pooling weight |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {level} | {view or '(none)'} | {films} | {drop:.3f} | {weight:.3f} |"
              for (level, view), films, drop, weight in table.itertuples(name=None)]
    return ("Which film carries the fused prediction of the top studies: the drop of the bagged fused probability "
            "when the film is left out of its study, and its pooling weight, per film in `gradcam/index.csv` "
            "(studies of one film left out). See `eval/fusion_explain.py`.\n\n" + "\n".join(lines))
