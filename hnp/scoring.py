"""The scores training and evaluation both compute per target: ROC AUC and the Youden-J threshold.

Here, in the shared core, because `train` chooses each fold's best epoch and thresholds with them and `eval`
applies the same rule to the test set; `train` never imports `eval`.

    y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
    roc_auc(y, p)            # 0.75
    youden_threshold(y, p)   # 0.35: sensitivity 1, specificity 0.5
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """scikit-learn's ROC AUC, NaN when only one class is present (an AUC is undefined then)."""
    y_true = np.asarray(y_true)
    return float(roc_auc_score(y_true, prob)) if len(np.unique(y_true)) == 2 else math.nan


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The probability cut-off that maximises Youden's J = sensitivity + specificity - 1 on the ROC curve.

    A sample is called positive when `prob >= threshold` (scikit-learn's convention). Returns NaN when only one
    class is present, since no cut-off is defined then.

    Args:
        y_true: 0/1 labels, shape (N,).
        prob: scores, shape (N,).
    """
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return math.nan
    fpr, tpr, thresholds = roc_curve(y_true, prob)
    best = int(np.argmax(tpr - fpr))
    # roc_curve's first threshold is +inf (nothing called positive); J = 0 there, so it only wins when no
    # cut-off beats chance, and then "call everything negative" is spelled as a threshold just above the max.
    return float(min(thresholds[best], np.nextafter(np.max(prob), np.inf)))


def auc_by_ranks(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row at once (Mann-Whitney: the positives' midrank sum), NaN where a row lacks a class.

    The bootstraps' thousands of resamples (`eval.compare`, `eval.metrics`) without `roc_auc_score`'s per-call
    validation: about 100x faster per resample (tests/test_eval_compare.py checks that both agree).

    Args:
        y_true: 0/1 labels, shape (B, N).
        scores: shape (B, N).
    """
    y_true = np.asarray(y_true).astype(bool)
    ranks = rankdata(scores, axis=1)  # midranks: ties count half
    m = y_true.sum(axis=1)
    n = y_true.shape[1] - m
    with np.errstate(invalid="ignore", divide="ignore"):
        aucs = ((ranks * y_true).sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return np.where((m > 0) & (n > 0), aucs, np.nan)
