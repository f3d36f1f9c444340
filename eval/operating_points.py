"""What the model does at the operating points a clinic would use, with patient-bootstrap intervals.

Operating points (`OPERATING_POINTS`), each a threshold chosen on the out-of-fold predictions and applied unchanged
to the test patients (choosing it on test would flatter it):

- `spec90`, `spec95`: the lowest threshold whose out-of-fold specificity is at least 90% / 95% (the highest
  sensitivity at that specificity);
- `sens90`, `sens95`: the highest threshold whose out-of-fold sensitivity is at least 90% / 95% (the highest
  specificity at that sensitivity);
- `report`: the report's own threshold (`--threshold`, e.g. the folds' mean Youden-J threshold).

At each, on test: sensitivity, specificity, PPV and NPV at the test set's prevalence (TP / (TP + FP),
TN / (TN + FN)) and, when a prevalence p is given, PPV and NPV there by Bayes' rule:
PPV = sens p / (sens p + (1 - spec)(1 - p)), NPV = spec (1 - p) / (spec (1 - p) + (1 - sens) p).
Each comes with a percentile interval from a bootstrap of the test patients at the fixed threshold (the
uncertainty of the threshold itself, chosen on other patients, is not in it). Undefined values (no positive
call for a PPV) are NaN and left out of the interval.

    y = np.array([0, 0, 0, 0, 1, 1]); p = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    threshold_at(y, p, "specificity", 0.75)   # 0.5: specificity 3/4, sensitivity 1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from hnp.errors import HnpError
from hnp.predictions import label_column, prob_column

# point -> (the out-of-fold rate held fixed, its minimum)
OPERATING_POINTS: dict[str, tuple[str, float]] = {
    "spec90": ("specificity", 0.90), "spec95": ("specificity", 0.95),
    "sens90": ("sensitivity", 0.90), "sens95": ("sensitivity", 0.95),
}
REPORT_POINT = "report"
RATES: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "ppv_at_prevalence", "npv_at_prevalence")


def threshold_at(y_true: np.ndarray, prob: np.ndarray, fixed: str, minimum: float) -> float:
    """The threshold (positive when `prob >= threshold`) that keeps `fixed` at or above `minimum` and makes the
    other rate as high as it can be; NaN when one class is missing.

    Args:
        y_true: 0/1 labels (out-of-fold), shape (N,).
        prob: scores, shape (N,).
        fixed: "specificity" or "sensitivity".
        minimum: the rate to reach, e.g. 0.9.
    """
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return math.nan
    if fixed not in ("specificity", "sensitivity"):
        raise HnpError(f"operating point on {fixed!r}: expected specificity or sensitivity")
    # every distinct cut-off, from the highest (+inf: nothing positive) down; fpr and tpr never decrease along it
    fpr, tpr, thresholds = roc_curve(y_true, prob, drop_intermediate=False)
    thresholds = np.minimum(thresholds, np.nextafter(np.max(prob), np.inf))  # +inf as "just above the highest"
    held, other = (1.0 - fpr, tpr) if fixed == "specificity" else (tpr, 1.0 - fpr)
    allowed = np.flatnonzero(held >= minimum - 1e-12)  # rates are k/n: a tolerance, so 0.9 of 10 counts as 0.9
    best = allowed[other[allowed] == other[allowed].max()]
    return float(thresholds[best[np.argmax(held[best])]])  # ties on the other rate: the better held rate


def rates_at(y_true: np.ndarray, called: np.ndarray, prevalence: float | None) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV (+ at `prevalence`) of 0/1 calls, for one row or a stack of resamples.

    Args:
        y_true: 0/1 labels, shape (N,) or (B, N) for B bootstrap resamples.
        called: 0/1 decisions, same shape.
        prevalence: the prevalence for the Bayes-rule PPV/NPV; None = NaN there.
    """
    y_true, called = np.atleast_2d(y_true).astype(bool), np.atleast_2d(called).astype(bool)
    tp, fn = (y_true & called).sum(1), (y_true & ~called).sum(1)
    fp, tn = (~y_true & called).sum(1), (~y_true & ~called).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        rates = {"sensitivity": sens, "specificity": spec, "ppv": tp / (tp + fp), "npv": tn / (tn + fn)}
        p = math.nan if prevalence is None else prevalence
        rates["ppv_at_prevalence"] = sens * p / (sens * p + (1.0 - spec) * (1.0 - p))
        rates["npv_at_prevalence"] = spec * (1.0 - p) / (spec * (1.0 - p) + (1.0 - sens) * p)
    return rates


