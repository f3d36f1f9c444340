"""Binary classification metrics per level, with a patient-bootstrap 95% interval for ROC AUC.

Everything is computed with scikit-learn (the bootstrap's resampled AUCs by ranks, `hnp.scoring.auc_by_ranks`,
the same value without its per-call cost); this module only decides what goes in and how it is laid out.
One row of the inputs is one unit of analysis: a patient for the test metrics (the paper's final decision is
per patient), an image for the cross-validation view. When several rows belong to one patient, pass `groups`
so the bootstrap resamples patients, not rows (images of one patient are not independent).

    y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
    binary_metrics(y, p, threshold=0.5, n_boot=200, seed=0)["roc_auc"]  # 0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from hnp.predictions import label_column, prob_column
from hnp.scoring import auc_by_ranks

# The columns of metrics.csv, in order; metrics.json holds the same values keyed by target.
METRIC_NAMES: tuple[str, ...] = (
    "precision", "recall", "f1", "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "accuracy",
    "threshold", "n", "n_pos",
)


def bootstrap_auc_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC, resampling whole groups (patients) with replacement.

    Resamples that hold only one class have no AUC and are skipped; the interval comes from the rest.
    The same seed gives the same interval.

    Args:
        y_true: 0/1 labels, shape (N,).
        prob: scores, shape (N,).
        n_boot: number of bootstrap resamples.
        seed: seed of the resampling generator.
        groups: the patient of each row, shape (N,); None = every row is its own patient.
        level: coverage of the interval.
    """
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    if len(np.unique(y_true)) < 2 or n_boot <= 0:
        return math.nan, math.nan
    members = None if groups is None else _group_members(groups)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        rows = _resample_rows(rng, members, len(y_true))
        if y_true[rows].min() != y_true[rows].max():
            aucs.append(auc_by_ranks(y_true[rows][None], prob[rows][None])[0])  # roc_auc_score's value, faster
    if not aucs:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(aucs, [tail, 100.0 - tail])
    return float(low), float(high)


def _resample_rows(rng: np.random.Generator, members: list[np.ndarray] | None, n: int) -> np.ndarray:
    """Row indices of one bootstrap resample: n rows, or as many groups as there are, drawn with replacement."""
    if members is None:
        return rng.integers(0, n, n)
    return np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def _group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group, so a resample of groups turns into a resample of rows."""
    codes, _ = pd.factorize(pd.Series(groups))
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def binary_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Precision, recall, F1 and accuracy at `threshold`; ROC AUC (+ bootstrap CI) and PR AUC from the scores.

    Precision, recall and F1 are those of the positive class (HNP), with 0 where undefined (no predicted or
    no true positives). ROC AUC, its interval and PR AUC are NaN when only one class is present.

    Args:
        y_true: 0/1 labels, shape (N,).
        prob: scores, shape (N,); positive when `prob >= threshold`.
        threshold: the decision cut-off.
        n_boot: bootstrap resamples for the ROC AUC interval (0 = no interval).
        seed: bootstrap seed.
        groups: the patient of each row when a patient has several rows.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    pred = (prob >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, pred, average="binary", pos_label=1, zero_division=0
    )
    two_classes = len(np.unique(y_true)) == 2
    low, high = bootstrap_auc_ci(y_true, prob, n_boot=n_boot, seed=seed, groups=groups)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(y_true, prob)) if two_classes else math.nan,
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "pr_auc": float(average_precision_score(y_true, prob)) if two_classes else math.nan,
        "accuracy": float(accuracy_score(y_true, pred)),
        "threshold": float(threshold),
        "n": int(len(y_true)),
        "n_pos": int(y_true.sum()),
    }


def class_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> pd.DataFrame:
    """Precision, recall and F1 of each class (rows "No-HNP", "HNP"), the layout of the paper's Table 2.

    Args:
        y_true: 0/1 labels, shape (N,).
        prob: scores, shape (N,).
        threshold: the decision cut-off.
    """
    pred = (np.asarray(prob) >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        np.asarray(y_true).astype(int), pred, labels=[0, 1], zero_division=0
    )
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1}, index=["No-HNP", "HNP"])


def metrics_table(
    frame: pd.DataFrame,
    targets: Sequence[str],
    thresholds: dict[str, float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    group_column: str | None = None,
) -> pd.DataFrame:
    """`binary_metrics` for each target, one row per target, indexed by the target's display name.

    Args:
        frame: holds `label_<target>` and `prob_<target>` for each target (`hnp.predictions`).
        targets: the targets, e.g. `hnp.predictions.report_targets(task)`.
        thresholds: target -> decision cut-off.
        n_boot: bootstrap resamples per target.
        seed: bootstrap seed (the same for every target, so each target's interval is reproducible alone).
        group_column: column naming each row's patient, when rows are images.
    """
    groups = frame[group_column].to_numpy() if group_column else None
    rows = {
        target: binary_metrics(
            frame[label_column(target)].to_numpy(), frame[prob_column(target)].to_numpy(), thresholds[target],
            n_boot=n_boot, seed=seed, groups=groups,
        )
        for target in targets
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_NAMES))
    table.index.name = "target"
    return table
