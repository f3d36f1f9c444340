"""Train the cross-validation folds with Ray (one TorchTrainer per fold, several folds at once).

    hnp train --config tiny --shards shards/ --out runs/tiny
    hnp train --config paper --shards /data/shards --set train.epochs=20 --set ray.max_concurrent_folds=2

Joins the Ray cluster named by --address or RAY_ADDRESS (as under `ray job submit`), else starts Ray locally.
Relaunching with the same --out resumes: finished folds are skipped, unfinished ones continue from their last
epoch. `python train/run_folds.py` takes the same flags.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from hnp.config import ExperimentConfig, config_to_dict, load_config, save_config
from hnp.errors import HnpError
from hnp.files import atomic_write_text
from hnp.shard_format import DATASET_FILE, Dataset, fold_split, read_dataset

log = logging.getLogger("hnp.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `hnp train` and `train/run_folds.py`."""
    parser.add_argument("--config", required=True,
                        help="experiment config: a built-in name (paper, local-3090, tiny) or a YAML file")
    parser.add_argument("--shards", type=Path, required=True, help="shard folder written by `hnp shard`")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")


def run(args: argparse.Namespace) -> int:
    """Train every fold; exit status 1 when a fold failed for good (the others still finish)."""
    from train.fusion import check_fusion_init
    from train.ray_folds import train_folds

    cfg = load_config(args.config, args.overrides)
    out_dir = args.out or Path("runs") / cfg.name
    _check_same_experiment(cfg, out_dir)
    dataset = read_dataset(args.shards)
    check_folds(cfg, dataset)
    _check_same_shards(out_dir, dataset)
    # Every fold's tars must be there before Ray starts: a missing one would fail each fold's workers, retried.
    dataset.split_shards([fold_split(k) for k in range(dataset.folds)])
    if cfg.model.fusion != "none":  # and a fusion model's study indexes (schema version 3)
        dataset.split_studies([fold_split(k) for k in range(dataset.folds)])
    if cfg.model.fusion_init:
        check_fusion_init(cfg, dataset.identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    atomic_write_text(out_dir / RUN_RECORD, json.dumps({"dataset": dataset.identity}, indent=2) + "\n")
    outcomes = train_folds(cfg, dataset, out_dir, address=args.address, verbose=getattr(args, "verbose", False))
    for outcome in outcomes:
        log.info("fold%d: %s%s", outcome.fold, outcome.status, f" ({outcome.error})" if outcome.error else "")
    failed = [f"fold{o.fold}" for o in outcomes if o.status == "failed"]
    if failed:
        log.error("failed for good: %s; relaunch the same command to retry them", ", ".join(failed))
        return 1
    log.info("all %d folds finished in %s", len(outcomes), out_dir)
    return 0


def check_folds(cfg: ExperimentConfig, dataset: Dataset) -> None:
    """The folds come from the shards: a config that counts others is refused, naming both."""
    if cfg.folds != dataset.folds:
        raise HnpError(f"the config says folds: {cfg.folds} but {dataset.folder / DATASET_FILE} holds "
                       f"{dataset.folds} folds (hnp shard --folds {dataset.folds}): set --set folds={dataset.folds} "
                       f"or shard again with --folds {cfg.folds}")


def _check_same_shards(out_dir: Path, dataset: Dataset) -> None:
    """Refuse to resume a run folder on other shards than it started on: its folds would mix two data sets."""
    record = out_dir / RUN_RECORD
    if not record.is_file():
        return
    started = json.loads(record.read_text()).get("dataset")
    if started != dataset.identity:
        raise HnpError(f"{out_dir}: this run trained on shards {started}, but {dataset.folder / DATASET_FILE} is "
                       f"{dataset.identity}; use the shards it started with or another --out")


# The run's record of the shards it trains on: {"dataset": the identity of their dataset.json}.
RUN_RECORD = "run.json"
# What a relaunch may change without invalidating finished epochs: their number, placement and logging.
RESUMABLE_CHANGES = ("train.epochs", "ray.", "wandb.")


def _check_same_experiment(cfg: ExperimentConfig, out_dir: Path) -> None:
    """Refuse to resume a run folder that was started with another config: its folds would not match."""
    saved = out_dir / "config.yaml"
    if saved.is_file():
        previous = _flatten(config_to_dict(load_config(saved)))
        changed = [key for key, value in _flatten(config_to_dict(cfg)).items()
                   if previous.get(key) != value and not key.startswith(RESUMABLE_CHANGES)]
        if changed:
            raise HnpError(f"{saved}: this run folder was started with another config (differs in "
                           f"{', '.join(changed[:5])}); use the same config or another --out")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
