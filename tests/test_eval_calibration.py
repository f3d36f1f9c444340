"""Calibration (ECE, Brier, reliability bins, recalibration) and operating points (thresholds chosen out of fold,
rates with bootstrap intervals), each checked against an independent computation on data built here."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, confusion_matrix

from eval.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_recalibration,
    recalibrate,
    reliability_bins,
)
from eval.clinical import ClinicalOptions, clinical_evaluation
from eval.operating_points import (
    OPERATING_POINTS,
    operating_points_table,
    parse_prevalence,
    point_metrics,
    rates_at,
    threshold_at,
)
from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.predictions import add_any, calibrated_column, label_column, prob_column


def _sample(n: int, seed: int, sharpen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities, and those probabilities sharpened on the logit scale (1 = calibrated,
    > 1 = overconfident)."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(2, 3, n)
    return rng.binomial(1, truth), expit(sharpen * logit(truth))


@pytest.mark.parametrize("bins", [5, 10, 15])
def test_reliability_bins_and_ece_match_scikit_learn(bins: int) -> None:
    y, p = _sample(700, seed=bins, sharpen=1.8)
    ours = reliability_bins(y, p, bins)
    observed, mean_prob = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    assert np.allclose(ours["observed"], observed) and np.allclose(ours["mean_prob"], mean_prob)
    counts, _ = np.histogram(p, bins=np.linspace(0, 1, bins + 1))  # continuous scores: no value on an edge
    counts = counts[counts > 0]
    assert ours["n"].tolist() == counts.tolist()
    reference = float(np.sum(counts / len(y) * np.abs(observed - mean_prob)))
    assert expected_calibration_error(ours) == pytest.approx(reference, rel=1e-12)


def test_brier_matches_scikit_learn_and_its_reference_is_the_prevalence_forecast() -> None:
    y, p = _sample(500, seed=1)
    summary = calibration_summary(y, p)
    assert summary["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert brier_score(y, p) == summary["brier"]
    assert summary["brier_reference"] == pytest.approx(brier_score_loss(y, np.full(len(y), y.mean())), rel=1e-12)
    assert summary["n"] == 500 and sum(b["n"] for b in summary["bins"]) == 500


def test_ece_separates_calibrated_from_overconfident_scores() -> None:
    y, calibrated = _sample(20000, seed=2)
    _, overconfident = _sample(20000, seed=2, sharpen=3.0)
    assert calibration_summary(y, calibrated)["ece"] < 0.02
    assert calibration_summary(y, overconfident)["ece"] > 0.08


def test_a_tie_on_a_bin_edge_goes_to_the_lower_bin_as_in_scikit_learn() -> None:
    y, p = np.array([0, 1, 1, 0]), np.array([0.0, 0.5, 0.5000001, 1.0])
    bins = reliability_bins(y, p, 2)
    assert bins["n"].tolist() == [2, 2] and bins["observed"].tolist() == [0.5, 0.5]
    assert np.allclose(bins["observed"], calibration_curve(y, p, n_bins=2)[0])


def _frames(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({label_column("L4-5"): y, prob_column("L4-5"): p})


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_recalibration_fitted_out_of_fold_repairs_overconfident_test_scores(kind: str) -> None:
    oof = _frames(*_sample(4000, seed=3, sharpen=2.5))
    test = _frames(*_sample(4000, seed=4, sharpen=2.5))
    fixed = recalibrate(oof, test, ["L4-5"], kind)[prob_column("L4-5")]
    before = calibration_summary(test[label_column("L4-5")], test[prob_column("L4-5")])
    after = calibration_summary(test[label_column("L4-5")], fixed)
    assert before["ece"] > 0.08 and after["ece"] < 0.035 and after["brier"] < before["brier"]
    assert np.all(np.diff(fixed.to_numpy()[np.argsort(test[prob_column("L4-5")].to_numpy())]) >= -1e-12)


def test_platt_recovers_the_planted_distortion() -> None:
    """Scores sharpened by 2 on the logit scale: Platt's map must be close to the inverse, sigmoid(logit(p) / 2)."""
    oof = _frames(*_sample(20000, seed=5, sharpen=2.0))
    grid = pd.DataFrame({prob_column("L4-5"): np.linspace(0.02, 0.98, 25)})
    fixed = recalibrate(oof, grid, ["L4-5"], "platt")[prob_column("L4-5")]
    assert np.abs(fixed - expit(logit(grid[prob_column("L4-5")]) / 2.0)).max() < 0.03


