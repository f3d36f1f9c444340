"""Bagging of the fold models, per-patient aggregation and the decision thresholds (Kim et al. 2022, Methods).

The paper: "a more accurate prediction was derived by combining predictions using a bagging ensemble, with four
weights obtained through four-fold training data ... the average value of the predicted probability for each
patient was obtained for the final decision", with the optimal threshold of each fold. Here that is:

1. every fold model predicts every test image: `prob_fold{k}_<column>`;
2. bagged image probability = mean over the folds: `prob_<column>`;
3. patient probability = mean of the bagged probabilities of the patient's images; the patient's label at a
   level is positive when any of the patient's images carries it (they agree unless a patient has several
   studies with different MRI reads);
4. threshold per level (`--threshold`):
   - `fold-mean` (default): the mean of the folds' Youden-J thresholds (each fold's, from its validation);
   - `fixed:X`: X for every level, e.g. `fixed:0.5`;
   - `youden-oof`: Youden's J on the pooled out-of-fold validation predictions of all folds, aggregated per
     patient the same way as the test set. Thresholds are never chosen on the test set itself.
   A target the rule gives no threshold for (no positives in validation) gets 0.5, with a warning.

The frames follow `hnp.predictions` (`label_<target>`, `prob_<target>`, `pred_<target>`, targets spelled as
LEVELS plus "any"). "any" (HNP at one level or more) is the model's own output for the `any` task; for the
level tasks it is derived there (`hnp.predictions.add_any`) and gets its own Youden-J threshold per fold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hnp.errors import HnpError
from hnp.predictions import ANY, PATIENT, add_any, label_column, pred_column, prob_column, report_targets
from hnp.scoring import youden_threshold

# The cut-off of a target whose rule gives none (a rare level without positives in every validation fold).
FALLBACK_THRESHOLD = 0.5
log = logging.getLogger("hnp.eval")


def bag_folds(images: pd.DataFrame, folds: Sequence[int], targets: Sequence[str]) -> pd.DataFrame:
    """Add the bagged probability `prob_<target>` = mean over folds of `prob_fold<k>_<target>`.

    Args:
        images: one row per image with the per-fold probability columns.
        folds: the fold numbers that predicted.
        targets: the model's targets (`hnp.predictions.model_targets`).
    """
    if not folds:
        raise HnpError("bagging needs at least one fold model")
    bagged = {prob_column(target): images[[prob_column(target, k) for k in folds]].mean(axis=1) for target in targets}
    return images.assign(**bagged)


def patient_means(images: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """One row per patient: mean probability and OR of labels over the patient's images, and the image count.

    Args:
        images: one row per image with `patient`, `prob_<target>` and (when known) `label_<target>`.
        targets: the targets to aggregate.
    """
    grouped = images.groupby(PATIENT, sort=True)
    labels = [label_column(t) for t in targets if label_column(t) in images]
    patients = pd.concat(
        [grouped.size().rename("n_images"), grouped[labels].max(), grouped[[prob_column(t) for t in targets]].mean()],
        axis=1,
    )
    return patients.reset_index()


@dataclass(frozen=True)
class ThresholdRule:
    """How the per-target decision threshold is chosen; see the module docstring."""

    kind: str  # "fold-mean", "fixed" or "youden-oof"
    value: float = math.nan  # the cut-off for "fixed"


def parse_threshold_rule(text: str) -> ThresholdRule:
    """Parse `fold-mean`, `youden-oof` or `fixed:X` (0 < X < 1)."""
    if text in ("fold-mean", "youden-oof"):
        return ThresholdRule(text)
    kind, _, value = text.partition(":")
    if kind == "fixed":
        try:
            cut = float(value)
        except ValueError:
            cut = math.nan
        if 0.0 < cut < 1.0:
            return ThresholdRule("fixed", cut)
    raise HnpError(f"--threshold {text!r}: expected fold-mean, youden-oof or fixed:X with 0 < X < 1 (e.g. fixed:0.5)")


def fold_thresholds(
    checkpoint_thresholds: dict[str, float], val_images: pd.DataFrame | None, task: str, fold: int
) -> dict[str, float]:
    """One fold's Youden-J threshold per target (display names).

    The checkpoint holds the level thresholds (and "any" for the `any` task). For the level tasks "any" is a
    derived score, so its threshold is Youden's J on the fold's out-of-fold predictions with `add_any` (NaN, with
    a warning, when they are missing; `resolve_thresholds` then falls back).

    Args:
        checkpoint_thresholds: the checkpoint's `thresholds`, keyed by target.
        val_images: the fold's validation predictions (`label_<target>`, `prob_<target>`), or None if absent.
        task: the model task.
        fold: the fold number, for error messages.
    """
    result = {}
    for name in report_targets(task):
        if name in checkpoint_thresholds:
            result[name] = float(checkpoint_thresholds[name])
        elif name == ANY and val_images is not None:
            frame = add_any(val_images, task)
            result[name] = youden_threshold(frame[label_column(ANY)].to_numpy(), frame[prob_column(ANY)].to_numpy())
        elif name == ANY:
            log.warning("fold %d: no val_predictions.parquet, so no threshold for the derived 'any'", fold)
            result[name] = math.nan
        else:
            raise HnpError(f"fold {fold}: best.pt holds no threshold for {name}; is it a checkpoint of this task?")
    return result


def resolve_thresholds(
    rule: ThresholdRule,
    per_fold: Sequence[dict[str, float]],
    oof_patients: pd.DataFrame | None,
    task: str,
) -> dict[str, float]:
    """The decision threshold of each target under `rule`.

    Args:
        rule: from `parse_threshold_rule`.
        per_fold: each fold's thresholds from `fold_thresholds`.
        oof_patients: pooled out-of-fold predictions per patient (for `youden-oof`), with "any" added.
        task: the model task.
    """
    names = report_targets(task)
    if rule.kind == "fixed":
        return {name: rule.value for name in names}
    if rule.kind == "fold-mean":
        # nanmean over the folds that have one: a fold whose validation lacked positives has none at that level
        chosen = {name: _nanmean([fold[name] for fold in per_fold]) for name in names}
    elif oof_patients is None:
        raise HnpError("--threshold youden-oof needs every fold's val_predictions.parquet")
    else:
        chosen = {name: youden_threshold(oof_patients[label_column(name)].to_numpy(),
                                         oof_patients[prob_column(name)].to_numpy()) for name in names}
    missing = [name for name, value in chosen.items() if math.isnan(value)]
    if missing:
        log.warning("no %s threshold for %s (validation had one class only, or no predictions): using %.1f there",
                    rule.kind, ", ".join(missing), FALLBACK_THRESHOLD)
    return {name: FALLBACK_THRESHOLD if math.isnan(value) else value for name, value in chosen.items()}


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def add_decisions(patients: pd.DataFrame, thresholds: dict[str, float], task: str) -> pd.DataFrame:
    """Add `pred_<target>` = 1 where `prob_<target> >= threshold`, per reported target."""
    return patients.assign(**{pred_column(target): (patients[prob_column(target)] >= thresholds[target]).astype(int)
                              for target in report_targets(task)})
