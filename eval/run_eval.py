"""`hnp eval`: the fold models of a run predict the test split, bagged per patient, scored and reported.

    hnp eval --run runs/tiny --shards shards --out reports/tiny [--threshold fold-mean] [--gradcam-top 300]
             [--gradcam-method hirescam] [--gradcam-layer auto] [--truth data/phantom/truth.parquet]
             [--calibrate platt|isotonic] [--prevalence 0.1]

Every fold model predicts every test image exactly once (one pass of the evaluation loader, all folds on each
batch, no augmentation; on a GPU under the run's autocast, bf16 by default, on the CPU in float32). Bagging,
per-patient means and thresholds follow `eval.bagging`; the files are those of the report contract (DESIGN.md):
predictions_images.parquet, predictions_patients.parquet, metrics.json/.csv, report.md, report.html, roc.png, pr.png,
calibration.png, operating_points.csv, gradcam/ and explanations/ (the maps and their checks: `eval.explain`).
metrics.json is written last, so a folder without it is unfinished; an evaluation into the folder of an earlier one
removes the earlier report first (`clear_earlier_report`).
Calibration and operating points: `eval.clinical`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eval import bagging, report
from eval.clinical import ClinicalOptions, clinical_evaluation
from eval.explain import ExplainOptions, Explanations, explain_test_set, explanation_json, explanation_sections
from eval.fusion_eval import FILMS_TABLE, STUDIES_TABLE, film_weights, read_study_meta, weights_markdown
from eval.html_report import write_html_report
from eval.map_options import DEFAULT_METHOD
from eval.metrics import metrics_table
from eval.operating_points import parse_prevalence
from eval.samples import read_sample_meta
from hnp.bars import progress_bar
from hnp.config import DataConfig
from hnp.errors import HnpError
from hnp.files import atomic_write
from hnp.predictions import KEY, PATIENT, PRED_AGE, add_any, model_targets, prob_column, report_targets
from hnp.shard_format import TEST_SPLIT, fold_split, read_dataset
from train.model import FoldCheckpoint, load_checkpoint, outputs_to_predictions

log = logging.getLogger("hnp.eval")
_FOLD_DIR = re.compile(r"^fold(\d+)$")
# The report contract's files (DESIGN.md), in the order they are written: metrics.json, last, says that the folder
# is a finished report
REPORT_FILES = ("calibration.png", "pr.png", "operating_points.csv", "predictions_images.parquet", STUDIES_TABLE,
                FILMS_TABLE, "predictions_patients.parquet", "roc.png", "explanations.json", "report.md",
                "report.html", "metrics.csv", "metrics.json")
REPORT_FOLDERS = ("gradcam", "explanations")


@dataclass(frozen=True)
class EvalOptions:
    """What `hnp eval` was asked to do; see `eval.cli` for each option's meaning."""

    run: Path
    shards: Path
    out: Path
    threshold: str = "fold-mean"
    gradcam_top: int = 300
    gradcam_method: str = DEFAULT_METHOD
    gradcam_layer: str | None = None
    truth: Path | None = None
    explain_checks: int = 20
    bootstrap: int = 1000
    seed: int = 0
    calibrate: str | None = None
    prevalence: tuple[str, ...] = ()
    calibration_bins: int = 10
    device: str = "auto"
    loader: str | None = None
    batch_size: int | None = None
    wandb: bool = True


def load_folds(run_dir: Path) -> list[FoldCheckpoint]:
    """Every `fold{k}/best.pt` of a run, by fold number; they must agree on the task and the data transform."""
    fold_dirs = sorted((p for p in run_dir.glob("fold*") if _FOLD_DIR.match(p.name)),
                       key=lambda p: int(_FOLD_DIR.match(p.name).group(1)))
    if not fold_dirs:
        raise HnpError(f"{run_dir}: no fold*/ folders; is this a run folder written by `hnp train`?")
    missing = [str(p / "best.pt") for p in fold_dirs if not (p / "best.pt").is_file()]
    if missing:
        raise HnpError(f"{missing[0]}: missing; evaluate after every fold has finished (or remove the folder)")
    folds = [load_checkpoint(p / "best.pt") for p in fold_dirs]
    first = folds[0]
    absent = sorted(set(range(first.config.folds)) - {fold.fold for fold in folds})
    if absent:  # bagging fewer models than the run trained would change the result without a word
        raise HnpError(f"{run_dir}: the run has {first.config.folds} folds but "
                       f"{', '.join(f'fold{k}' for k in absent)}/best.pt is missing")
    for fold in folds[1:]:
        if fold.config.model.task != first.config.model.task:
            raise HnpError(f"{run_dir}: fold {fold.fold} has task {fold.config.model.task}, "
                           f"fold {first.fold} has {first.config.model.task}")
        if fold.fusion != first.fusion:
            raise HnpError(f"{run_dir}: fold {fold.fold} has model.fusion {fold.fusion}, fold {first.fold} has "
                           f"{first.fusion}")
        if replace(fold.config.data, augment=first.config.data.augment) != first.config.data:
            raise HnpError(f"{run_dir}: fold {fold.fold} was trained with other data settings than fold {first.fold}")
        if fold.dataset != first.dataset:
            raise HnpError(f"{run_dir}: fold {fold.fold} trained on shards {fold.dataset or '(not recorded)'}, "
                           f"fold {first.fold} on {first.dataset or '(not recorded)'}: its models come from two "
                           "data sets")
    return folds


