from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from eval.metrics import binary_metrics, metrics_table
from eval.report import cv_table_markdown, plot_roc, table5_markdown, write_metrics, write_report
from hnp.levels import LEVELS
from hnp.predictions import add_any, label_column, prob_column, report_targets


def _patients(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = {"patient": [f"p{i:03d}" for i in range(n)]}
    for level in LEVELS:
        y = rng.integers(0, 2, n)
        frame[label_column(level)] = y
        frame[prob_column(level)] = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    frame[label_column("L1-2")] = 0  # a level with no positive patient
    return add_any(pd.DataFrame(frame), "levels")


def test_metrics_files_round_trip(tmp_path: Path) -> None:
    patients = _patients()
    table = metrics_table(patients, report_targets("levels"), dict.fromkeys([*LEVELS, "any"], 0.5), n_boot=20)
    write_metrics(table, tmp_path, {"task": "levels", "threshold_rule": "fixed:0.5",
                                    "thresholds_per_fold": {0: {"L1-2": float("nan"), "L2-3": 0.25}}})
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["task"] == "levels"
    assert stored["thresholds_per_fold"] == {"0": {"L1-2": None, "L2-3": 0.25}}
    assert list(stored["metrics"]) == [*LEVELS, "any"]
    assert stored["metrics"]["L1-2"]["roc_auc"] is None  # one class: NaN is written as null
    assert stored["metrics"]["L4-5"]["roc_auc"] == pytest.approx(table.loc["L4-5", "roc_auc"])
    assert stored["metrics"]["L4-5"]["n"] == 60
    csv = pd.read_csv(tmp_path / "metrics.csv", index_col="target")
    assert csv.loc["L5-S1", "f1"] == pytest.approx(table.loc["L5-S1", "f1"], rel=1e-5)


def test_table5_layout_holds_ours_and_the_papers() -> None:
    patients = _patients()
    table = metrics_table(patients, report_targets("levels"), dict.fromkeys([*LEVELS, "any"], 0.5), n_boot=20)
    text = table5_markdown(table)
    l45 = next(line for line in text.splitlines() if line.startswith("| L4-5 "))
    row = table.loc["L4-5"]
    assert f"{row.roc_auc:.3f} ({row.roc_auc_ci_low:.3f}–{row.roc_auc_ci_high:.3f})" in l45
    assert l45.endswith("| 0.41 | 0.47 | 0.43 | 0.67 |")
    assert "– (one class)" in next(line for line in text.splitlines() if line.startswith("| L1-2 "))


def test_roc_plot_draws_a_curve_per_target_with_both_classes(tmp_path: Path) -> None:
    patients = _patients()
    drawn = plot_roc(patients, "levels", tmp_path / "roc.png", "test")
    # L1-2 has no positive patient: no curve; the others carry their AUC in the legend
    assert list(drawn) == ["L2-3", "L3-4", "L4-5", "L5-S1", "any"]
    table = metrics_table(patients, report_targets("levels"), dict.fromkeys(report_targets("levels"), 0.5), n_boot=0)
    assert drawn == pytest.approx({target: table.loc[target, "roc_auc"] for target in drawn})
    picture = cv2.imread(str(tmp_path / "roc.png"))
    colourful = (picture.max(axis=2).astype(int) - picture.min(axis=2)) > 60  # curves, not the grey axes
    assert picture.shape[:2] == (660, 660) and colourful.mean() > 0.003


def _cells(text: str) -> dict[tuple[str, str], list[str]]:
    """(group, metric) -> the per-fold cells of a cross-validation table; a blank group repeats the last."""
    rows, group = {}, ""
    for line in text.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        group = cells[0] or group
        rows[(group, cells[1])] = cells[2:]
    return rows


@pytest.mark.parametrize("task", ["levels", "any"])
def test_cv_table_holds_each_folds_metrics_at_its_own_threshold(task: str) -> None:
    folds = {k: _patients(seed=k) for k in range(4)}
    thresholds = {k: dict.fromkeys(report_targets("levels"), 0.3 + 0.1 * k) for k in range(4)}
    text = cv_table_markdown(folds, thresholds, task)
    assert text.splitlines()[0] == "| | | Fold 0 | Fold 1 | Fold 2 | Fold 3 |"
    cells = _cells(text)
    for k in range(4):
        if task == "levels":
            m = binary_metrics(folds[k]["label_L4-5"], folds[k]["prob_L4-5"], 0.3 + 0.1 * k, n_boot=0)
            assert cells[("L4-5", "Recall")][k] == f"{m['recall']:.3f}"
            assert cells[("L4-5", "AUC")][k] == f"{m['roc_auc']:.3f}"
            assert cells[("L1-2", "AUC")][k] == "–"  # one class in every fold
        else:
            m = binary_metrics(folds[k]["label_any"], folds[k]["prob_any"], 0.3 + 0.1 * k, n_boot=0)
            assert cells[("HNP", "Precision")][k] == f"{m['precision']:.3f}"
            assert cells[("Accuracy", "")][k] == f"{m['accuracy']:.1%}"
    assert len(cells) == (5 * 4 + 1 if task == "levels" else 8)


def test_report_sections_in_order(tmp_path: Path) -> None:
    path = write_report(tmp_path, {"A": "first", "B": "second\n"}, "Title")
    assert path.read_text() == "# Title\n\n## A\n\nfirst\n\n## B\n\nsecond\n"
