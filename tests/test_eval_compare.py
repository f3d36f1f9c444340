"""`hnp compare`: DeLong's test (against the paper's formulas written out pair by pair, a paired bootstrap on the
same data, and a worked example from the literature), and the comparison of report folders with its refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from support.runs import TRAINED_TEST_AUC_FLOOR

from eval.compare import (
    compare_reports,
    comparison_markdown,
    delong_covariance,
    delong_test,
    paired_bootstrap_test,
)
from hnp.cli import main
from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.predictions import add_any, label_column, pred_column, prob_column
from hnp.scoring import auc_by_ranks, roc_auc


def _delong_by_definition(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. 1988 as printed: psi(X, Y) = 1, 1/2, 0 for X >, =, < Y over every (positive, negative) pair;
    V10 and V01 its row and column means; S = S10 / m + S01 / n with S10, S01 their covariances over cases."""
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    psi = (positives[:, :, None] > negatives[:, None, :]) + 0.5 * (positives[:, :, None] == negatives[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)  # (k, m), (k, n)
    aucs = v10.mean(axis=1)
    m, n = positives.shape[1], negatives.shape[1]
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


def _correlated_scores(n: int, seed: int, gain: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated scores; model a gets `gain` more signal than model b."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(0, 1, n)
    a = (0.8 + gain) * y + shared + rng.normal(0, 0.7, n)
    b = 0.8 * y + shared + rng.normal(0, 0.7, n)
    return y, a, b


@pytest.mark.parametrize("seed", range(4))
def test_fast_delong_equals_the_definition(seed: int) -> None:
    y, a, b = _correlated_scores(90, seed)
    a, b = np.round(a, 1), np.round(b, 1)  # ties within and across classes
    aucs, covariance = delong_covariance(y, np.stack([a, b]))
    expected_aucs, expected_covariance = _delong_by_definition(y, np.stack([a, b]))
    assert np.allclose(aucs, expected_aucs) and np.allclose(covariance, expected_covariance)
    assert aucs == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)])
    result = delong_test(y, a, b)
    var = expected_covariance[0, 0] + expected_covariance[1, 1] - 2 * expected_covariance[0, 1]
    assert result.se == pytest.approx(math.sqrt(var))
    assert result.ci_low == pytest.approx(result.difference - 1.959964 * result.se, abs=1e-6)
    assert result.p_value == pytest.approx(math.erfc(abs(result.difference) / result.se / math.sqrt(2)))


@pytest.mark.parametrize(("gain", "seed"), [(0.0, 11), (0.5, 12)])
def test_delong_agrees_with_a_paired_bootstrap_on_the_same_data(gain: float, seed: int) -> None:
    """Both estimate the same standard error: within 12% of each other at 300 patients and 2000 resamples (the
    bootstrap's own Monte Carlo error is ~2%), with p-values within 0.05 and interval ends within 0.015."""
    y, a, b = _correlated_scores(300, seed, gain)
    delong = delong_test(y, a, b)
    boot = paired_bootstrap_test(y, a, b, n_boot=2000, seed=0)
    assert boot.difference == pytest.approx(delong.difference)
    assert boot.se == pytest.approx(delong.se, rel=0.12)
    assert boot.p_value == pytest.approx(delong.p_value, abs=0.05)
    assert boot.ci_low == pytest.approx(delong.ci_low, abs=0.015)
    assert boot.ci_high == pytest.approx(delong.ci_high, abs=0.015)
    if gain:
        assert delong.p_value < 0.01 and delong.ci_low > 0