def check_same_shards(folds: Sequence[FoldCheckpoint], shards: Path) -> None:
    """A run is evaluated on the shards it trained on: other shards' test split may hold its training patients.

    Args:
        folds: the run's checkpoints (they agree on the shards: `load_folds`).
        shards: the shard folder given to `hnp eval`.
    """
    identity = read_dataset(shards).identity
    trained_on = folds[0].dataset
    if not trained_on:
        log.warning("the run's checkpoints do not record which shards they trained on (written by an older hnp "
                    "train): cannot check that %s are those shards", shards)
    elif trained_on != identity:
        raise HnpError(f"the run trained on shards {trained_on}, but {shards / 'dataset.json'} is {identity}: "
                       "evaluate it with the shards it trained on")


def resolve_device(name: str) -> torch.device:
    """`auto` = the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HnpError(f"--device {name}: no CUDA device is available here")
    return torch.device(name)


def eval_data_config(folds: Sequence[FoldCheckpoint], loader: str | None, batch_size: int | None) -> DataConfig:
    """The folds' data config with augmentation off, optionally another loader or batch size."""
    data = folds[0].config.data
    data = replace(data, augment=replace(data.augment, enabled=False))
    return replace(data, loader=loader or data.loader, batch_size=batch_size or data.batch_size)


def eval_amp(folds: Sequence[FoldCheckpoint], device: torch.device) -> str:
    """Autocast for evaluation: the run's own mode on a GPU (bf16 by default), float32 on the CPU."""
    return folds[0].config.train.amp if device.type == "cuda" else "off"


@torch.no_grad()
def predict_folds(folds: Sequence[FoldCheckpoint], batches: Iterable[dict[str, Any]], device: torch.device,
                  total: int | None = None) -> pd.DataFrame:
    """Each fold model's probability for each image (study, for a fusion run): one row per key,
    `prob_fold<k>_<target>` columns, plus `pred_age` (the folds' mean, in years) for levels_age. `hnp eval` and
    `hnp predict` both predict here.

    Every batch goes through every fold model, so each model sees each image exactly once, under `eval_amp`.

    Args:
        folds: the fold checkpoints; their models are moved to `device`.
        batches: evaluation batches (`image`, `key`).
        device: where to run the models.
        total: the number of batches, for the progress bar.
    """
    from train.fusion import model_inputs
    from train.loop import autocast

    task, amp = folds[0].config.model.task, eval_amp(folds, device)
    targets = model_targets(task)
    keys: list[str] = []
    probs: dict[int, list[torch.Tensor]] = {fold.fold: [] for fold in folds}
    ages: list[torch.Tensor] = []
    for fold in folds:
        fold.model.to(device)
    for batch in progress_bar(batches, desc="predict", unit="batch", total=total,
                              disable=total is not None and total < 2):
        inputs = model_inputs(batch, device)  # (images,), or (films, views, mask) of a study batch
        keys.extend(batch["key"])
        batch_ages = []
        for fold in folds:
            with autocast(amp, device):
                outputs = fold.model(*inputs)
            fold_probs, fold_age = outputs_to_predictions(outputs, task)
            probs[fold.fold].append(fold_probs.cpu())
            batch_ages += [] if fold_age is None else [fold_age.cpu()]
        if batch_ages:
            ages.append(torch.stack(batch_ages).mean(dim=0))
    frame: dict[str, Any] = {KEY: keys}
    for fold_number, parts in probs.items():
        stacked = torch.cat(parts).numpy() if parts else np.zeros((0, len(targets)), np.float32)
        frame.update({prob_column(t, fold_number): stacked[:, i] for i, t in enumerate(targets)})
    if task == "levels_age":
        frame[PRED_AGE] = torch.cat(ages).numpy() if ages else np.zeros(0, np.float32)
    return pd.DataFrame(frame)


