"""Paired comparison of evaluations of the same test patients: is one model's ROC AUC significantly higher?

Two tests of the AUC difference per target, side by side:

- DeLong's test (DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated receiver
  operating characteristic curves: a nonparametric approach", Biometrics 44:837-845, 1988), computed with the
  midrank algorithm of Sun & Xu ("Fast implementation of DeLong's algorithm...", IEEE Signal Processing Letters
  21:1389-1393, 2014): z = difference / its DeLong standard error, two-sided normal p-value, Wald 95% interval.
- A paired patient bootstrap: the same resampled patients score both models; percentile 95% interval of the
  difference, and the p-value of z = difference / bootstrap standard deviation (pROC's `roc.test(method =
  "bootstrap")`). Resamples with one class only are skipped.

`compare_reports(dirs)` reads each report folder's `predictions_patients.parquet` (`hnp eval`, or any evaluation
with that table: fusion reports too), refuses folders whose test patients or labels differ, and compares every pair
on their common targets. p-values are not corrected for the several levels and pairs.

    y = np.array([0, 0, 1, 1, 0, 1]); a = np.array([.1, .4, .35, .8, .2, .7]); b = np.array([.3, .2, .6, .5, .4, .9])
    delong_test(y, a, b).p_value
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.predictions import ANY, PATIENT, label_column, prob_column
from hnp.scoring import auc_by_ranks

PATIENTS_TABLE = "predictions_patients.parquet"


@dataclass(frozen=True)
class AucDifference:
    """AUC of model a and of model b on the same cases, and the test of a - b."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    p_value: float
    ci_low: float
    ci_high: float