def test_hanley_mcneil_worked_example() -> None:
    """Hanley & McNeil (Radiology 143:29-36, 1982), Table 1: 109 CT images rated 1-5 by a radiologist, 58 normal
    (33, 6, 6, 11, 2) and 51 abnormal (3, 2, 2, 11, 33). The paper's area: 0.893, its standard error 0.032 (from
    its own approximation, which DeLong's nonparametric one is expected to be close to, not equal)."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    ratings = np.r_[np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)]
    aucs, covariance = delong_covariance(y, ratings[None])
    assert round(float(aucs[0]), 3) == 0.893
    assert math.sqrt(covariance[0, 0]) == pytest.approx(0.032, abs=0.002)


def test_a_model_against_itself_or_a_monotone_copy_differs_by_nothing() -> None:
    y, a, _ = _correlated_scores(50, 3)
    for other in (a, np.exp(a)):
        result = delong_test(y, a, other)
        assert result.difference == 0 and result.se == 0 and result.p_value == 1.0


def test_delong_needs_both_classes_and_two_of_each_for_a_variance() -> None:
    with pytest.raises(HnpError, match="both classes"):
        delong_test(np.ones(5), np.arange(5.0), np.arange(5.0))
    single = delong_test(np.array([0, 1, 1, 1]), np.array([0.1, 0.5, 0.6, 0.7]), np.array([0.2, 0.3, 0.9, 0.1]))
    assert single.difference == pytest.approx(1 / 3) and math.isnan(single.se) and math.isnan(single.p_value)


def _report(folder: Path, task: str, seed: int, patients: int = 80, signal: float = 0.3) -> Path:
    """A report folder holding only predictions_patients.parquet, with planted signal."""
    rng = np.random.default_rng(0)  # the same patients and labels in every report
    frame = {"patient": [f"pseudo{i:03d}" for i in range(patients)]}
    labels = {level: rng.integers(0, 2, patients) for level in LEVELS}
    noise = np.random.default_rng(seed)
    for level in LEVELS:
        frame[label_column(level)] = labels[level]
        frame[prob_column(level)] = np.clip(signal * labels[level] + noise.uniform(0, 0.7, patients), 0, 1)
    table = add_any(pd.DataFrame(frame), "levels")
    if task == "any":
        table = table[["patient", label_column("any"), prob_column("any")]].assign(
            **{prob_column("any"): np.clip(0.4 * table[label_column("any")] + noise.uniform(0, 0.6, patients), 0, 1)})
    table = table.assign(**{pred_column(t): 0 for t in ("any",)})
    folder.mkdir(parents=True)
    table.to_parquet(folder / "predictions_patients.parquet", index=False)
    return folder


def test_compare_reports_tests_every_pair_on_common_targets(tmp_path: Path) -> None:
    dirs = [_report(tmp_path / "levels", "levels", 1), _report(tmp_path / "levels_age", "levels", 2, signal=0.1),
            _report(tmp_path / "any", "any", 3)]
    table = compare_reports(dirs, n_boot=200, seed=0)
    pairs = table.groupby(["a", "b"], sort=False)["target"].apply(list).to_dict()
    assert pairs == {("levels", "levels_age"): [*LEVELS, "any"], ("levels", "any"): ["any"],
                     ("levels_age", "any"): ["any"]}
    row = table[(table.a == "levels") & (table.target == "L4-5")].iloc[0]
    a, b = (pd.read_parquet(d / "predictions_patients.parquet") for d in dirs[:2])
    expected = delong_test(a[label_column("L4-5")], a[prob_column("L4-5")], b[prob_column("L4-5")])
    assert (row.auc_a, row.auc_b, row.delong_p_value) == pytest.approx(
        (expected.auc_a, expected.auc_b, expected.p_value))
    assert row.n == 80 and row.n_pos == a[label_column("L4-5")].sum()
    assert (table["bootstrap_ci_low"] <= table["difference"]).all()
    text = comparison_markdown(table)
    assert len(text.splitlines()) == 2 + len(table) and "| levels | levels_age | L4-5 | 80 (" in text


def test_compare_pairs_patients_by_pseudonym_not_by_row_order(tmp_path: Path) -> None:
    first = _report(tmp_path / "a", "levels", 1)
    second = _report(tmp_path / "b", "levels", 2)
    shuffled = pd.read_parquet(second / "predictions_patients.parquet").sample(frac=1.0, random_state=0)
    shuffled.to_parquet(second / "predictions_patients.parquet", index=False)
    in_order = compare_reports([first, _report(tmp_path / "c", "levels", 2)], n_boot=0)
    assert np.allclose(compare_reports([first, second], n_boot=0)["delong_p_value"], in_order["delong_p_value"],
                       equal_nan=True)  # "any": one negative patient, no DeLong variance


def test_compare_refuses_other_patients_or_other_labels(tmp_path: Path) -> None:
    base = _report(tmp_path / "a", "levels", 1)
    fewer = _report(tmp_path / "fewer", "levels", 2, patients=78)
    with pytest.raises(HnpError, match="not evaluations of the same test patients: 0 of fewer's 78 patients are not "
                                       "in a, 2 of a's 80 are not in fewer"):
        compare_reports([base, fewer])
    relabelled = _report(tmp_path / "relabelled", "levels", 2)
    table = pd.read_parquet(relabelled / "predictions_patients.parquet")
    table.loc[:2, label_column("L5-S1")] = 1 - table.loc[:2, label_column("L5-S1")]
    table.to_parquet(relabelled / "predictions_patients.parquet", index=False)
    with pytest.raises(HnpError, match="other labels for the same patients: label_L5-S1 differs for 3 of 80"):
        compare_reports([base, relabelled])
    with pytest.raises(HnpError, match="predictions_patients.parquet: not found"):
        compare_reports([base, tmp_path])


def test_hnp_compare_writes_table_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = [str(_report(tmp_path / name, "levels", seed)) for name, seed in (("one", 1), ("two", 2))]
    out = tmp_path / "cmp"
    assert main(["compare", *dirs, "--out", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    csv = pd.read_csv(out / "compare.csv")
    assert len(csv) == 6 and list(csv["target"]) == [*LEVELS, "any"]
    assert "| one | two | L1-2 |" in printed and "| one | two | L1-2 |" in (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert main(["compare", dirs[0], "--out", str(out)]) == 2
    assert "needs at least two report folders" in capsys.readouterr().err


@pytest.mark.slow
def test_hnp_compare_of_the_any_and_levels_evaluations(clinical_reports: dict[str, Path], tmp_path: Path) -> None:
    """The paper's `any` task against the level model's derived "any": the one target they share."""
    reports = [clinical_reports["levels"], clinical_reports["any"]]
    assert main(["compare", *map(str, reports), "--out", str(tmp_path), "--bootstrap", "50"]) == 0
    table = pd.read_csv(tmp_path / "compare.csv")
    patients = [pd.read_parquet(r / "predictions_patients.parquet").set_index("patient").sort_index() for r in reports]
    assert table["target"].tolist() == ["any"] and table["n"].iloc[0] == len(patients[0])
    for column, frame in (("auc_a", patients[0]), ("auc_b", patients[1])):
        assert table[column].iloc[0] == pytest.approx(roc_auc(frame["label_any"], frame["prob_any"]))
    # the trained level model's "any" (the shared trained world) against untrained fold models of the any task
    assert table["auc_a"].iloc[0] >= TRAINED_TEST_AUC_FLOOR


def test_auc_by_ranks_equals_scikit_learn_row_by_row() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (40, 30))
    y[0] = 1  # a row with one class: no AUC
    scores = np.round(rng.uniform(0, 1, (40, 30)) + 0.3 * y, 1)  # with ties
    aucs = auc_by_ranks(y, scores)
    assert math.isnan(aucs[0])
    assert aucs[1:] == pytest.approx([roc_auc_score(y[i], scores[i]) for i in range(1, 40)])
