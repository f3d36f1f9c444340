"""Whether the predicted probabilities can be taken at their word: reliability diagram, expected calibration error
(ECE), Brier score, and an optional recalibration fitted on the out-of-fold predictions only.

- Reliability diagram: the probabilities cut into `bins` equal-width bins on [0, 1] (a bin holds (low, high], the
  first also 0: scikit-learn's `calibration_curve` rule); per bin, the mean predicted probability against the
  observed share of HNP. A calibrated model lies on the diagonal.
- ECE (Naeini et al., AAAI 2015): sum over bins of (bin count / N) * |observed share - mean probability|.
- Brier score (Brier 1950): mean of (probability - label)^2. `brier_reference` is the Brier score of always
  predicting the prevalence, prevalence * (1 - prevalence): a useful model scores below it.
- Recalibration (`--calibrate`): Platt scaling (Platt 1999: a logistic regression of the label on the logit of the
  probability) or isotonic regression (Zadrozny & Elkan 2002), one per target, fitted on the pooled out-of-fold
  predictions per patient and applied to the test patients. Never fitted on test. Both maps are non-decreasing,
  so the ranking (ROC AUC) is kept, up to the ties isotonic regression makes; where the out-of-fold scores run
  against the labels (a worse-than-chance fit), Platt's slope is held at 0, the constrained fit: every test
  patient gets the out-of-fold prevalence, with a warning, rather than a reversed ranking.

    y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
    calibration_summary(y, p, bins=2)   # ece 0.0875, brier 0.158125, brier_reference 0.25, n 4, bins
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from hnp.errors import HnpError
from hnp.predictions import label_column, prob_column

log = logging.getLogger("hnp.eval")
DEFAULT_BINS = 10
RECALIBRATIONS: tuple[str, ...] = ("platt", "isotonic")
# Probabilities are clipped this far from 0 and 1 before the logit, so a saturated model stays finite.
_EPSILON = 1e-6

Recalibration = Callable[[np.ndarray], np.ndarray]


def reliability_bins(y_true: np.ndarray, prob: np.ndarray, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """The reliability diagram's points: one row per non-empty bin.

    Args:
        y_true: 0/1 labels, shape (N,).
        prob: probabilities in [0, 1], shape (N,).
        bins: number of equal-width bins on [0, 1].

    Returns:
        columns `low`, `high` (the bin's edges), `n`, `mean_prob`, `observed` (share of label 1).
    """
    y_true, prob = np.asarray(y_true, dtype=float), np.asarray(prob, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)  # (low, high]: scikit-learn's calibration_curve binning
    counts = np.bincount(ids, minlength=bins)
    filled = counts > 0
    return pd.DataFrame({
        "low": edges[:-1][filled], "high": edges[1:][filled], "n": counts[filled],
        "mean_prob": np.bincount(ids, weights=prob, minlength=bins)[filled] / counts[filled],
        "observed": np.bincount(ids, weights=y_true, minlength=bins)[filled] / counts[filled],
    })


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE from `reliability_bins`: the count-weighted mean gap between observed share and mean probability."""
    return float((table["n"] * (table["observed"] - table["mean_prob"]).abs()).sum() / table["n"].sum())


def brier_score(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label."""
    return float(np.mean((np.asarray(prob, dtype=float) - np.asarray(y_true, dtype=float)) ** 2))


def calibration_summary(y_true: np.ndarray, prob: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """ECE, Brier score, the prevalence's Brier score, n, and the reliability diagram's bins (as records).

    Args:
        y_true: 0/1 labels, shape (N,).
        prob: probabilities, shape (N,).
        bins: reliability diagram bins.
    """
    y_true = np.asarray(y_true, dtype=float)
    if len(y_true) == 0:
        raise HnpError("calibration of an empty set of predictions")
    table = reliability_bins(y_true, prob, bins)
    prevalence = float(y_true.mean())
    return {
        "ece": expected_calibration_error(table), "brier": brier_score(y_true, prob),
        "brier_reference": prevalence * (1.0 - prevalence), "n": len(y_true), "bins": table.to_dict(orient="records"),
    }


def _logit(prob: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(prob, dtype=float), _EPSILON, 1.0 - _EPSILON)
    return np.log(clipped / (1.0 - clipped))


def fit_recalibration(kind: str, y_true: np.ndarray, prob: np.ndarray) -> Recalibration:
    """A map from raw to recalibrated probabilities, fitted on (y_true, prob).

    Args:
        kind: "platt" or "isotonic".
        y_true: 0/1 labels of the fitting set (out-of-fold predictions), shape (N,).
        prob: their probabilities, shape (N,).
    """
    y_true = np.asarray(y_true).astype(int)
    if kind not in RECALIBRATIONS:
        raise HnpError(f"--calibrate {kind!r}: expected one of {', '.join(RECALIBRATIONS)}")
    if len(np.unique(y_true)) < 2:
        raise HnpError(f"--calibrate {kind}: the out-of-fold predictions hold one class only, nothing to fit")
    if kind == "platt":
        platt = LogisticRegression(C=np.inf).fit(_logit(prob)[:, None], y_true)  # unpenalized: Platt's fit
        if platt.coef_[0, 0] < 0:
            prevalence = float(y_true.mean())
            log.warning("--calibrate platt: the out-of-fold scores fall as HNP becomes likelier (slope %.2f); "
                        "recalibrated to the out-of-fold prevalence %.3f instead of reversing the ranking",
                        platt.coef_[0, 0], prevalence)
            return lambda p: np.full(len(p), prevalence)
        return lambda p: platt.predict_proba(_logit(p)[:, None])[:, 1]
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(np.asarray(prob, float), y_true)
    return lambda p: isotonic.predict(np.asarray(p, dtype=float))


def recalibrate(fit_on: pd.DataFrame, apply_to: pd.DataFrame, targets: Sequence[str], kind: str) -> pd.DataFrame:
    """`apply_to`'s probabilities recalibrated per target by a map fitted on `fit_on` (same columns, other rows).

    Args:
        fit_on: the out-of-fold predictions per patient (`label_<target>`, `prob_<target>`).
        apply_to: the test patients (`prob_<target>`).
        targets: the targets to recalibrate.
        kind: "platt" or "isotonic".

    Returns:
        one column per target, named `prob_<target>` (the recalibrated values), indexed like `apply_to`; a target
        whose out-of-fold labels hold one class has nothing to fit and is left out, with a warning.
    """
    columns = {}
    for target in targets:
        if fit_on[label_column(target)].nunique() < 2:
            log.warning("--calibrate %s: %s has one class only in the out-of-fold predictions; left uncalibrated",
                        kind, target)
            continue
        mapping = fit_recalibration(kind, fit_on[label_column(target)].to_numpy(), fit_on[prob_column(target)])
        columns[prob_column(target)] = mapping(apply_to[prob_column(target)].to_numpy())
    return pd.DataFrame(columns, index=apply_to.index)


def plot_calibration(curves: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Reliability diagrams, one panel per target, one line per prediction set, the diagonal for reference.

    Args:
        curves: target -> set name (e.g. "test") -> `calibration_summary` of that set.
        path: the PNG to write (any name: the format is fixed).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    for ax, (target, sets) in zip(axes.flat, curves.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for name, summary in sets.items():
            bins = pd.DataFrame(summary["bins"])
            ax.plot(bins["mean_prob"], bins["observed"], marker="o", ms=3, lw=1.4,
                    label=f"{name} (ECE {summary['ece']:.3f})")
        ax.set(title=target, xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed HNP share")
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