def point_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float, resamples: np.ndarray,
                  prevalence: float | None, level: float = 0.95) -> dict[str, float]:
    """The test rates at one threshold, each with its bootstrap interval (`<rate>_ci_low`, `<rate>_ci_high`).

    Args:
        y_true: test labels, shape (N,).
        prob: test scores, shape (N,).
        threshold: the operating point's threshold (chosen out of fold).
        resamples: (B, N) row indices of the bootstrap resamples (B may be 0: no interval).
        prevalence: the user's prevalence for PPV/NPV, or None.
        level: the interval's coverage.
    """
    y_true, called = np.asarray(y_true).astype(int), (np.asarray(prob) >= threshold).astype(int)
    point = {name: float(values[0]) for name, values in rates_at(y_true, called, prevalence).items()}
    boot = rates_at(y_true[resamples], called[resamples], prevalence) if len(resamples) else {}
    tail = (1.0 - level) / 2.0 * 100.0
    result: dict[str, float] = {"threshold": float(threshold)}
    for name in RATES:
        finite = boot[name][np.isfinite(boot[name])] if boot else np.array([])
        low, high = np.percentile(finite, [tail, 100.0 - tail]) if len(finite) else (math.nan, math.nan)
        result.update({name: point[name], f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
    return result


def operating_points_table(oof: pd.DataFrame | None, test: pd.DataFrame, targets: Sequence[str],
                           report_thresholds: Mapping[str, float], prevalence: Mapping[str, float], *,
                           n_boot: int, seed: int) -> pd.DataFrame:
    """One row per (target, operating point): the threshold and the test rates with their intervals.

    Args:
        oof: out-of-fold predictions per patient (`label_<target>`, `prob_<target>`) to choose thresholds on; None
            = only the report's own threshold.
        test: the test patients.
        targets: the targets to score.
        report_thresholds: the report's threshold per target (the `report` point).
        prevalence: target -> the prevalence for PPV/NPV at a given prevalence (targets left out: NaN there).
        n_boot: bootstrap resamples (the same resamples for every target and point).
        seed: the resampling seed.
    """
    resamples = np.random.default_rng(seed).integers(0, len(test), (n_boot, len(test)))
    rows = []
    for target in targets:
        thresholds = {REPORT_POINT: report_thresholds[target]}
        if oof is not None:
            y_oof, p_oof = oof[label_column(target)].to_numpy(), oof[prob_column(target)].to_numpy()
            thresholds.update({name: threshold_at(y_oof, p_oof, fixed, minimum)
                               for name, (fixed, minimum) in OPERATING_POINTS.items()})
        y, p = test[label_column(target)].to_numpy(), test[prob_column(target)].to_numpy()
        for name, threshold in thresholds.items():
            metrics = (point_metrics(y, p, threshold, resamples, prevalence.get(target)) if not math.isnan(threshold)
                       else {"threshold": math.nan})
            rows.append({"target": target, "point": name, **metrics, "prevalence": prevalence.get(target, math.nan)})
    return pd.DataFrame(rows)


def parse_prevalence(items: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """`--prevalence` values: `P` (every target) and/or `TARGET=P` (that target), 0 < P < 1; later items win.

    Args:
        items: the option's values, e.g. ["0.1", "L4-5=0.3"].
        targets: the report's targets, to name a wrong one.
    """
    result: dict[str, float] = {}
    for item in items:
        target, _, value = item.rpartition("=")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
        if not 0.0 < share < 1.0:
            raise HnpError(f"--prevalence {item!r}: expected P or TARGET=P with 0 < P < 1, e.g. 0.1 or L4-5=0.3")
        if target and target not in targets:
            raise HnpError(f"--prevalence {item!r}: {target!r} is not one of this report's targets "
                           f"({', '.join(targets)})")
        result.update({target: share} if target else dict.fromkeys(targets, share))
    return result
