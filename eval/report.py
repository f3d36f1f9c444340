"""The files a person reads after `hnp eval`: metrics.json/.csv, roc.png and report.md.

report.md puts the test metrics in the layout of the paper's Table 5 with the paper's own numbers beside them,
and the cross-validation results (each fold's out-of-fold predictions at that fold's own thresholds, image
level, as the paper's Tables 2-4) in the layout of Tables 2 (task `any`), 3 (`levels`) or 4 (`levels_age`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.metrics import binary_metrics, class_metrics
from hnp.files import atomic_write_text
from hnp.levels import LEVELS
from hnp.predictions import ANY, label_column, prob_column, report_targets

# Kim et al. 2022, Table 5 (test set, bagged, per patient): precision, recall, F1, ROC AUC per level. The paper
# prints one accuracy, 69.1%, in the first row, without saying how it pools the levels.
PAPER_TABLE5: dict[str, tuple[float, float, float, float]] = {
    "L1-2": (0.05, 0.60, 0.09, 0.68),
    "L2-3": (0.09, 0.65, 0.15, 0.68),
    "L3-4": (0.18, 0.38, 0.24, 0.63),
    "L4-5": (0.41, 0.47, 0.43, 0.67),
    "L5-S1": (0.36, 0.55, 0.43, 0.72),
}
PAPER_TABLE5_ACCURACY = 0.691
_CV_TABLE = {"any": "Table 2", "levels": "Table 3", "levels_age": "Table 4"}


def write_metrics(table: pd.DataFrame, out_dir: Path, meta: Mapping[str, Any]) -> None:
    """metrics.csv (one row per target) and metrics.json (`meta` plus {target: {metric: value}}, NaN as null).

    Args:
        table: from `metrics_table` (and any further per-target columns, e.g. calibration), indexed by target.
        out_dir: the report folder.
        meta: run-level facts stored beside the metrics (task, threshold rule, counts, bootstrap settings).
    """
    table.to_csv(out_dir / "metrics.csv", index_label="target", float_format="%.6g")
    # to_dict keeps each column's type (iterrows would make the counts floats)
    per_target = {name: {key: _json_number(value) for key, value in row.items()}
                  for name, row in table.to_dict(orient="index").items()}
    document = json_safe({**meta, "metrics": per_target})
    atomic_write_text(out_dir / "metrics.json", json.dumps(document, indent=2, allow_nan=False) + "\n")


def _json_number(value: Any) -> float | int | None:
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None if math.isnan(float(value)) else float(value)


def json_safe(value: Any) -> Any:
    """NaN (an undefined metric or threshold) as null, so metrics.json is standard JSON."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, bool):
        return _json_number(value)
    return value


def plot_roc(patients: pd.DataFrame, task: str, path: Path, title: str) -> dict[str, float]:
    """One ROC curve per target with its AUC in the legend (targets with a single class are left out).

    Returns:
        the AUC of each target drawn, in legend order.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    drawn = {}
    for name in report_targets(task):
        y, p = patients[label_column(name)].to_numpy(), patients[prob_column(name)].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        drawn[name] = float(roc_auc_score(y, p))
        ax.plot(fpr, tpr, lw=1.6, ls="--" if name == ANY else "-", label=f"{name} (AUC {drawn[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no target has both classes", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def plot_precision_recall(patients: pd.DataFrame, task: str, path: Path, title: str) -> dict[str, float]:
    """One precision-recall curve per target with its average precision (PR AUC) in the legend, and the target's
    prevalence (a model without skill) as a dotted line of the same colour; single-class targets are left out.

    Returns:
        the average precision of each target drawn, in legend order.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    drawn = {}
    for name in report_targets(task):
        y, p = patients[label_column(name)].to_numpy(), patients[prob_column(name)].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        drawn[name] = float(average_precision_score(y, p))
        (line,) = ax.plot(recall, precision, lw=1.6, ls="--" if name == ANY else "-",
                          label=f"{name} (AP {drawn[name]:.3f})", drawstyle="steps-post")
        ax.axhline(y.mean(), color=line.get_color(), lw=0.7, ls=":")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if drawn:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no target has both classes", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return drawn


