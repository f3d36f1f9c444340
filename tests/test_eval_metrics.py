from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from eval.bagging import (
    add_decisions,
    bag_folds,
    fold_thresholds,
    parse_threshold_rule,
    patient_means,
    resolve_thresholds,
)
from eval.metrics import METRIC_NAMES, binary_metrics, bootstrap_auc_ci, class_metrics, metrics_table
from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.predictions import add_any, label_column, model_targets, prob_column
from hnp.scoring import youden_threshold


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    return y, p


def test_binary_metrics_on_a_case_worked_by_hand() -> None:
    # 8 patients, threshold 0.5: TP = 0.9, 0.6 (2); FN = 0.4 (1); FP = 0.7 (1); TN = 0.1, 0.2, 0.3, 0.45 (4).
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.4, 0.7, 0.1, 0.2, 0.3, 0.45])
    m = binary_metrics(y, p, threshold=0.5, n_boot=0)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(6 / 8)
    # AUC = share of the 15 (positive, negative) pairs ranked right: 0.9 beats all 5 negatives, 0.6 beats 4
    # (not 0.7), 0.4 beats 3 (not 0.7, 0.45): 12 of 15
    assert m["roc_auc"] == pytest.approx(12 / 15)
    # average precision: precision at each positive's rank (1/1, 2/3, 3/5) averaged over the 3 positives
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert (m["n"], m["n_pos"], m["threshold"]) == (8, 3, 0.5)
    assert math.isnan(m["roc_auc_ci_low"])  # n_boot=0: no interval
    # nothing predicted positive: precision, recall and F1 of HNP are 0, not undefined or 1
    none = binary_metrics(y, p, threshold=0.95, n_boot=0)
    assert (none["precision"], none["recall"], none["f1"], none["accuracy"]) == (0.0, 0.0, 0.0, 5 / 8)


def test_binary_metrics_pass_their_seed_and_patients_to_the_interval(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    y2, p2, groups = np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(300), 2)
    m = binary_metrics(y2, p2, 0.5, n_boot=100, seed=5, groups=groups)
    interval = (m["roc_auc_ci_low"], m["roc_auc_ci_high"])
    assert interval == bootstrap_auc_ci(y2, p2, n_boot=100, seed=5, groups=groups)
    assert interval != bootstrap_auc_ci(y2, p2, n_boot=100, seed=0, groups=groups)
    assert interval != bootstrap_auc_ci(y2, p2, n_boot=100, seed=5)
    assert list(m) == list(METRIC_NAMES)


