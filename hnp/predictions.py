"""The prediction tables' schema, owned here: the targets each task reports, the column names, and the derived
"any" score. Training writes these tables (`val_predictions.parquet`), evaluation reads and extends them
(`predictions_images.parquet`, `predictions_patients.parquet`), and every file spells the targets the same way:
the levels as `hnp.levels.LEVELS` ("L1-2" ... "L5-S1"), then "any".

Columns (one row per image, or per patient after aggregation):
    key, patient, view          which sample / patient (pseudonym)
    label_<target>              0/1, the MRI read
    prob_<target>               the probability; bagged over the fold models where several predicted
    prob_fold<k>_<target>       fold k's own probability (hnp eval's image table)
    pred_<target>               0/1, the decision at the target's threshold
    prob_calibrated_<target>    the probability recalibrated on out-of-fold predictions (hnp eval --calibrate)
    age, pred_age               levels_age only: true and predicted age in years

    prob_column("L4-5")           # "prob_L4-5"
    prob_column("L4-5", fold=2)   # "prob_fold2_L4-5"
    report_targets("levels")      # ("L1-2", ..., "L5-S1", "any")
"""

from __future__ import annotations

import pandas as pd

from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.shard_format import any_label

ANY = "any"
TASKS: tuple[str, ...] = ("any", "levels", "levels_age")
KEY, PATIENT, VIEW = "key", "patient", "view"
AGE, PRED_AGE = "age", "pred_age"


def check_task(task: str) -> str:
    """`task` itself, or an error naming the known tasks."""
    if task not in TASKS:
        raise HnpError(f"model task {task!r} is not one of {', '.join(TASKS)}")
    return task


def model_targets(task: str) -> tuple[str, ...]:
    """The targets the model gives a probability for, in output order: ("any",) or LEVELS."""
    return (ANY,) if check_task(task) == ANY else LEVELS


def report_targets(task: str) -> tuple[str, ...]:
    """Every target reported for a task: the model's own, plus the derived "any" for the level tasks."""
    return (ANY,) if check_task(task) == ANY else (*LEVELS, ANY)


def label_column(target: str) -> str:
    return f"label_{target}"


def prob_column(target: str, fold: int | None = None) -> str:
    """The probability column of a target: bagged (`fold` None) or of one fold model."""
    return f"prob_{target}" if fold is None else f"prob_fold{fold}_{target}"


def pred_column(target: str) -> str:
    return f"pred_{target}"


def calibrated_column(target: str) -> str:
    return f"prob_calibrated_{target}"


def add_any(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    """For the level tasks, add `prob_any` = the highest level probability and, when the frame has the level
    labels, `label_any` (`hnp.shard_format.any_label`): a summary comparable with the paper's baseline task.

    The `any` task predicts "any" itself, so its frame is returned unchanged.
    """
    if check_task(task) == ANY:
        return frame
    derived = {prob_column(ANY): frame[[prob_column(level) for level in LEVELS]].max(axis=1)}
    labels = [label_column(level) for level in LEVELS]
    if all(column in frame for column in labels):
        derived[label_column(ANY)] = any_label(frame[labels].to_numpy())
    return frame.assign(**derived)