def check_each_once(predicted: pd.DataFrame, meta: pd.DataFrame) -> None:
    """The loader must have delivered every test sample exactly once."""
    duplicated = predicted["key"][predicted["key"].duplicated()]
    if not duplicated.empty:
        raise HnpError(f"the evaluation loader delivered sample {duplicated.iloc[0]} more than once")
    missing = sorted(set(meta["key"]) - set(predicted["key"]))
    extra = sorted(set(predicted["key"]) - set(meta["key"]))
    if missing or extra:
        raise HnpError(f"the evaluation loader delivered {len(predicted)} samples for {len(meta)} in the test shards "
                       f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unknown, e.g. {extra[:1]})")


def image_frame(meta: pd.DataFrame, predicted: pd.DataFrame, folds: Sequence[int], task: str) -> pd.DataFrame:
    """predictions_images: key, patient, view, labels, per-fold and bagged probabilities (+ derived any)."""
    images = meta.merge(predicted, on=KEY, how="inner", validate="one_to_one").sort_values(KEY, kind="stable")
    images = bagging.bag_folds(images, folds, model_targets(task))
    return add_any(images, task).reset_index(drop=True)


def read_oof(run_dir: Path, folds: Sequence[FoldCheckpoint]) -> dict[int, pd.DataFrame] | None:
    """Each fold's `val_predictions.parquet` (out-of-fold predictions, with "any" added), or None if one lacks it."""
    frames = {}
    for fold in folds:
        path = run_dir / f"fold{fold.fold}" / "val_predictions.parquet"
        if not path.is_file():
            log.warning("%s: missing; no cross-validation tables", path)
            return None
        frames[fold.fold] = add_any(pd.read_parquet(path), fold.config.model.task)
    return frames


def oof_patients(oof: dict[int, pd.DataFrame], shards: Path, task: str, fusion: str = "none") -> pd.DataFrame:
    """Pooled out-of-fold predictions of all folds (per image, or per study for a fusion run), aggregated per
    patient like the test set (for youden-oof)."""
    patients = eval_meta(shards, [fold_split(k) for k in sorted(oof)], fusion)[[KEY, PATIENT]]
    pooled = pd.concat(oof.values(), ignore_index=True).merge(patients, on=KEY, how="left")
    if pooled[PATIENT].isna().any():
        raise HnpError(f"val_predictions hold keys not in the fold shards of {shards}, e.g. "
                       f"{pooled.loc[pooled[PATIENT].isna(), KEY].iloc[0]}: were these shards used to train?")
    return add_any(bagging.patient_means(pooled, model_targets(task)), task)


def eval_meta(shards: Path, splits: Sequence[str], fusion: str) -> pd.DataFrame:
    """The rows a run predicts in the named splits: images (`eval.samples.read_sample_meta`), or studies
    (`eval.fusion_eval.read_study_meta`) for a fusion run."""
    if fusion == "none":
        from pipeline import split_shards

        return read_sample_meta(split_shards(shards, list(splits)))
    return read_study_meta(shards, splits)


def eval_loader(data: DataConfig, shards: Path, fusion: str, device: torch.device) -> Any:
    """The test split's evaluation loader: image batches, or study batches (all films of each) for a fusion run."""
    if fusion == "none":
        from pipeline import build_loader, split_shards

        return build_loader(data, split_shards(shards, [TEST_SPLIT]), training=False, device=str(device))
    from pipeline.studies import build_study_loader, read_studies

    return build_study_loader(data, read_studies(shards, [TEST_SPLIT]), training=False, device=str(device))


def oof_for_report(oof: dict[int, pd.DataFrame] | None, options: EvalOptions, rule: Any, task: str,
                   fusion: str = "none") -> pd.DataFrame | None:
    """The per-patient out-of-fold predictions, or None where the run lacks them.

    youden-oof and --calibrate need them; for the other rules they only add the report's cross-validation
    calibration and operating-point rows, so fold shards that are missing then cost those rows, not the report.
    """
    if not oof:
        return None
    try:
        return oof_patients(oof, options.shards, task, fusion)
    except HnpError as error:
        if rule.kind == "youden-oof" or options.calibrate:
            raise
        log.warning("%s; the report leaves out its out-of-fold (cross-validation) rows", error)
        return None


def explain_options(options: EvalOptions) -> ExplainOptions:
    """The explanation step's options from `hnp eval`'s."""
    return ExplainOptions(out=options.out, top=options.gradcam_top, method=options.gradcam_method,
                          layer=options.gradcam_layer, truth=options.truth, checks=options.explain_checks,
                          seed=options.seed)


