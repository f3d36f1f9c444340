"""Weights & Biases logging: one run per fold, grouped by experiment, offline unless configured otherwise.

Only scalars are logged (losses, lr, per-level AUC, img/s) and the resolved config: no images, no sample keys,
no patient pseudonyms, no code or git state. A resumed fold continues its run: the run id is derived from the
experiment name, the fold and the run folder, so a relaunch of the same experiment finds it again.

    run = start_fold_run(cfg, fold=0, run_dir=Path("runs/paper"))
    log_epoch(run, history_row)      # val/auc/L1-2 ... val/auc_mean, train/loss, val/loss, lr, img_per_s
    run.finish()

`open_run` is the one place a W&B run is created (with the privacy settings); `hnp eval` uses it for its run.

Offline runs land in `<run_dir>/wandb/offline-run-*`; `wandb sync` uploads them when the user wants to.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from hnp.config import ExperimentConfig, config_to_dict

# Keep code, git metadata and the console stream out of W&B: run folders may sit next to hospital data.
PRIVACY_ENV = {"WANDB_DISABLE_CODE": "true", "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off",
               "WANDB_SILENT": "true"}


def fold_run_id(cfg: ExperimentConfig, fold: int, run_dir: Path) -> str:
    """A W&B run id that stays the same when the same experiment (name + run folder) is relaunched."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', cfg.name)}-fold{fold}-{digest}"


def start_fold_run(cfg: ExperimentConfig, fold: int, run_dir: Path) -> Any | None:
    """Open (or resume) the fold's W&B run; None when `wandb.mode` is off.

    Args:
        cfg: the experiment config (its `wandb` section decides mode, project and entity).
        fold: the fold number, which names the run.
        run_dir: the experiment's run folder; offline files go in its `wandb/` folder.
    """
    return open_run(cfg, name=f"{cfg.name}-fold{fold}", job_type="train-fold", folder=run_dir,
                    run_id=fold_run_id(cfg, fold, run_dir), config={**config_to_dict(cfg), "fold": fold})


def open_run(cfg: ExperimentConfig, *, name: str, job_type: str, folder: Path, run_id: str | None = None,
             config: dict[str, Any] | None = None) -> Any | None:
    """A W&B run in the experiment's group, with code, git, console and requirements kept out; None when
    `wandb.mode` is off.

    Args:
        cfg: the experiment config (`wandb` mode, project, entity; `name` is the group).
        name: the run's display name.
        job_type: "train-fold" or "eval".
        folder: where the offline files go (its `wandb/` subfolder).
        run_id: a stable id to resume the same run on a relaunch; None for a new run.
        config: what to record as the run's config (scalars and the resolved experiment config only).
    """
    if cfg.wandb.mode == "off":
        return None
    import wandb

    for key, value in PRIVACY_ENV.items():
        os.environ.setdefault(key, value)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.wandb.project, entity=cfg.wandb.entity or None, group=cfg.name, name=name, id=run_id,
        resume="allow" if run_id else None, mode=cfg.wandb.mode, dir=str(folder), job_type=job_type, config=config,
        settings=wandb.Settings(save_code=False, disable_code=True, disable_git=True, console="off",
                                x_save_requirements=False),
    )


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """W&B keys for one history row: val/auc/<level>, val/auc_mean, train/loss, val/loss, lr, img_per_s."""
    metrics = {"train/loss": row["train_loss"], "val/loss": row["val_loss"], "val/auc_mean": row["val_auc_mean"],
               "lr": row["lr"], "img_per_s": row["img_per_s"], "epoch": row["epoch"]}
    for key, value in row.items():
        if key.startswith("val_auc_") and key != "val_auc_mean":
            metrics[f"val/auc/{key.removeprefix('val_auc_')}"] = value
    return metrics


def log_epoch(run: Any | None, row: dict[str, float]) -> None:
    """Log one epoch's history row at step = epoch (so a resumed run continues its curves)."""
    if run is not None:
        run.log(epoch_metrics(row), step=int(row["epoch"]))