def test_recalibration_never_looks_at_test_labels() -> None:
    oof, test = _frames(*_sample(300, seed=6, sharpen=2.0)), _frames(*_sample(300, seed=7, sharpen=2.0))
    flipped = test.assign(**{label_column("L4-5"): 1 - test[label_column("L4-5")]})
    for kind in ("platt", "isotonic"):
        first = recalibrate(oof, test, ["L4-5"], kind)
        pd.testing.assert_frame_equal(first, recalibrate(oof, flipped, ["L4-5"], kind))
        shuffled = oof.assign(**{label_column("L4-5"): np.random.default_rng(0).permutation(oof[label_column("L4-5")])})
        assert not np.allclose(first, recalibrate(shuffled, test, ["L4-5"], kind))  # the fit is on oof


def test_recalibration_refuses_what_it_cannot_fit(caplog: pytest.LogCaptureFixture) -> None:
    one_class = _frames(np.zeros(10, int), np.linspace(0.1, 0.9, 10))
    with pytest.raises(HnpError, match="one class only"):
        fit_recalibration("platt", np.zeros(10), np.linspace(0.1, 0.9, 10))
    with caplog.at_level(logging.WARNING, logger="hnp.eval"):  # in a report: that target is left uncalibrated
        assert recalibrate(one_class, one_class, ["L4-5"], "platt").empty
    assert "L4-5 has one class only in the out-of-fold predictions" in caplog.text
    with pytest.raises(HnpError, match="--calibrate 'beta'"):
        recalibrate(_frames(np.r_[0, 1], np.r_[0.2, 0.8]), one_class, ["L4-5"], "beta")


