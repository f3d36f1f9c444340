"""Train the cross-validation folds with Ray (one TorchTrainer per fold, several folds at once).

    hnp train --config configs/tiny.yaml --shards shards/ --out runs/tiny
    hnp train --config configs/paper.yaml --shards /data/shards --set train.epochs=20 --set ray.max_concurrent_folds=2

Joins the Ray cluster named by --address or RAY_ADDRESS (as under `ray job submit`), else starts Ray locally.
Relaunching with the same --out resumes: finished folds are skipped, unfinished ones continue from their last
epoch. `python train/run_folds.py` takes the same flags.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hnp.config import ExperimentConfig, config_to_dict, load_config, save_config
from hnp.errors import HnpError

log = logging.getLogger("hnp.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `hnp train` and `train/run_folds.py`."""
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML (e.g. configs/paper.yaml)")
    parser.add_argument("--shards", type=Path, required=True, help="shard folder written by `hnp shard`")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")


def run(args: argparse.Namespace) -> int:
    """Train every fold; exit status 1 when a fold failed for good (the others still finish)."""
    from train.ray_folds import train_folds

    cfg = load_config(args.config, args.overrides)
    out_dir = args.out or Path("runs") / cfg.name
    if not (args.shards / "dataset.json").is_file():
        raise HnpError(f"{args.shards}: no dataset.json; is this a shard folder written by `hnp shard`?")
    _check_same_experiment(cfg, out_dir)
    _check_fold_shards(args.shards, cfg.folds)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    outcomes = train_folds(cfg, args.shards, out_dir, address=args.address)
    for outcome in outcomes:
        log.info("fold%d: %s%s", outcome.fold, outcome.status, f" ({outcome.error})" if outcome.error else "")
    failed = [f"fold{o.fold}" for o in outcomes if o.status == "failed"]
    if failed:
        log.error("failed for good: %s; relaunch the same command to retry them", ", ".join(failed))
        return 1
    log.info("all %d folds finished in %s", len(outcomes), out_dir)
    return 0


def _check_fold_shards(shards: Path, folds: int) -> None:
    """Every fold's tars must be there before Ray starts: a missing one would fail each fold's workers, retried."""
    from pipeline.dataset import split_shards

    split_shards(shards, [f"fold{k}" for k in range(folds)])


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
