"""One patient's radiographs -> per-level bagged HNP probability, threshold and decision.

The same steps as `hnp eval`, for a patient outside the shards: each image is checked (`hnp.jpeg`), decoded
to gray and given the training's evaluation transform (`pipeline.preprocess`); every fold model predicts every
image through `hnp eval`'s own `predict_folds` (batched, under the run's autocast on a GPU), so the two commands
give the same numbers for the same image; probabilities are bagged over folds, averaged over the images, and
compared with the thresholds of `eval.bagging` (fold-mean by default).

    result = predict_patient(Path("runs/tiny"), [Path("ap.jpg"), Path("lat.jpg")])
    print(format_table(result))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eval import bagging
from eval.gradcam import ClassActivationMap, export_gradcam, map_targets, resolve_layers
from eval.map_options import DEFAULT_METHOD
from eval.run_eval import eval_data_config, load_folds, predict_folds, read_oof, resolve_device
from hnp.errors import HnpError
from hnp.levels import VIEWS, view_id
from hnp.predictions import KEY, PATIENT, PRED_AGE, add_any, model_targets, prob_column, report_targets
from hnp.schema import AGE_RANGE
from pipeline.transforms import decode_gray


def read_radiograph(path: Path) -> np.ndarray:
    """Decode one JPEG to uint8 gray (H, W); a missing, non-JPEG or broken file is an error naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HnpError(f"{path}: file not found") from None
    except OSError as err:
        raise HnpError(f"{path}: unreadable: {err.strerror or err}") from None
    return decode_gray(data, where=str(path))


@torch.no_grad()
def predict_patient(run: Path, paths: Sequence[Path], *, age: float | None = None, threshold: str = "fold-mean",
                    device: str = "auto", gradcam_dir: Path | None = None, gradcam_method: str = DEFAULT_METHOD,
                    gradcam_layer: str | None = None, views: Sequence[str] | None = None) -> dict[str, Any]:
    """Bagged per-patient prediction for one patient's images (fused into one study for a fusion run).

    Args:
        run: the run folder (fold*/best.pt).
        paths: the patient's radiographs (JPEG).
        age: the patient's age in years, recorded in the result (and beside the predicted age for levels_age).
        threshold: `fold-mean` or `fixed:X` (`youden-oof` needs the training shards: use `hnp eval`).
        device: auto, cpu or cuda.
        gradcam_dir: where to write one Grad-CAM heatmap per image and level; None = no Grad-CAM.
        gradcam_method: the map method (`eval.gradcam.METHODS`).
        gradcam_layer: the map's layer(s) (`eval.gradcam.resolve_layers`; default: auto).
        views: the view of each image, in order (AP, LAT, ...): needed by a fusion run, unused otherwise.

    Returns:
        a JSON-ready dict: task, n_images, age, predicted_age (levels_age), threshold_rule, and per target
        (levels, then "any") its probability, threshold and decision; for a fusion run also `film_weights`,
        each image's weight in the pooling (the mean over the fold models).
    """
    if not paths:
        raise HnpError("no images given")
    if age is not None and not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise HnpError(f"--age {age:g}: expected {AGE_RANGE[0]}-{AGE_RANGE[1]} years")
    rule = bagging.parse_threshold_rule(threshold)
    if rule.kind == "youden-oof":
        raise HnpError("--threshold youden-oof needs the training shards: use fold-mean or fixed:X here")
    grays = [read_radiograph(Path(p)) for p in paths]  # check every file before loading any model
    folds = load_folds(run)
    task, fusion = folds[0].config.model.task, folds[0].fusion
    view_ids = film_views(views, len(paths), fusion)
    if fusion != "none" and gradcam_dir is not None:
        raise HnpError(f"--gradcam: Grad-CAM of a fusion model ({fusion}) is not built yet")
    data = eval_data_config(folds, None, None)
    from pipeline import preprocess

    inputs = torch.from_numpy(np.stack([preprocess(gray, data) for gray in grays]))
    keys = [f"image{i + 1}" for i in range(len(grays))]
    if fusion != "none":
        study = fused_study(folds, inputs, view_ids, resolve_device(device))
        batches = [study.pop("batch")]
    else:
        study = {}
        batches = [{"image": inputs[i:i + data.batch_size], "key": keys[i:i + data.batch_size]}
                   for i in range(0, len(keys), data.batch_size)]
    images = predict_folds(folds, batches, resolve_device(device), total=len(batches)).assign(**{PATIENT: "patient"})
    images = add_any(bagging.bag_folds(images, [f.fold for f in folds], model_targets(task)), task)
    patient = add_any(bagging.patient_means(images, model_targets(task)), task).iloc[0]
    oof = read_oof(run, folds) if rule.kind == "fold-mean" else None
    per_fold = [bagging.fold_thresholds(f.thresholds, oof[f.fold] if oof else None, task, f.fold) for f in folds]
    thresholds = bagging.resolve_thresholds(rule, per_fold, None, task)
    if gradcam_dir is not None:
        write_gradcam(folds, images, grays, inputs, gradcam_dir, data.resize, gradcam_method, gradcam_layer)
    return {
        "task": task, "n_images": len(grays), "folds": [f.fold for f in folds], "threshold_rule": threshold,
        "fusion": fusion, **study,
        "age": age, "predicted_age": float(images[PRED_AGE].mean()) if PRED_AGE in images else None,
        "targets": {
            target: {"probability": float(patient[prob_column(target)]), "threshold": float(thresholds[target]),
                     "hnp": bool(patient[prob_column(target)] >= thresholds[target])}
            for target in report_targets(task)
        },
    }