def delong_covariance(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The AUCs of k score vectors on the same cases and DeLong's covariance matrix of those AUCs.

    Args:
        y_true: 0/1 labels, shape (N,); both classes present.
        scores: shape (k, N), one row per model.

    Returns:
        aucs (k,) and their covariance (k, k); the covariance is NaN with fewer than two cases of a class.
    """
    y_true, scores = np.asarray(y_true).astype(bool), np.atleast_2d(np.asarray(scores, dtype=float))
    positives, negatives = scores[:, y_true], scores[:, ~y_true]
    m, n = positives.shape[1], negatives.shape[1]
    if m == 0 or n == 0:
        raise HnpError("DeLong's test needs both classes among the cases")
    # midranks (ties count half): in the pooled cases, among positives, among negatives
    pooled = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    within_pos, within_neg = rankdata(positives, axis=1), rankdata(negatives, axis=1)
    v10 = (pooled[:, :m] - within_pos) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (pooled[:, m:] - within_neg) / m  # per negative: share of positives that outrank it
    aucs = v10.mean(axis=1)
    if min(m, n) < 2:  # one case of a class: its components have no spread to estimate
        return aucs, np.full((len(aucs), len(aucs)), math.nan)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(y_true: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, level: float = 0.95) -> AucDifference:
    """DeLong's test of AUC(a) - AUC(b) on the same cases (two-sided).

    Args:
        y_true: 0/1 labels, shape (N,).
        prob_a: model a's scores, shape (N,).
        prob_b: model b's scores, shape (N,).
        level: the interval's coverage.
    """
    aucs, cov = delong_covariance(y_true, np.stack([prob_a, prob_b]))
    difference = float(aucs[0] - aucs[1])
    variance = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    se = math.nan if math.isnan(variance) else math.sqrt(max(variance, 0.0))
    return _difference(float(aucs[0]), float(aucs[1]), difference, se, level,
                       difference - norm.ppf(0.5 + level / 2.0) * se, difference + norm.ppf(0.5 + level / 2.0) * se)


def _difference(auc_a: float, auc_b: float, difference: float, se: float, level: float, low: float,
                high: float) -> AucDifference:
    if math.isnan(se):
        p_value = math.nan
    elif se > 0:
        p_value = float(2.0 * norm.sf(abs(difference) / se))
    else:  # identical rankings: no difference and no spread
        p_value = 1.0 if difference == 0 else 0.0
    return AucDifference(auc_a, auc_b, difference, se, p_value, float(low), float(high))


def paired_bootstrap_test(y_true: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, *, n_boot: int, seed: int,
                          level: float = 0.95) -> AucDifference:
    """The paired patient bootstrap of AUC(a) - AUC(b): percentile interval, p-value from the bootstrap SD.

    Args:
        y_true: 0/1 labels, one row per patient, shape (N,).
        prob_a: model a's scores, shape (N,).
        prob_b: model b's scores, shape (N,).
        n_boot: resamples (at least 2).
        seed: the resampling seed.
        level: the interval's coverage.
    """
    y_true, prob_a, prob_b = np.asarray(y_true).astype(bool), np.asarray(prob_a), np.asarray(prob_b)
    rows = np.random.default_rng(seed).integers(0, len(y_true), (n_boot, len(y_true)))  # (B, N) patients
    differences = auc_by_ranks(y_true[rows], prob_a[rows]) - auc_by_ranks(y_true[rows], prob_b[rows])
    differences = differences[np.isfinite(differences)]  # resamples with one class have no AUC
    auc_a, auc_b = roc_auc_score(y_true, prob_a), roc_auc_score(y_true, prob_b)
    if len(differences) < 2:
        return AucDifference(auc_a, auc_b, auc_a - auc_b, math.nan, math.nan, math.nan, math.nan)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(differences, [tail, 100.0 - tail])
    return _difference(auc_a, auc_b, auc_a - auc_b, float(np.std(differences, ddof=1)), level, low, high)


def read_patients(report_dir: Path) -> pd.DataFrame:
    """A report folder's patient table, indexed by patient, or an error naming the file."""
    path = report_dir / PATIENTS_TABLE
    if not path.is_file():
        raise HnpError(f"{path}: not found; is {report_dir} a report folder written by `hnp eval`?")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for damaged or foreign files
        raise HnpError(f"{path}: not a readable Parquet file: {err}") from err
    if PATIENT not in frame or frame[PATIENT].duplicated().any():
        raise HnpError(f"{path}: needs one row per patient in a `{PATIENT}` column")
    return frame.set_index(PATIENT).sort_index()


def scored_targets(frame: pd.DataFrame) -> list[str]:
    """The targets a patient table holds both labels and probabilities for, in LEVELS-then-any order."""
    return [t for t in (*LEVELS, ANY) if label_column(t) in frame and prob_column(t) in frame]


def check_same_patients(tables: dict[str, pd.DataFrame]) -> None:
    """Every table must hold the same patients with the same labels, or the comparison is not paired.

    Args:
        tables: report name -> its patient table (indexed by patient).
    """
    (first, reference), *others = tables.items()
    for name, table in others:
        missing, extra = reference.index.difference(table.index), table.index.difference(reference.index)
        if len(missing) or len(extra):
            raise HnpError(f"{name} and {first} are not evaluations of the same test patients: {len(extra)} of "
                           f"{name}'s {len(table)} patients are not in {first}, {len(missing)} of {first}'s "
                           f"{len(reference)} are not in {name}")
        for target in set(scored_targets(reference)) & set(scored_targets(table)):
            column = label_column(target)
            differ = int((reference[column] != table.loc[reference.index, column]).sum())
            if differ:
                raise HnpError(f"{name} and {first} hold other labels for the same patients: {column} differs for "
                               f"{differ} of {len(reference)} patients")


def report_names(dirs: Sequence[Path]) -> list[str]:
    """A short unique name per report folder: its folder name, or its path where two names clash."""
    names = [path.name or str(path) for path in dirs]
    return [str(path) if names.count(name) > 1 else name for path, name in zip(dirs, names, strict=True)]


def compare_reports(dirs: Sequence[Path], *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every pair of reports (a, b), per common target: both AUCs, a - b, DeLong's and the bootstrap's test.

    Args:
        dirs: two or more report folders with `predictions_patients.parquet`, of the same test patients.
        n_boot: paired bootstrap resamples (0 = DeLong only).
        seed: the bootstrap seed (the same resamples for every pair and target).

    Returns:
        one row per (a, b, target): `a`, `b`, `target`, `n`, `n_pos`, `auc_a`, `auc_b`, `difference`, `delong_se`,
        `delong_ci_low`, `delong_ci_high`, `delong_p_value`, and the same four `bootstrap_*` (absent when
        n_boot < 2).
    """
    if len(dirs) < 2:
        raise HnpError("hnp compare needs at least two report folders")
    tables = dict(zip(report_names(dirs), (read_patients(Path(d)) for d in dirs), strict=True))
    check_same_patients(tables)
    rows = []
    for (name_a, a), (name_b, b) in itertools.combinations(tables.items(), 2):
        common = [t for t in scored_targets(a) if t in scored_targets(b)]
        if not common:
            raise HnpError(f"{name_a} and {name_b} have no target in common")
        for target in common:
            rows.append({"a": name_a, "b": name_b, "target": target,
                         **_pair_row(a[label_column(target)].to_numpy(), a[prob_column(target)].to_numpy(),
                                     b[prob_column(target)].to_numpy(), n_boot, seed)})
    return pd.DataFrame(rows)


def _pair_row(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    counts = {"n": len(y), "n_pos": int(y.sum())}
    if len(np.unique(y)) < 2:
        return {**counts, **dict.fromkeys(("auc_a", "auc_b", "difference"), math.nan)}
    delong = delong_test(y, prob_a, prob_b)
    row = {**counts, "auc_a": delong.auc_a, "auc_b": delong.auc_b, "difference": delong.difference,
           **{f"delong_{key}": value for key, value in _test_fields(delong).items()}}
    if n_boot > 1:
        boot = paired_bootstrap_test(y, prob_a, prob_b, n_boot=n_boot, seed=seed)
        row.update({f"bootstrap_{key}": value for key, value in _test_fields(boot).items()})
    return row


def _test_fields(result: AucDifference) -> dict[str, float]:
    fields = asdict(result)
    return {key: fields[key] for key in ("se", "ci_low", "ci_high", "p_value")}


def comparison_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table: one row per pair and target."""
    lines = ["| A | B | Target | Patients (HNP) | AUC A | AUC B | A - B | DeLong 95% CI | DeLong p "
             "| Bootstrap 95% CI | Bootstrap p |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        cells = [row.a, row.b, row.target, f"{row.n} ({row.n_pos})", _num(row.auc_a), _num(row.auc_b),
                 _signed(row.difference), _interval(row, "delong"), _p(getattr(row, "delong_p_value", math.nan)),
                 _interval(row, "bootstrap"), _p(getattr(row, "bootstrap_p_value", math.nan))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.3f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _interval(row: object, test: str) -> str:
    low, high = getattr(row, f"{test}_ci_low", math.nan), getattr(row, f"{test}_ci_high", math.nan)
    return "–" if math.isnan(low) else f"{low:+.3f} to {high:+.3f}"


def plot_comparison(table: pd.DataFrame, path: Path) -> None:
    """A forest plot per pair: the AUC difference per target with its DeLong and bootstrap 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(zip(table["a"], table["b"], strict=True)))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 0.5 * table["target"].nunique() + 1.8),
                             squeeze=False, sharex=True)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        part = table[(table["a"] == a) & (table["b"] == b)].reset_index(drop=True)
        y = np.arange(len(part))[::-1]
        for test, offset, colour in (("delong", 0.12, "tab:blue"), ("bootstrap", -0.12, "tab:orange")):
            if f"{test}_ci_low" in part:
                errors = [part["difference"] - part[f"{test}_ci_low"], part[f"{test}_ci_high"] - part["difference"]]
                ax.errorbar(part["difference"], y + offset, xerr=errors, fmt="o", ms=4, capsize=3, color=colour,
                            label=f"{test} 95% CI")
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_yticks(y, part["target"])
        ax.set(title=f"{a} - {b}", xlabel="ROC AUC difference")
        if ax.get_legend_handles_labels()[0]:  # no interval at all where a class has a single patient
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")  # the name may be a temporary one (atomic_write)
    plt.close(fig)
