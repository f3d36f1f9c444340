from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from eval.bagging import (
    add_any,
    add_decisions,
    bag_folds,
    fold_thresholds,
    parse_threshold_rule,
    patient_means,
    resolve_thresholds,
)
from eval.metrics import binary_metrics, bootstrap_auc_ci, class_metrics, metrics_table, youden_threshold
from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS, LEVELS


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    return y, p


def test_binary_metrics_equal_scikit_learn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    m = binary_metrics(y, p, threshold=0.5, n_boot=50, seed=0)
    pred = (p >= 0.5).astype(int)
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert (m["n"], m["n_pos"], m["threshold"]) == (300, int(y.sum()), 0.5)


def test_bootstrap_ci_is_seeded_and_contains_the_estimate(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    first = bootstrap_auc_ci(y, p, n_boot=300, seed=7)
    assert first == bootstrap_auc_ci(y, p, n_boot=300, seed=7)
    assert first != bootstrap_auc_ci(y, p, n_boot=300, seed=8)
    low, high = first
    assert low < roc_auc_score(y, p) < high
    assert 0.02 < high - low < 0.3


def test_bootstrap_resamples_patients_not_rows(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    # Each patient's 10 identical images carry no more information than one image: grouped resampling keeps
    # the interval as wide as for the 300 distinct rows, row resampling would narrow it about sqrt(10)-fold.
    y10, p10, groups = np.repeat(y, 10), np.repeat(p, 10), np.repeat(np.arange(300), 10)
    low, high = bootstrap_auc_ci(y, p, n_boot=300, seed=1)
    glow, ghigh = bootstrap_auc_ci(y10, p10, n_boot=300, seed=1, groups=groups)
    rlow, rhigh = bootstrap_auc_ci(y10, p10, n_boot=300, seed=1)
    assert ghigh - glow == pytest.approx(high - low, rel=0.25)
    assert rhigh - rlow < 0.6 * (high - low)


def test_one_class_gives_nan_auc_not_an_exception() -> None:
    m = binary_metrics(np.zeros(5), np.linspace(0, 1, 5), threshold=0.5, n_boot=20)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["roc_auc_ci_low"]) and math.isnan(m["pr_auc"])
    assert m["accuracy"] == pytest.approx(0.4)
    assert math.isnan(youden_threshold(np.zeros(5), np.linspace(0, 1, 5)))


def test_youden_threshold_maximises_j(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    fpr, tpr, thresholds = roc_curve(y, p)
    t = youden_threshold(y, p)
    pred = p >= t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(np.max(tpr - fpr))
    assert youden_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.3, 0.2, 0.4])) == pytest.approx(0.3)