def film_views(views: Sequence[str] | None, films: int, fusion: str) -> list[int]:
    """The view id of each film (`hnp.levels.view_id`): a fusion model needs one view per image, in order.

    Args:
        views: the views given (--views), or None.
        films: how many images were given.
        fusion: the run's `model.fusion`.
    """
    if fusion == "none":
        return []
    if views is None or len(views) != films:
        raise HnpError(f"--views: a fusion run ({fusion}) needs the view of each image, {films} given in image "
                       f"order (one of {', '.join(VIEWS)}), got {'none' if views is None else len(views)}")
    return [view_id(view) for view in views]


def fused_study(folds: Sequence[Any], inputs: torch.Tensor, view_ids: list[int], device: torch.device) -> dict:
    """The patient's films as one study batch, and each film's pooling weight (the mean over the fold models).

    Args:
        folds: the fold checkpoints (fusion models).
        inputs: the preprocessed films (N, C, S, S).
        view_ids: each film's view id.
        device: where the models run.
    """
    views = torch.tensor([view_ids])
    mask = torch.ones_like(views, dtype=torch.bool)
    weights = torch.stack([fold.model.to(device).fuse(inputs.to(device), views.to(device), mask.to(device))
                           .weights[0].float().cpu() for fold in folds]).mean(dim=0)
    return {"batch": {"image": inputs, "view": views, "mask": mask, "key": ["study"]},
            "film_weights": [round(float(w), 6) for w in weights]}


def write_gradcam(folds: Sequence[Any], images: pd.DataFrame, grays: Sequence[np.ndarray], inputs: torch.Tensor,
                  out_dir: Path, resize: str, method: str, layer: str | None) -> pd.DataFrame:
    """One bagged map per image and level into `out_dir` (index.csv; label is -1: unknown)."""
    rows = [
        {"key": key, "patient": "", "level": target, "output": output, "rank": i + 1,
         "probability": float(images.loc[i, prob_column(target)]), "label": -1}
        for target, output in map_targets(folds[0].config.model.task).items()
        for i, key in enumerate(images[KEY])
    ]
    by_key = {key: (gray, inputs[i].numpy()) for i, (key, gray) in enumerate(zip(images[KEY], grays, strict=True))}
    layers = resolve_layers(folds[0].model, layer, tuple(inputs.shape[1:]))
    cams = [ClassActivationMap(fold.model, method, layers) for fold in folds]
    return export_gradcam(cams, pd.DataFrame(rows), by_key.__getitem__, out_dir, resize=resize)


def format_table(result: dict[str, Any]) -> str:
    """The result as a fixed-width table a person reads."""
    lines = [f"{'level':<7} {'probability':>11} {'threshold':>9}  HNP"]
    for name, row in result["targets"].items():
        lines.append(f"{name:<7} {row['probability']:>11.3f} {row['threshold']:>9.3f}  {'yes' if row['hnp'] else 'no'}")
    footer = f"{result['n_images']} image(s), {len(result['folds'])} fold model(s) bagged"
    if result["predicted_age"] is not None:
        footer += f"; predicted age {result['predicted_age']:.0f}"
        footer += f" (given {result['age']:g})" if result["age"] is not None else ""
    return "\n".join([*lines, footer])
