"""`hnp eval` of a fusion run (`model.fusion` other than "none"): the fold models score each test study from all
its films, the folds are bagged per study, then the studies are averaged per patient, with the same tables and
thresholds as an image-level run (`eval.run_eval`).

    meta = read_study_meta("shards", ["test"])        # one row per study, the columns of eval.samples.read_sample_meta

A study's row has its study key as `key`, its views joined by "+" (e.g. "AP+LAT+FLEX+EXT") as `view`, and its
labels; its predictions go to `predictions_studies.parquet` in place of `predictions_images.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eval.samples import META_COLUMNS
from hnp.levels import VIEWS
from hnp.shard_format import split_label_vector
from pipeline.studies import StudySample, read_studies

STUDIES_TABLE = "predictions_studies.parquet"
VIEW_SEPARATOR = "+"
_NO_VIEW = ""


def view_names(study: StudySample) -> str:
    """The study's views in film order, joined by "+" (a film without a view is an empty name)."""
    return VIEW_SEPARATOR.join(VIEWS[v] if v < len(VIEWS) else _NO_VIEW for v in study.views)


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