def _brute_force_threshold(y: np.ndarray, p: np.ndarray, fixed: str, minimum: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the best cut-off found by trying every one: the other rate as high as it
    can be, then the held rate."""
    best = None
    for cut in [*np.unique(p), np.nextafter(p.max(), np.inf)]:
        called = p >= cut
        sens, spec = called[y == 1].mean(), 1 - called[y == 0].mean()
        held, other = (spec, sens) if fixed == "specificity" else (sens, spec)
        if held >= minimum - 1e-12 and (best is None or (other, held) > best[0]):
            best = ((other, held), (sens, spec))
    return best[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("fixed", "minimum"), OPERATING_POINTS.values())
def test_threshold_at_finds_the_best_cut_off(seed: int, fixed: str, minimum: float) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    p = np.round(np.clip(0.25 * y + rng.uniform(0, 0.75, 60), 0, 1), 2)  # rounded: ties between the classes
    cut = threshold_at(y, p, fixed, minimum)
    called = p >= cut
    assert (called[y == 1].mean(), 1 - called[y == 0].mean()) == pytest.approx(
        _brute_force_threshold(y, p, fixed, minimum))


def test_threshold_at_worked_example() -> None:
    y, p = np.array([0, 0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    assert threshold_at(y, p, "specificity", 0.75) == 0.5  # specificity 3/4, sensitivity 1
    assert threshold_at(y, p, "specificity", 1.0) == 0.9  # specificity 1, sensitivity 1/2
    assert threshold_at(y, p, "sensitivity", 1.0) == 0.5
    assert math.isnan(threshold_at(np.ones(6), p, "sensitivity", 0.9))


def test_rates_at_a_confusion_matrix_worked_by_hand() -> None:
    # TP 2, FN 1, FP 1, TN 4
    y, called = np.array([1, 1, 1, 0, 0, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0, 0, 0])
    rates = {k: float(v[0]) for k, v in rates_at(y, called, 0.1).items()}
    assert rates["sensitivity"] == pytest.approx(2 / 3) and rates["specificity"] == pytest.approx(4 / 5)
    assert rates["ppv"] == pytest.approx(2 / 3) and rates["npv"] == pytest.approx(4 / 5)
    # Bayes at 10%: PPV = (2/3)(0.1) / ((2/3)(0.1) + (1/5)(0.9)) = 0.0667 / 0.2467; NPV = 0.72 / (0.72 + 0.0333)
    assert rates["ppv_at_prevalence"] == pytest.approx((2 / 30) / (2 / 30 + 0.18))
    assert rates["npv_at_prevalence"] == pytest.approx(0.72 / (0.72 + 1 / 30))
    at_own = {k: float(v[0]) for k, v in rates_at(y, called, 3 / 8).items()}  # Bayes at the data's own prevalence
    assert at_own["ppv_at_prevalence"] == pytest.approx(at_own["ppv"])
    assert at_own["npv_at_prevalence"] == pytest.approx(at_own["npv"])


def test_point_intervals_equal_a_bootstrap_written_out_with_scikit_learn() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 80), 0, 1)
    resamples = np.random.default_rng(1).integers(0, 80, (300, 80))
    ours = point_metrics(y, p, 0.5, resamples, prevalence=0.2)
    sens, ppv, npv_prev = [], [], []
    for rows in resamples:
        tn, fp, fn, tp = confusion_matrix(y[rows], p[rows] >= 0.5, labels=[0, 1]).ravel()
        sens.append(tp / (tp + fn))
        ppv.append(tp / (tp + fp))
        spec = tn / (tn + fp)
        npv_prev.append(spec * 0.8 / (spec * 0.8 + (1 - sens[-1]) * 0.2))
    assert (ours["sensitivity_ci_low"], ours["sensitivity_ci_high"]) == pytest.approx(np.percentile(sens, [2.5, 97.5]))
    assert (ours["ppv_ci_low"], ours["ppv_ci_high"]) == pytest.approx(np.percentile(ppv, [2.5, 97.5]))
    assert (ours["npv_at_prevalence_ci_low"], ours["npv_at_prevalence_ci_high"]) == pytest.approx(
        np.percentile(npv_prev, [2.5, 97.5]))
    assert ours["sensitivity_ci_low"] <= ours["sensitivity"] <= ours["sensitivity_ci_high"]


def test_undefined_resamples_are_left_out_of_an_interval_not_counted_as_zero() -> None:
    """Two positive calls in 60: many resamples call no one, and their PPV is undefined, not 0."""
    rng = np.random.default_rng(2)
    y, p = np.r_[1, 1, rng.integers(0, 2, 58)], np.r_[0.9, 0.8, np.full(58, 0.1)]  # PPV 1 wherever defined
    resamples = np.random.default_rng(3).integers(0, 60, (400, 60))
    ours = point_metrics(y, p, 0.5, resamples, prevalence=None)
    ppv = []
    for rows in resamples:
        called = p[rows] >= 0.5
        ppv.append(y[rows][called].mean() if called.any() else np.nan)
    assert np.isnan(ppv).sum() > 20
    assert (ours["ppv_ci_low"], ours["ppv_ci_high"]) == pytest.approx(np.nanpercentile(ppv, [2.5, 97.5])) == (1, 1)


def test_platt_never_reverses_the_ranking() -> None:
    y, p = _sample(300, seed=11)
    against = _frames(y, 1 - p)  # scores that fall as HNP becomes likelier
    fixed = recalibrate(against, against, ["L4-5"], "platt")[prob_column("L4-5")]
    assert np.allclose(fixed, y.mean())


def test_operating_points_are_chosen_out_of_fold_and_applied_to_test() -> None:
    oof, test = _frames(*_sample(400, seed=9, sharpen=3.0)), _frames(*_sample(200, seed=10))
    table = operating_points_table(oof, test, ["L4-5"], {"L4-5": 0.5}, {"L4-5": 0.1}, n_boot=50, seed=0)
    assert table["point"].tolist() == ["report", "spec90", "spec95", "sens90", "sens95"]
    rows = table.set_index("point")
    y_oof, p_oof = oof[label_column("L4-5")].to_numpy(), oof[prob_column("L4-5")].to_numpy()
    y, p = test[label_column("L4-5")].to_numpy(), test[prob_column("L4-5")].to_numpy()
    for point, (fixed, minimum) in OPERATING_POINTS.items():
        cut = rows.loc[point, "threshold"]
        assert cut == threshold_at(y_oof, p_oof, fixed, minimum)  # chosen on out-of-fold
        assert rows.loc[point, "sensitivity"] == pytest.approx((p[y == 1] >= cut).mean())  # scored on test
        assert rows.loc[point, "specificity"] == pytest.approx((p[y == 0] < cut).mean())
    assert rows.loc["report", "threshold"] == 0.5 and (rows["prevalence"] == 0.1).all()
    sens, spec = rows["sensitivity"], rows["specificity"]
    assert np.allclose(rows["ppv_at_prevalence"], sens * 0.1 / (sens * 0.1 + (1 - spec) * 0.9))  # at the given 10%
    alone = operating_points_table(None, test, ["L4-5"], {"L4-5": 0.5}, {}, n_boot=0, seed=0)
    assert alone["point"].tolist() == ["report"] and alone["ppv_at_prevalence"].isna().all()


@pytest.mark.parametrize(
    ("items", "expected"),
    [([], {}), (["0.1"], {"L4-5": 0.1, "any": 0.1}), (["0.1", "any=0.4"], {"L4-5": 0.1, "any": 0.4})],
)
def test_parse_prevalence(items: list[str], expected: dict[str, float]) -> None:
    assert parse_prevalence(items, ["L4-5", "any"]) == expected


@pytest.mark.parametrize(("item", "message"), [("1.5", "0 < P < 1"), ("ten", "0 < P < 1"), ("L9=0.1", "'L9' is not")])
def test_parse_prevalence_names_a_bad_value(item: str, message: str) -> None:
    with pytest.raises(HnpError, match=message):
        parse_prevalence([item], ["L4-5", "any"])


def _oof_patients(run: Path, shards: Path) -> pd.DataFrame:
    from eval.run_eval import load_folds, oof_patients, read_oof

    folds = load_folds(run)
    return oof_patients(read_oof(run, folds), shards, folds[0].config.model.task)


@pytest.mark.slow
def test_hnp_eval_reports_calibration_and_operating_points(clinical_reports: dict[str, Path]) -> None:
    report = clinical_reports["levels"]
    metrics = json.loads((report / "metrics.json").read_text())
    patients = pd.read_parquet(report / "predictions_patients.parquet")
    targets = [*LEVELS, "any"]
    calibration = metrics["calibration"]
    assert calibration["recalibration"] == "platt" and calibration["fitted_on"] == "out-of-fold"
    csv = pd.read_csv(report / "metrics.csv", index_col="target")
    for target in targets:
        sets = calibration["targets"][target]
        assert list(sets) == ["out-of-fold", "test", "test, recalibrated"]
        y, p = patients[label_column(target)], patients[prob_column(target)]
        assert sets["test"]["brier"] == pytest.approx(brier_score_loss(y, p))
        assert csv.loc[target, "brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-5)
        calibrated = patients[calibrated_column(target)]
        assert sets["test, recalibrated"]["brier"] == pytest.approx(brier_score_loss(y, calibrated))
        assert metrics["metrics"][target]["ece_calibrated"] == pytest.approx(sets["test, recalibrated"]["ece"])
        order = np.argsort(p.to_numpy(), kind="stable")
        assert np.all(np.diff(calibrated.to_numpy()[order]) >= -1e-9)  # Platt keeps the ranking
    points = pd.read_csv(report / "operating_points.csv")
    assert len(points) == len(targets) * 5 and (points["prevalence"] == 0.2).all()
    oof = _oof_patients(clinical_reports["levels_run"], clinical_reports["shards"])
    for row in points[points["point"] != "report"].itertuples():
        fixed, minimum = OPERATING_POINTS[row.point]
        y_oof, p_oof = oof[label_column(row.target)].to_numpy(), oof[prob_column(row.target)].to_numpy()
        assert row.threshold == threshold_at(y_oof, p_oof, fixed, minimum)  # the CSV holds it exactly
        called = p_oof >= row.threshold
        held = 1 - called[y_oof == 0].mean() if fixed == "specificity" else called[y_oof == 1].mean()
        assert held >= minimum - 1e-9  # the point holds out of fold, where it was chosen
        # The test rates are that threshold's on the test patients ...
        y_test = patients[label_column(row.target)].to_numpy()
        called_test = patients[prob_column(row.target)].to_numpy() >= row.threshold
        assert row.sensitivity == pytest.approx(called_test[y_test == 1].mean(), nan_ok=True)
        assert row.specificity == pytest.approx(1 - called_test[y_test == 0].mean(), nan_ok=True)
        # ... where, the run being trained, the rate held out of fold still mostly holds (6-12 test patients per
        # class and level; reached 0.9-1.0): thresholds of another level, or calls on the wrong side, fall below.
        if row.target in LEVELS:
            assert (row.specificity if fixed == "specificity" else row.sensitivity) >= 0.75, row
        stored = metrics["operating_points"]["targets"][row.target][row.point]
        assert stored["sensitivity"] == pytest.approx(row.sensitivity, nan_ok=True)
    text = (report / "report.md").read_text()
    for heading in ("## Precision-recall", "## Calibration", "## Operating points"):
        assert heading in text
    for figure in ("pr.png", "calibration.png"):
        assert (report / figure).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_hnp_eval_calibrate_needs_out_of_fold_predictions(clinical_reports: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from hnp.cli import main

    for best in clinical_reports["levels_run"].glob("fold*/best.pt"):  # a run copied without val_predictions
        (tmp_path / "run" / best.parent.name).mkdir(parents=True)
        (tmp_path / "run" / best.parent.name / "best.pt").write_bytes(best.read_bytes())
    argv = ["eval", "--run", str(tmp_path / "run"), "--shards", str(clinical_reports["shards"]), "--out",
            str(tmp_path / "r"), "--calibrate", "isotonic", "--no-wandb"]
    assert main(argv) == 2
    assert "--calibrate isotonic is fitted on the out-of-fold predictions" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


def _patients(n: int, seed: int) -> pd.DataFrame:
    """Patients of a level model with planted signal; "any" derived (nearly always positive)."""
    rng = np.random.default_rng(seed)
    frame = {"patient": [f"p{i:03d}" for i in range(n)]}
    for level in LEVELS:
        y = rng.integers(0, 2, n)
        frame[label_column(level)], frame[prob_column(level)] = y, expit(2.5 * (y - 0.5) + rng.normal(0, 1, n))
    return add_any(pd.DataFrame(frame), "levels")


def test_clinical_evaluation_writes_its_files_sections_and_columns(tmp_path: Path) -> None:
    oof, test = _patients(120, 1), _patients(60, 2)
    oof[label_column("any")] = 1  # one class out of fold: "any" cannot be recalibrated
    options = ClinicalOptions(calibrate="isotonic", prevalence=("0.1", "L4-5=0.3"), bootstrap=40)
    thresholds = dict.fromkeys([*LEVELS, "any"], 0.5)
    result = clinical_evaluation(test, oof, "levels", thresholds, options, tmp_path)
    assert list(result.sections) == ["Precision-recall", "Calibration", "Operating points"]
    for name in ("calibration.png", "pr.png", "operating_points.csv"):
        assert (tmp_path / name).is_file()
    assert list(result.document["calibration"]["targets"]["L4-5"]) == ["out-of-fold", "test", "test, recalibrated"]
    assert list(result.document["calibration"]["targets"]["any"]) == ["out-of-fold", "test"]
    assert calibrated_column("L4-5") in result.patients and calibrated_column("any") not in result.patients
    assert math.isnan(result.columns.loc["any", "ece_calibrated"])
    assert result.columns.loc["L4-5", "ece"] == calibration_summary(test["label_L4-5"], test["prob_L4-5"])["ece"]
    points = result.document["operating_points"]["targets"]
    assert points["L4-5"]["spec90"]["prevalence"] == 0.3 and points["L3-4"]["spec90"]["prevalence"] == 0.1
    assert "| L4-5 | spec90 |" in result.sections["Operating points"]
    assert "| any | test, recalibrated |" not in result.sections["Calibration"]
