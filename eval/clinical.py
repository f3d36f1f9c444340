"""The clinical part of `hnp eval`'s report: calibration (before and after an optional recalibration), operating
points, and precision-recall curves, with their report.md sections and metrics.json/.csv entries.

Units: test figures are per patient (bagged over the fold models, then the patient's mean, as the paper's Table 5).
Out-of-fold figures are per patient as well: each fold model's predictions on its own held-out fold, pooled over
the folds and averaged per patient (`eval.run_eval.oof_patients`), so one model scores each patient there, not
the bag of four. Recalibration maps and operating-point thresholds are fitted on those out-of-fold patients and
applied to the test patients; nothing is fitted on test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval import calibration, operating_points, report
from hnp.errors import HnpError
from hnp.files import atomic_write
from hnp.predictions import calibrated_column, label_column, prob_column, report_targets

OOF, TEST, TEST_CALIBRATED = "out-of-fold", "test", "test, recalibrated"


@dataclass(frozen=True)
class ClinicalOptions:
    """`hnp eval`'s clinical choices: see `eval.cli` for each option."""

    calibrate: str | None = None
    prevalence: tuple[str, ...] = ()
    calibration_bins: int = calibration.DEFAULT_BINS
    bootstrap: int = 1000
    seed: int = 0


@dataclass
class ClinicalResult:
    """What the clinical evaluation adds to the report."""

    patients: pd.DataFrame  # the test patients, with `prob_calibrated_<target>` when recalibrated
    columns: pd.DataFrame  # per target: ece, brier, ... (metrics.csv columns beside the main metrics)
    document: dict[str, Any]  # metrics.json entries: "calibration", "operating_points"
    sections: dict[str, str] = field(default_factory=dict)  # report.md sections, in order


def clinical_evaluation(patients: pd.DataFrame, oof: pd.DataFrame | None, task: str, thresholds: Mapping[str, float],
                        options: ClinicalOptions, out_dir: Path) -> ClinicalResult:
    """Calibration, recalibration and operating points of the test patients; writes calibration.png, pr.png and
    operating_points.csv into `out_dir`.

    Args:
        patients: the test patients (`label_<target>`, `prob_<target>`), one row each.
        oof: the out-of-fold predictions per patient, or None when the run lacks val_predictions.
        task: the model task.
        thresholds: the report's threshold per target.
        options: the clinical choices.
        out_dir: the report folder.
    """
    targets = report_targets(task)
    if options.calibrate and oof is None:
        raise HnpError(f"--calibrate {options.calibrate} is fitted on the out-of-fold predictions, and the run lacks "
                       "fold*/val_predictions.parquet")
    sets = {name: frame for name, frame in ((OOF, oof), (TEST, patients)) if frame is not None}
    curves = {target: {name: calibration.calibration_summary(frame[label_column(target)], frame[prob_column(target)],
                                                             options.calibration_bins)
                       for name, frame in sets.items()}
              for target in targets}
    if options.calibrate:
        recalibrated = calibration.recalibrate(oof, patients, targets, options.calibrate)
        fitted = [target for target in targets if prob_column(target) in recalibrated]
        for target in fitted:
            curves[target][TEST_CALIBRATED] = calibration.calibration_summary(
                patients[label_column(target)], recalibrated[prob_column(target)], options.calibration_bins)
        patients = patients.assign(**{calibrated_column(t): recalibrated[prob_column(t)] for t in fitted})
    prevalence = operating_points.parse_prevalence(options.prevalence, targets)
    points = operating_points.operating_points_table(oof, patients, targets, thresholds, prevalence,
                                                     n_boot=options.bootstrap, seed=options.seed)
    atomic_write(out_dir / "calibration.png", lambda tmp: calibration.plot_calibration(curves, tmp))
    atomic_write(out_dir / "pr.png", lambda tmp: report.plot_precision_recall(patients, task, tmp,
                                                                                "test set, per patient"))
    # full precision: a threshold is one of the out-of-fold scores, and rounding it would move patients across it
    atomic_write(out_dir / "operating_points.csv", lambda tmp: points.to_csv(tmp, index=False))
    document = {
        "calibration": {"unit": "patient", "bins": options.calibration_bins, "recalibration": options.calibrate,
                        "fitted_on": OOF if options.calibrate else None, "targets": curves},
        "operating_points": {"thresholds_from": OOF if oof is not None else None, "applied_to": TEST,
                             "bootstrap": {"resamples": options.bootstrap, "seed": options.seed, "unit": "patient"},
                             "targets": _points_document(points)},
    }
    sections = {
        "Precision-recall": "Per patient, test set; dotted lines: each target's prevalence (no skill).\n\n"
                            "![Precision-recall curves](pr.png)",
        "Calibration": calibration_markdown(curves, options),
        "Operating points": operating_points_markdown(points, oof is not None, options.bootstrap),
    }
    return ClinicalResult(patients, metric_columns(curves), document, sections)


