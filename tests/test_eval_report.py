from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval.bagging import add_any, targets
from eval.metrics import metrics_table
from eval.report import cv_table_markdown, plot_roc, table5_markdown, write_metrics, write_report
from hnp.levels import LEVEL_COLUMNS, LEVELS


def _patients(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = {"patient": [f"p{i:03d}" for i in range(n)]}
    for c in LEVEL_COLUMNS:
        y = rng.integers(0, 2, n)
        frame[f"label_{c}"] = y
        frame[f"prob_{c}"] = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    frame["label_L1_2"] = 0  # a level with no positive patient
    return add_any(pd.DataFrame(frame), "levels")


def test_metrics_files_round_trip(tmp_path: Path) -> None:
    patients = _patients()
    table = metrics_table(patients, targets("levels"), dict.fromkeys([*LEVELS, "any"], 0.5), n_boot=20)
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
    table = metrics_table(patients, targets("levels"), dict.fromkeys([*LEVELS, "any"], 0.5), n_boot=20)
    text = table5_markdown(table)
    l45 = next(line for line in text.splitlines() if line.startswith("| L4-5 "))
    row = table.loc["L4-5"]
    assert f"{row.roc_auc:.3f} ({row.roc_auc_ci_low:.3f}–{row.roc_auc_ci_high:.3f})" in l45
    assert l45.endswith("| 0.41 | 0.47 | 0.43 | 0.67 |")
    assert "– (one class)" in next(line for line in text.splitlines() if line.startswith("| L1-2 "))


def test_roc_plot_is_written(tmp_path: Path) -> None:
    plot_roc(_patients(), "levels", tmp_path / "roc.png", "test")
    assert (tmp_path / "roc.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("task", ["levels", "any"])
def test_cv_table_has_one_column_per_fold(task: str) -> None:
    folds = {k: _patients(seed=k) for k in range(4)}
    thresholds = {k: dict.fromkeys([*LEVELS, "any"], 0.5) for k in range(4)}
    lines = cv_table_markdown(folds, thresholds, task).splitlines()
    assert lines[0] == "| | | Fold 0 | Fold 1 | Fold 2 | Fold 3 |"
    assert len(lines) == 2 + (5 * 4 + 1 if task == "levels" else 8)
    assert all(line.count("|") == 7 for line in lines)


def test_report_sections_in_order(tmp_path: Path) -> None:
    path = write_report(tmp_path, {"A": "first", "B": "second\n"}, "Title")
    assert path.read_text() == "# Title\n\n## A\n\nfirst\n\n## B\n\nsecond\n"