def _percentile_interval(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap by its definition: n rows drawn with replacement from a generator of `seed`,
    resamples of one class skipped, the 2.5th and 97.5th percentiles of the resampled AUCs."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(y), len(y))
        if y[rows].min() != y[rows].max():
            aucs.append(roc_auc_score(y[rows], p[rows]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def test_bootstrap_ci_is_seeded_and_contains_the_estimate(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    first = bootstrap_auc_ci(y, p, n_boot=300, seed=7)
    assert first == bootstrap_auc_ci(y, p, n_boot=300, seed=7)
    assert first != bootstrap_auc_ci(y, p, n_boot=300, seed=8)
    low, high = first
    assert low < roc_auc_score(y, p) < high
    assert first == pytest.approx(_percentile_interval(y, p, 300, 7))  # the 95% percentile interval


def test_bootstrap_resamples_patients_not_rows(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    # Each patient's 10 identical images carry no more information than one image: grouped resampling keeps
    # the interval as wide as for the 300 distinct rows, row resampling would narrow it about sqrt(10)-fold.
    # Drawing patient g takes their 10 copies, which score as one row would: the same draws as the 300 rows alone.
    y10, p10, groups = np.repeat(y, 10), np.repeat(p, 10), np.repeat(np.arange(300), 10)
    low, high = bootstrap_auc_ci(y, p, n_boot=300, seed=1)
    assert bootstrap_auc_ci(y10, p10, n_boot=300, seed=1, groups=groups) == pytest.approx((low, high))
    shuffled = np.random.default_rng(0).permutation(len(y10))  # a patient's rows need not be next to each other
    glow, ghigh = bootstrap_auc_ci(y10[shuffled], p10[shuffled], n_boot=300, seed=1, groups=groups[shuffled])
    assert ghigh - glow == pytest.approx(high - low, rel=0.25)
    rlow, rhigh = bootstrap_auc_ci(y10, p10, n_boot=300, seed=1)
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
    # threshold 0.5, a score at it is positive: predicted 0, 0, 1, 1, 0. HNP: TP 1, FP 1, FN 1 (1/2 each);
    # No-HNP: 2 of the 3 predicted negatives are negative, 2 of the 3 negatives predicted so (2/3 each)
    table = class_metrics(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.5, 0.5, 0.3]), 0.5)
    assert table.loc["HNP"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert table.loc["No-HNP"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    # one class only, nothing predicted positive: both rows still there, HNP's undefined values 0
    alone = class_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.5)
    assert alone.loc["HNP"].tolist() == [0.0, 0.0, 0.0] and alone.loc["No-HNP"].tolist() == [1.0, 1.0, 1.0]


def _hand_built_images() -> pd.DataFrame:
    """Three patients, four images, two folds; only L4-5 and L5-S1 vary, the other levels are 0. Patient pC has
    no HNP at all, so "any" has both classes."""
    rows = []
    for key, patient, f0, f1, labels in [
        ("r0000000", "pA", (0.2, 0.6), (0.4, 0.8), (1, 0)),
        ("r0000001", "pA", (0.6, 0.2), (0.8, 0.0), (1, 0)),
        ("r0000002", "pB", (0.1, 0.9), (0.1, 0.7), (0, 1)),
        ("r0000003", "pC", (0.3, 0.5), (0.1, 0.1), (0, 0)),
    ]:
        row = {"key": key, "patient": patient}
        for level in LEVELS:
            row.update({prob_column(level, 0): 0.0, prob_column(level, 1): 0.0, label_column(level): 0})
        row.update({prob_column("L4-5", 0): f0[0], prob_column("L5-S1", 0): f0[1], prob_column("L4-5", 1): f1[0]})
        row.update({prob_column("L5-S1", 1): f1[1], label_column("L4-5"): labels[0], label_column("L5-S1"): labels[1]})
        rows.append(row)
    return pd.DataFrame(rows)


def test_bagging_and_patient_means_on_a_hand_built_case() -> None:
    images = bag_folds(_hand_built_images(), [0, 1], LEVELS)
    assert images["prob_L4-5"].tolist() == pytest.approx([0.3, 0.7, 0.1, 0.2])
    assert images["prob_L5-S1"].tolist() == pytest.approx([0.7, 0.1, 0.8, 0.3])
    patients = add_any(patient_means(images, LEVELS), "levels").set_index("patient")
    assert patients.loc["pA", "prob_L4-5"] == pytest.approx(0.5)
    assert patients.loc["pA", "prob_L5-S1"] == pytest.approx(0.4)
    assert patients.loc["pB", "prob_L5-S1"] == pytest.approx(0.8)
    assert patients["n_images"].tolist() == [2, 1, 1]
    assert patients["prob_any"].tolist() == pytest.approx([0.5, 0.8, 0.3])
    assert patients["label_any"].tolist() == [1, 1, 0]
    decided = add_decisions(patients, {**dict.fromkeys(LEVELS, 0.45), "any": 0.6}, "levels")
    assert decided["pred_L4-5"].tolist() == [1, 0, 0]
    assert decided["pred_any"].tolist() == [0, 1, 0]
    # a score at the threshold is positive (the Youden threshold is a patient's own score); 0/1 integers
    at = add_decisions(patients, {**dict.fromkeys(LEVELS, 0.45), "any": patients.loc["pB", "prob_any"]}, "levels")
    assert at["pred_any"].tolist() == [0, 1, 0] and at["pred_any"].dtype.kind == "i"
    # patients come out sorted whatever the order of the images
    reordered = patient_means(images.iloc[::-1], LEVELS)
    assert reordered["patient"].tolist() == ["pA", "pB", "pC"]
    with pytest.raises(HnpError, match="^bagging needs at least one fold model$"):
        bag_folds(_hand_built_images(), [], LEVELS)


def test_threshold_rules() -> None:
    per_fold = [{**dict.fromkeys(LEVELS, 0.2), "any": 0.4}, {**dict.fromkeys(LEVELS, 0.4), "any": math.nan}]
    assert resolve_thresholds(parse_threshold_rule("fold-mean"), per_fold, None, "levels") == pytest.approx(
        {**dict.fromkeys(LEVELS, 0.3), "any": 0.4}
    )
    assert set(resolve_thresholds(parse_threshold_rule("fixed:0.5"), per_fold, None, "levels").values()) == {0.5}
    oof = pd.DataFrame({label_column("any"): [0, 0, 1, 1], prob_column("any"): [0.1, 0.3, 0.35, 0.9]})
    assert resolve_thresholds(parse_threshold_rule("youden-oof"), [], oof, "any") == {"any": pytest.approx(0.35)}
    for bad in ("fixed:1.5", "fixed:x", "median", "fixed", "fixed:0", "fixed:1"):  # a cut-off inside (0, 1)
        with pytest.raises(HnpError, match="--threshold"):
            parse_threshold_rule(bad)
    with pytest.raises(HnpError, match="^--threshold youden-oof needs every fold's val_predictions.parquet$"):
        resolve_thresholds(parse_threshold_rule("youden-oof"), per_fold, None, "levels")


def test_a_target_without_threshold_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    per_fold = [{**dict.fromkeys(LEVELS, 0.3), "L1-2": math.nan, "L5-S1": math.nan, "any": 0.4}] * 2
    got = resolve_thresholds(parse_threshold_rule("fold-mean"), per_fold, None, "levels")
    assert got["L1-2"] == got["L5-S1"] == 0.5 and got["L2-3"] == pytest.approx(0.3)
    assert caplog.messages == ["no fold-mean threshold for L1-2, L5-S1 (validation had one class only, or no "
                               "predictions): using 0.5 there"]


def test_fold_thresholds_derive_any_from_validation(caplog: pytest.LogCaptureFixture) -> None:
    # fold 0's derived "any" score per image: max over levels = 0.6, 0.6, 0.9, 0.5 with labels 1, 1, 1, 0: the
    # threshold that separates them is 0.6 (J = 1); a threshold taken from the checkpoint instead would be 0.5
    val = bag_folds(_hand_built_images(), [0], LEVELS)
    got = fold_thresholds(dict.fromkeys(LEVELS, 0.5), val, "levels", fold=0)
    assert got["L4-5"] == 0.5 and set(got) == {*LEVELS, "any"}
    assert got["any"] == pytest.approx(0.6)
    assert math.isnan(fold_thresholds(dict.fromkeys(LEVELS, 0.5), None, "levels", fold=2)["any"])
    assert caplog.messages == ["fold 2: no val_predictions.parquet, so no threshold for the derived 'any'"]
    with pytest.raises(HnpError, match="fold 2: best.pt holds no threshold for L5-S1"):
        fold_thresholds(dict.fromkeys(LEVELS[:4], 0.5), val, "levels", fold=2)
    # the `any` task's checkpoint holds its own "any" threshold, which wins over the validation predictions
    assert fold_thresholds({"any": 0.25}, val, "any", fold=0) == {"any": 0.25}


def test_metrics_table_rows_per_target() -> None:
    images = add_any(bag_folds(_hand_built_images(), [0, 1], model_targets("levels")), "levels")
    table = metrics_table(images, ["L4-5", "any"], {"L4-5": 0.5, "any": 0.5}, n_boot=10, group_column="patient")
    assert list(table.index) == ["L4-5", "any"]
    # L4-5: positives 0.3, 0.7 against negatives 0.1, 0.2: every pair ranked right; "any" (max of the levels):
    # positives 0.7, 0.7, 0.8 against 0.3
    assert table.loc["L4-5", "roc_auc"] == pytest.approx(1.0) and table.loc["any", "roc_auc"] == pytest.approx(1.0)
    assert table.loc["L4-5", "n_pos"] == 2 and table.loc["any", "n_pos"] == 3
    assert table.loc["L4-5", "recall"] == pytest.approx(0.5)  # 0.7 >= 0.5, 0.3 < 0.5
    assert list(table.columns) == list(METRIC_NAMES) and table.index.name == "target"  # metrics.csv's layout


def test_metrics_table_passes_its_seed_and_patients_to_each_target(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    frame = pd.DataFrame({label_column("L4-5"): np.repeat(y, 2), prob_column("L4-5"): np.repeat(p, 2),
                          "patient": np.repeat(np.arange(300), 2)})
    table = metrics_table(frame, ["L4-5"], {"L4-5": 0.5}, n_boot=100, seed=5, group_column="patient")
    expected = binary_metrics(frame[label_column("L4-5")].to_numpy(), frame[prob_column("L4-5")].to_numpy(), 0.5,
                              n_boot=100, seed=5, groups=frame["patient"].to_numpy())
    assert table.loc["L4-5"].to_dict() == pytest.approx(expected)
    rows = metrics_table(frame, ["L4-5"], {"L4-5": 0.5}, n_boot=100, seed=5)  # rows as patients: a narrower interval
    assert rows.loc["L4-5", "roc_auc_ci_low"] != table.loc["L4-5", "roc_auc_ci_low"]
