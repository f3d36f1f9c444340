"""`hnp eval` of a fusion run (`model.fusion` other than "none"): the fold models score each test study from all
its films, the folds are bagged per study, then the studies are averaged per patient, with the same tables and
thresholds as an image-level run (`eval.run_eval`).

    meta = read_study_meta("shards", ["test"])        # one row per study, the columns of eval.samples.read_sample_meta

A study's row has its study key as `key`, its views joined by "+" (e.g. "AP+LAT+FLEX+EXT") as `view`, and its
labels; its predictions go to `predictions_studies.parquet` in place of `predictions_images.parquet`, and each
film's pooling weight to `film_weights.parquet` (`film_weights`), summarized per view in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from eval.samples import META_COLUMNS
from hnp.bars import progress_bar
from hnp.levels import VIEWS
from hnp.predictions import KEY, VIEW
from hnp.shard_format import split_label_vector
from pipeline.studies import StudySample, read_studies
from train.model import FoldCheckpoint

STUDIES_TABLE = "predictions_studies.parquet"
FILMS_TABLE = "film_weights.parquet"
FILM, WEIGHT = "film", "weight"
VIEW_SEPARATOR = "+"
_NO_VIEW = ""


def view_names(study: StudySample) -> str:
    """The study's views in film order, joined by "+" (a film without a view is an empty name)."""
    return VIEW_SEPARATOR.join(view_name(v) for v in study.views)


def study_meta(studies: Sequence[StudySample]) -> pd.DataFrame:
    """One row per study: key, patient, view (its views joined), label_<level> and label_any, in key order.

    Args:
        studies: from `pipeline.studies.read_studies`.
    """
    rows = []
    for study in studies:
        fields = split_label_vector(study.vector[None])
        labels = [int(v) for v in fields["labels"][0]]
        rows.append((study.key, study.patient, view_names(study), *labels, int(fields["any"][0])))
    frame = pd.DataFrame(rows, columns=list(META_COLUMNS))
    return frame.sort_values("key", kind="stable").reset_index(drop=True)


def read_study_meta(shards: Path, splits: Sequence[str]) -> pd.DataFrame:
    """`study_meta` of the named splits' studies (the study index, checked against the tars)."""
    return study_meta(read_studies(shards, list(splits)))


@torch.no_grad()
def film_weights(folds: Sequence[FoldCheckpoint], batches: Iterable[dict[str, Any]], device: torch.device,
                 amp: str) -> pd.DataFrame:
    """Each test film's weight in its study's pooling (`FusionModel.fuse`), the mean over the fold models: one row
    per film with the study key (`key`), the film's sample key (`film`), its view and `weight` (a study's sum to 1).

    A second pass over the study batches (the prediction pass keeps only the logits).

    Args:
        folds: the fold checkpoints (fusion models, already on `device`).
        batches: evaluation study batches (`pipeline.studies`).
        device: where the models run.
        amp: the autocast mode (`eval.run_eval.eval_amp`).
    """
    from train.fusion import model_inputs
    from train.loop import autocast

    rows = []
    for batch in progress_bar(batches, desc="film weights", unit="batch", leave=False):
        inputs = model_inputs(batch, device)
        with autocast(amp, device):
            weights = torch.stack([fold.model.fuse(*inputs).weights.float() for fold in folds]).mean(dim=0).cpu()
        views = batch["view"].cpu()
        for b, (key, films) in enumerate(zip(batch["key"], batch["films"], strict=True)):
            rows += [(key, film, view_name(int(views[b, slot])), float(weights[b, slot]))
                     for slot, film in enumerate(films)]
    return pd.DataFrame(rows, columns=[KEY, FILM, VIEW, WEIGHT])


def view_name(view: int) -> str:
    """A view id's name (`hnp.levels.VIEWS`); empty for a film without a view."""
    return VIEWS[view] if view < len(VIEWS) else _NO_VIEW


def weights_markdown(films: pd.DataFrame) -> str:
    """The report section: the mean pooling weight of a film per view, and how many test films had that view."""
    by_view = films.groupby(VIEW)[WEIGHT].agg(["mean", "count"]).sort_values("mean", ascending=False)
    lines = ["| view | mean weight | films |", "|---|---:|---:|"]
    lines += [f"| {view or '(none)'} | {row['mean']:.3f} | {int(row['count'])} |" for view, row in by_view.iterrows()]
    return ("Each film's weight in its study's pooling (attention weights; equal weights for `mean` fusion), "
            f"the mean over the fold models; per film in `{FILMS_TABLE}`.\n\n" + "\n".join(lines))