def run_eval(options: EvalOptions) -> dict[str, Any]:
    """Evaluate a run on the test shards and write the report folder; returns the metrics.json contents.

    Args:
        options: the run, shards and output folders and the evaluation choices.
    """
    from pipeline import split_shards

    rule = bagging.parse_threshold_rule(options.threshold)
    folds = load_folds(options.run)
    task, fusion = folds[0].config.model.task, folds[0].fusion
    parse_prevalence(options.prevalence, report_targets(task))  # a bad --prevalence fails before the long pass
    oof = read_oof(options.run, folds)
    if options.calibrate and oof is None:
        raise HnpError(f"--calibrate {options.calibrate} is fitted on the out-of-fold predictions, and {options.run} "
                       "lacks fold*/val_predictions.parquet")
    device = resolve_device(options.device)
    data = eval_data_config(folds, options.loader, options.batch_size)
    options.out.mkdir(parents=True, exist_ok=True)

    check_same_shards(folds, options.shards)
    tars = split_shards(options.shards, [TEST_SPLIT])
    meta = eval_meta(options.shards, [TEST_SPLIT], fusion)
    if meta.empty:
        raise HnpError(f"{options.shards}: the test split holds no samples")
    loader = eval_loader(data, options.shards, fusion, device)
    predicted = predict_folds(folds, loader, device, total=len(loader))
    check_each_once(predicted, meta)
    images = image_frame(meta, predicted, [f.fold for f in folds], task)
    clear_earlier_report(options.out)

    per_fold = [bagging.fold_thresholds(f.thresholds, oof[f.fold] if oof else None, task, f.fold) for f in folds]
    oof_by_patient = oof_for_report(oof, options, rule, task, fusion)
    thresholds = bagging.resolve_thresholds(rule, per_fold, oof_by_patient, task)
    patients = bagging.add_decisions(add_any(bagging.patient_means(images, model_targets(task)), task), thresholds,
                                     task)
    table = metrics_table(patients, report_targets(task), thresholds, n_boot=options.bootstrap, seed=options.seed)
    clinical = clinical_evaluation(patients, oof_by_patient, task, thresholds, ClinicalOptions(
        options.calibrate, options.prevalence, options.calibration_bins, options.bootstrap, options.seed), options.out)
    patients, table = clinical.patients, table.join(clinical.columns)

    write_table(images, options.out / ("predictions_images.parquet" if fusion == "none" else STUDIES_TABLE))
    films = None
    if fusion != "none":
        films = film_weights(folds, eval_loader(data, options.shards, fusion, device), device, eval_amp(folds, device))
        write_table(films, options.out / FILMS_TABLE)
    write_table(patients, options.out / "predictions_patients.parquet")
    ceiling = phantom_ceiling(options.truth, images if fusion == "none" else None, patients)
    meta_json = {
        "run": options.run.name, "task": task, "folds": [f.fold for f in folds], "threshold_rule": options.threshold,
        "thresholds_per_fold": {f.fold: t for f, t in zip(folds, per_fold, strict=True)},
        "unit": "patient", "fusion": fusion, ("n_images" if fusion == "none" else "n_studies"): len(images),
        "n_patients": len(patients),
        "bootstrap": {"resamples": options.bootstrap, "seed": options.seed, "unit": "patient", "interval": 0.95},
        **clinical.document, "ceiling": ceiling,
    }
    report.plot_roc(patients, task, options.out / "roc.png", f"{options.run.name}: test set, per patient")

    explained = None
    if options.gradcam_top > 0 and fusion != "none":
        from eval.fusion_explain import explain_fused_test_set
        from pipeline.studies import read_studies

        explained = explain_fused_test_set(folds, images, read_studies(options.shards, [TEST_SPLIT]), tars, data,
                                           thresholds, explain_options(options))
    elif options.gradcam_top > 0:
        explained = explain_test_set(folds, images, tars, data, thresholds, explain_options(options))
    scored = f"{len(images)} test images" if films is None else f"{len(images)} test studies ({len(films)} films)"
    sections = report_sections(table, oof, per_fold, folds, options, explained, scored, clinical.sections, ceiling)
    if films is not None:
        sections["Film weights per view (fusion)"] = weights_markdown(films)
    if explained is not None and fusion != "none":
        from eval.fusion_explain import film_share_markdown

        sections["Which film carries the fused prediction"] = film_share_markdown(explained.index)
    report.write_report(options.out, sections, f"Evaluation of run {options.run.name}")
    write_html_report(options.out, thresholds=table["threshold"].to_dict())
    report.write_metrics(table, options.out, meta_json)  # last: a folder with metrics.json is a finished report
    if options.wandb:
        log_metrics_to_wandb(folds[0].config, table, options.out)
    log.info("wrote %s", options.out)
    return {**meta_json, "metrics": table.to_dict(orient="index"),
            "explanations": explanation_json(explained) if explained is not None else None}


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """A prediction table as Parquet, atomically (`hnp.files`)."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def clear_earlier_report(out: Path) -> None:
    """Remove an earlier evaluation's report from `out` before anything new is written there: no file of it (a
    table, an overlay, the page) may pass for one of the new report, whatever this run writes or is killed before.
    metrics.json goes first, so that a kill while clearing leaves a folder that reads as unfinished."""
    files = [out / name for name in reversed(REPORT_FILES) if (out / name).is_file()]
    folders = [out / name for name in REPORT_FOLDERS if (out / name).is_dir()]
    if files or folders:
        log.info("%s holds an earlier report: it is replaced", out)
    for path in files:
        path.unlink()
    for path in folders:
        shutil.rmtree(path)


def report_sections(table: pd.DataFrame, oof: dict[int, pd.DataFrame] | None, per_fold: Sequence[dict[str, float]],
                    folds: Sequence[FoldCheckpoint], options: EvalOptions, explained: Explanations | None,
                    scored: str, clinical_sections: dict[str, str],
                    ceiling: dict[str, Any] | None = None) -> dict[str, str]:
    """The report.md sections, in order; `clinical_sections` (`eval.clinical`) follow the test set's, the phantom's
    ceiling (`phantom_ceiling`) follows them. `scored` says what the fold models scored: "N test images", or a
    fusion run's "N test studies (M films)"."""
    task = folds[0].config.model.task
    n_patients = int(table["n"].iloc[0])
    sections = {
        "Test set (paper Table 5 layout)": (
            f"{scored} of {n_patients} patients, {len(folds)} fold models bagged (mean probability), "
            f"then averaged per patient. Threshold rule: `{options.threshold}` (see `eval/bagging.py`). ROC AUC "
            f"with a {options.bootstrap}-resample patient bootstrap 95% interval (seed {options.seed}). Our values "
            "on the left, the paper's Table 5 on the right (paper accuracy: "
            f"{report.PAPER_TABLE5_ACCURACY:.1%}, pooled over levels).\n\n" + report.table5_markdown(table)
            + "\n\n![ROC curves](roc.png)"
        ),
        **clinical_sections,
    }
    if ceiling is not None:
        from phantom.ceiling import ceiling_markdown

        sections["Phantom ceiling"] = ceiling_markdown(ceiling)
    if oof is not None:
        thresholds = {f.fold: t for f, t in zip(folds, per_fold, strict=True)}
        sections[report.cv_heading(task, folds[0].fusion)] = (
            "Each fold's out-of-fold validation predictions at that fold's own Youden-J thresholds.\n\n"
            + report.cv_table_markdown(oof, thresholds, task)
        )
    if explained is not None:
        sections.update(explanation_sections(explained))
    return sections