def metric_columns(curves: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Per target: ece, brier, brier_reference (test), and oof_* / *_calibrated where those sets exist."""
    names = {TEST: ("ece", "brier", "brier_reference"), OOF: ("oof_ece", "oof_brier"),
             TEST_CALIBRATED: ("ece_calibrated", "brier_calibrated")}
    rows = {}
    for target, sets in curves.items():
        rows[target] = {column: sets[name][key] for name, columns in names.items() if name in sets
                        for column, key in zip(columns, ("ece", "brier", "brier_reference"), strict=False)}
    return pd.DataFrame.from_dict(rows, orient="index")


def _points_document(points: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    document: dict[str, dict[str, dict[str, float]]] = {}
    for row in points.to_dict(orient="records"):
        target, point = row.pop("target"), row.pop("point")
        document.setdefault(target, {})[point] = row
    return document


def calibration_markdown(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], options: ClinicalOptions) -> str:
    """The Calibration section: what each set is, a table of ECE and Brier per target and set, the diagrams."""
    recalibrated = (f" `{TEST_CALIBRATED}`: the test patients after {options.calibrate} recalibration fitted per "
                    f"target on the {OOF} patients (never on test)." if options.calibrate else "")
    lines = [
        f"Per patient. `{OOF}`: each fold model's predictions on its held-out fold, averaged per patient (one model "
        f"per patient, not the bag); `{TEST}`: the bagged test predictions.{recalibrated} ECE over "
        f"{options.calibration_bins} equal-width bins; the Brier score of always predicting the prevalence is the "
        "reference a useful model beats.", "",
        "| Target | Set | Patients | ECE | Brier | Brier of the prevalence |", "|---|---|---|---|---|---|",
    ]
    for target, sets in curves.items():
        for name, s in sets.items():
            lines.append(f"| {target} | {name} | {s['n']} | {s['ece']:.3f} | {s['brier']:.3f} "
                         f"| {s['brier_reference']:.3f} |")
    return "\n".join([*lines, "", "![Reliability diagrams](calibration.png)"])


def operating_points_markdown(points: pd.DataFrame, from_oof: bool, n_boot: int) -> str:
    """The Operating points section: where each threshold comes from and the test rates with their intervals."""
    given = points["prevalence"].notna().any()
    lines = [
        ("Thresholds chosen on the out-of-fold patients and applied unchanged to the test patients: `specXX` = the "
         "highest out-of-fold sensitivity with specificity >= XX%, `sensXX` = the highest specificity with "
         "sensitivity >= XX%; `report` = the report's own threshold. " if from_oof else
         "The run has no out-of-fold predictions, so only the report's own threshold is shown. ")
        + f"Test rates per patient with {n_boot}-resample patient-bootstrap 95% intervals at the fixed threshold; "
        "PPV and NPV at the test set's prevalence" + (" and at the given prevalence (Bayes' rule)." if given else "."),
        "",
    ]
    header = ["Target", "Point", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV"]
    rates = ["sensitivity", "specificity", "ppv", "npv"]
    if given:
        header += ["Prevalence", "PPV at prevalence", "NPV at prevalence"]
        rates += ["ppv_at_prevalence", "npv_at_prevalence"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in points.to_dict(orient="records"):
        cells = [row["target"], row["point"], _number(row["threshold"])]
        cells += [_rate(row, name) for name in rates[:4]]
        if given:
            cells += [_number(row["prevalence"]), *(_rate(row, name) for name in rates[4:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(row: Mapping[str, float], name: str) -> str:
    value = row.get(name, math.nan)
    if value is None or math.isnan(value):
        return "–"
    low, high = row.get(f"{name}_ci_low", math.nan), row.get(f"{name}_ci_high", math.nan)
    return f"{value:.1%}" if math.isnan(low) else f"{value:.1%} ({low:.1%}–{high:.1%})"


def _number(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"