def table5_markdown(table: pd.DataFrame) -> str:
    """The test metrics per target in the paper's Table 5 layout, the paper's values beside ours."""
    lines = [
        "| Level | Precision | Recall | F1-score | ROC AUC (95% CI) | Accuracy | PR AUC | Threshold | Patients (HNP) "
        "| Paper precision | Paper recall | Paper F1 | Paper ROC AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.iterrows():
        paper = PAPER_TABLE5.get(str(name))
        paper_cells = " | ".join(f"{v:.2f}" for v in paper) if paper else "– | – | – | –"
        lines.append(
            f"| {name} | {row.precision:.2f} | {row.recall:.2f} | {row.f1:.2f} | {_auc_cell(row)} "
            f"| {row.accuracy:.1%} | {_num(row.pr_auc)} | {row.threshold:.3f} | {int(row.n)} ({int(row.n_pos)}) "
            f"| {paper_cells} |"
        )
    return "\n".join(lines)


def _auc_cell(row: pd.Series) -> str:
    if math.isnan(row.roc_auc):
        return "– (one class)"
    if math.isnan(row.roc_auc_ci_low):
        return f"{row.roc_auc:.3f}"
    return f"{row.roc_auc:.3f} ({row.roc_auc_ci_low:.3f}–{row.roc_auc_ci_high:.3f})"


def _num(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def cv_table_markdown(folds: Mapping[int, pd.DataFrame], fold_thresholds: Mapping[int, Mapping[str, float]],
                      task: str) -> str:
    """Cross-validation results in the layout of the paper's Table 2 (`any`) or Tables 3-4 (level tasks).

    Each fold's out-of-fold image predictions are scored at that fold's own thresholds. For the level tasks the
    "Accuracy" row is the mean of the five levels' accuracies (the paper gives one figure per fold without
    defining it).

    Args:
        folds: fold number -> its validation predictions (`label_<c>`, `prob_<c>`).
        fold_thresholds: fold number -> {target display name: threshold}.
        task: the model task.
    """
    order = sorted(folds)
    header = "| | | " + " | ".join(f"Fold {k}" for k in order) + " |"
    rule = "|---|---|" + "---|" * len(order)
    rows = _cv_rows_any(folds, fold_thresholds, order) if task == "any" else _cv_rows_levels(
        folds, fold_thresholds, order)
    body = [f"| {group} | {metric} | " + " | ".join(cells) + " |" for group, metric, cells in rows]
    return "\n".join([header, rule, *body])


def _cv_rows_levels(folds: Mapping[int, pd.DataFrame], thresholds: Mapping[int, Mapping[str, float]],
                    order: list[int]) -> list[tuple[str, str, list[str]]]:
    scored = {
        k: {name: binary_metrics(folds[k][label_column(name)], folds[k][prob_column(name)], thresholds[k][name],
                                 n_boot=0)
            for name in LEVELS}
        for k in order
    }
    rows = []
    for name in LEVELS:
        for metric, key in (("Precision", "precision"), ("Recall", "recall"), ("F1-score", "f1"), ("AUC", "roc_auc")):
            rows.append((name, metric, [_num(scored[k][name][key]) for k in order]))
    accuracy = [f"{np.mean([scored[k][name]['accuracy'] for name in LEVELS]):.1%}" for k in order]
    rows.append(("Accuracy", "(mean of levels)", accuracy))
    return rows


def _cv_rows_any(folds: Mapping[int, pd.DataFrame], thresholds: Mapping[int, Mapping[str, float]],
                 order: list[int]) -> list[tuple[str, str, list[str]]]:
    y = {k: folds[k][label_column(ANY)] for k in order}
    p = {k: folds[k][prob_column(ANY)] for k in order}
    per_class = {k: class_metrics(y[k], p[k], thresholds[k][ANY]) for k in order}
    overall = {k: binary_metrics(y[k], p[k], thresholds[k][ANY], n_boot=0) for k in order}
    rows = [
        (cls, metric, [_num(per_class[k].loc[cls, key]) for k in order])
        for cls in ("No-HNP", "HNP")
        for metric, key in (("Precision", "precision"), ("Recall", "recall"), ("F1-score", "f1"))
    ]
    rows.append(("Accuracy", "", [f"{overall[k]['accuracy']:.1%}" for k in order]))
    rows.append(("AUC", "", [_num(overall[k]["roc_auc"]) for k in order]))
    return rows


def write_report(out_dir: Path, sections: Mapping[str, str], title: str) -> Path:
    """report.md: a title, then each section as `## heading` + body, in order."""
    parts = [f"# {title}", ""]
    for heading, body in sections.items():
        parts += [f"## {heading}", "", body.strip(), ""]
    return atomic_write_text(out_dir / "report.md", "\n".join(parts))


def cv_heading(task: str, fusion: str = "none") -> str:
    """The section heading naming the paper table whose layout the cross-validation view follows; a fusion run's
    out-of-fold predictions are per study."""
    unit = "image" if fusion == "none" else "study"
    return f"Cross-validation (out-of-fold, {unit} level; paper {_CV_TABLE[task]} layout)"