def phantom_ceiling(truth: Path | None, images: pd.DataFrame | None,
                    patients: pd.DataFrame) -> dict[str, Any] | None:
    """With --truth, the model's test AUC beside the phantom's ceiling (`phantom.ceiling.beside_ceiling`); `images`
    None for a fusion run, which scores no image alone."""
    if truth is None:
        return None
    from phantom.ceiling import beside_ceiling

    ceiling = beside_ceiling(truth, images, patients)
    if "missing" in ceiling:
        log.warning("%s: no %s beside it, so the report has no phantom ceiling", truth, ceiling["missing"])
    return ceiling



def log_metrics_to_wandb(cfg: Any, table: pd.DataFrame, out: Path) -> None:
    """The test metrics as the summary of an `eval` run in the experiment's W&B group (offline by default).

    Scalars only, through the training runs' initializer (`train.wandb_log.open_run`) and its privacy settings:
    no images, keys, patient pseudonyms or code.
    """
    from train.wandb_log import open_run

    run = open_run(cfg, name=f"{cfg.name}-eval", job_type="eval", folder=out)
    if run is None:
        return
    summary = {f"test/{metric}/{name}": float(value) for name, row in table.iterrows()
               for metric, value in row.items() if not pd.isna(value)}
    try:
        run.log(summary)
        run.summary.update(summary)
    finally:
        run.finish()