def test_class_metrics_give_both_classes() -> None:
    table = class_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.2]), 0.5)
    assert table.loc["HNP"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert table.loc["No-HNP"].tolist() == pytest.approx([0.5, 0.5, 0.5])


def _hand_built_images() -> pd.DataFrame:
    """Two patients, three images, two folds; only L4-5 and L5-S1 vary, the other levels are 0."""
    rows = []
    for key, patient, f0, f1, labels in [
        ("r0000000", "pA", (0.2, 0.6), (0.4, 0.8), (1, 0)),
        ("r0000001", "pA", (0.6, 0.2), (0.8, 0.0), (1, 0)),
        ("r0000002", "pB", (0.1, 0.9), (0.1, 0.7), (0, 1)),
    ]:
        row = {"key": key, "patient": patient}
        for c in LEVEL_COLUMNS:
            row.update({f"prob_fold0_{c}": 0.0, f"prob_fold1_{c}": 0.0, f"label_{c}": 0})
        row.update({"prob_fold0_L4_5": f0[0], "prob_fold0_L5_S1": f0[1], "prob_fold1_L4_5": f1[0]})
        row.update({"prob_fold1_L5_S1": f1[1], "label_L4_5": labels[0], "label_L5_S1": labels[1]})
        rows.append(row)
    return pd.DataFrame(rows)


def test_bagging_and_patient_means_on_a_hand_built_case() -> None:
    images = bag_folds(_hand_built_images(), [0, 1], LEVEL_COLUMNS)
    assert images["prob_L4_5"].tolist() == pytest.approx([0.3, 0.7, 0.1])
    assert images["prob_L5_S1"].tolist() == pytest.approx([0.7, 0.1, 0.8])
    patients = add_any(patient_means(images, LEVEL_COLUMNS), "levels").set_index("patient")
    assert patients.loc["pA", "prob_L4_5"] == pytest.approx(0.5)
    assert patients.loc["pA", "prob_L5_S1"] == pytest.approx(0.4)
    assert patients.loc["pB", "prob_L5_S1"] == pytest.approx(0.8)
    assert patients["n_images"].tolist() == [2, 1]
    assert patients["prob_any"].tolist() == pytest.approx([0.5, 0.8])
    assert patients["label_any"].tolist() == [1, 1]
    decided = add_decisions(patients, {**dict.fromkeys(LEVELS, 0.45), "any": 0.6}, "levels")
    assert decided["pred_L4_5"].tolist() == [1, 0]
    assert decided["pred_any"].tolist() == [0, 1]


def test_threshold_rules() -> None:
    per_fold = [{**dict.fromkeys(LEVELS, 0.2), "any": 0.4}, {**dict.fromkeys(LEVELS, 0.4), "any": math.nan}]
    assert resolve_thresholds(parse_threshold_rule("fold-mean"), per_fold, None, "levels") == pytest.approx(
        {**dict.fromkeys(LEVELS, 0.3), "any": 0.4}
    )
    assert set(resolve_thresholds(parse_threshold_rule("fixed:0.5"), per_fold, None, "levels").values()) == {0.5}
    oof = pd.DataFrame({"label_any": [0, 0, 1, 1], "prob_any": [0.1, 0.3, 0.35, 0.9]})
    assert resolve_thresholds(parse_threshold_rule("youden-oof"), [], oof, "any") == {"any": pytest.approx(0.35)}
    for bad in ("fixed:1.5", "fixed:x", "median", "fixed"):
        with pytest.raises(HnpError, match="--threshold"):
            parse_threshold_rule(bad)
    with pytest.raises(HnpError, match="val_predictions"):
        resolve_thresholds(parse_threshold_rule("youden-oof"), per_fold, None, "levels")


def test_a_target_without_threshold_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    per_fold = [{**dict.fromkeys(LEVELS, 0.3), "L1-2": math.nan, "any": 0.4}] * 2
    got = resolve_thresholds(parse_threshold_rule("fold-mean"), per_fold, None, "levels")
    assert got["L1-2"] == 0.5 and got["L2-3"] == pytest.approx(0.3)
    assert "no fold-mean threshold for L1-2" in caplog.text


def test_fold_thresholds_derive_any_from_validation() -> None:
    val = bag_folds(_hand_built_images(), [0], LEVEL_COLUMNS).assign(label_L1_2=0)
    got = fold_thresholds({c: 0.5 for c in LEVEL_COLUMNS}, val, "levels", fold=0)
    assert got["L4-5"] == 0.5 and set(got) == {*LEVELS, "any"}
    assert got["any"] == pytest.approx(youden_threshold(np.array([1, 1, 1]), np.array([0.6, 0.6, 0.9])), nan_ok=True)
    assert math.isnan(fold_thresholds({c: 0.5 for c in LEVEL_COLUMNS}, None, "levels", fold=2)["any"])
    with pytest.raises(HnpError, match="fold 2: best.pt holds no threshold for L5-S1"):
        fold_thresholds({c: 0.5 for c in LEVEL_COLUMNS[:4]}, val, "levels", fold=2)


def test_metrics_table_rows_per_target() -> None:
    images = add_any(bag_folds(_hand_built_images(), [0, 1], LEVEL_COLUMNS), "levels")
    targets = {"L4-5": "L4_5", "any": "any"}
    table = metrics_table(images, targets, {"L4-5": 0.5, "any": 0.5}, n_boot=10, group_column="patient")
    assert list(table.index) == ["L4-5", "any"]
    assert table.loc["L4-5", "roc_auc"] == pytest.approx(1.0)
    assert table.loc["L4-5", "n_pos"] == 2
