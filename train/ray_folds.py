"""Ray orchestration: every fold is a Ray Train `TorchTrainer` (DDP over `workers_per_fold` workers), and the
folds run side by side, at most `max_concurrent_folds` at once: the driver calls each fold's `fit()` from its own
thread (`fit_fold`). Train V2's `fit()` only waits on the fold's controller actor, so a thread is all a fold
needs on the driver: no Tune trial process per fold, and the fold folders are written where the run folder is.
Fault tolerance:
- each epoch rank 0 reports the fold folder (best.pt, history.csv, val_predictions.parquet, state.pt) as a Ray
  checkpoint, persisted under `ray.storage_path` (a local folder or a cloud URI);
- a failed worker group is restarted up to `ray.max_failures` times and resumes from `ray.train.get_checkpoint()`,
  so a crash costs at most the epoch in progress;
- relaunching the same experiment (same name and storage) resumes it: finished folds (their folder complete in
  the run folder) are not started again, and Ray Train V2 restores each unfinished fold's latest checkpoint;
- a fold that fails for good is reported by name after the other folds finish.

The fold folders are written by the driver; each fold's W&B run and its log go to the run folder from the node
its rank 0 runs on, so on several machines the run folder should be shared storage (or W&B off).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hnp.config import ExperimentConfig, build_dataclass, config_to_dict
from hnp.errors import HnpError
from hnp.shard_format import Dataset, fold_split
from train.console import RayOutputToFile
from train.fusion import build_fold_loader
from train.loop import FoldContext, train_fold
from train.progress import RESTARTED, FoldReporter, ProgressDisplay, start_board
from train.wandb_log import fold_run_id, log_epoch, start_fold_run

log = logging.getLogger("hnp.train")
# Our named actors (the progress boards) live here, so a tool on the same cluster can find a run's board.
RAY_NAMESPACE = "hnp"
REPO_ROOT = Path(__file__).resolve().parents[1]


def fold_dir(out_dir: Path, fold: int) -> Path:
    """The run contract's folder of one fold."""
    return out_dir / f"fold{fold}"


def fold_finished(path: Path, epochs: int) -> bool:
    """A fold is done when its best.pt exists and history.csv records all epochs."""
    history = path / "history.csv"
    return (path / "best.pt").is_file() and history.is_file() and len(pd.read_csv(history)) >= epochs


def fold_splits(cfg: ExperimentConfig, fold: int) -> tuple[list[str], list[str]]:
    """(training splits, validation split) of a fold: train on the other folds, validate on this one."""
    return [fold_split(k) for k in range(cfg.folds) if k != fold], [fold_split(fold)]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: one rank of one fold (its loaders, resume, the loop, reports to Ray and W&B)."""
    cfg = build_dataclass(ExperimentConfig, config["experiment"], prefix="")
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fold, shards, out_dir = int(config["fold"]), Path(config["shards"]), Path(config["out"])
    context = ray.train.get_context()  # Ray: this worker's place in the fold's worker group
    ctx = FoldContext(fold=fold, rank=context.get_world_rank(), world_size=context.get_world_size(),
                      device=ray.train.torch.get_device())
    train_splits, val_splits = fold_splits(cfg, fold)
    loader_args = {"rank": ctx.rank, "world_size": ctx.world_size, "seed": cfg.train.seed, "device": str(ctx.device)}
    # study batches for a fusion model, image batches otherwise
    train_loader = build_fold_loader(cfg, shards, train_splits, training=True, **loader_args)
    val_loader = build_fold_loader(cfg, shards, val_splits, training=False, **loader_args)
    work_dir = Path(tempfile.mkdtemp(prefix=f"hnp-fold{fold}-rank{ctx.rank}-"))
    checkpoint = ray.train.get_checkpoint()  # Ray: the latest reported checkpoint after a restart or relaunch
    if checkpoint is not None:
        checkpoint.to_directory(str(work_dir))
    run = start_fold_run(cfg, fold, out_dir) if ctx.rank == 0 else None
    reporter = FoldReporter(config["progress_board"], fold, cfg.train.epochs) if ctx.rank == 0 else None

    def report(row: dict[str, float], path: Path) -> None:
        log_epoch(run, row)
        # Ray: every rank reports; rank 0 attaches the fold folder, which Ray copies to storage_path.
        try:
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(path)) if ctx.rank == 0
                             else None)
        except OSError as err:  # the copy to storage: a full or read-only disk, a lost mount
            raise HnpError(storage_failure(config["storage"], fold, int(row["epoch"]), err)) from err

    try:
        train_fold(cfg, work_dir, train_loader, val_loader, ctx, on_epoch_end=report, dataset=config["dataset"],
                   reporter=reporter, state_shown_as=_stored_name(checkpoint, "state.pt"))
    finally:
        if run is not None:
            run.finish()
        shutil.rmtree(work_dir, ignore_errors=True)  # every epoch's files went to ray.storage_path with its report


def storage_failure(storage: str, fold: int, epoch: int, err: OSError) -> str:
    """The message for a checkpoint that could not be stored: where, why, and what still holds."""
    return (f"ray.storage_path {storage}: could not store fold{fold}'s epoch-{epoch} checkpoint there "
            f"({err.strerror or err}); the fold's last stored checkpoint is intact: free space there (or set "
            "ray.storage_path to another place) and relaunch to resume from it")


def _stored_name(checkpoint: Any, member: str) -> str | None:
    """Where a restored checkpoint's file is stored (its path under ray.storage_path), for messages about it."""
    return None if checkpoint is None else f"{checkpoint.path.rstrip('/')}/{member}"


def fit_fold(config: dict[str, Any]) -> None:
    """One fold, on the driver (in its own thread): build its TorchTrainer, fit it, and copy its last checkpoint
    into the run folder. Raises what `fit()` raises when the fold fails for good."""
    cfg = build_dataclass(ExperimentConfig, config["experiment"], prefix="")
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fold = int(config["fold"])
    resources = {"CPU": cfg.ray.cpus_per_worker, **({"GPU": cfg.ray.gpus_per_worker} if cfg.ray.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        # Ray: DDP over workers_per_fold workers; fractional GPUs let several folds share a device.
        scaling_config=ScalingConfig(num_workers=cfg.ray.workers_per_fold, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources),
        # Ray: the same name + storage on a relaunch makes Train V2 restore the fold's latest checkpoint.
        run_config=RunConfig(name=f"{cfg.name}-fold{fold}", storage_path=config["storage"],
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise HnpError(f"fold{fold}: training ended without a checkpoint")
    result.checkpoint.to_directory(str(fold_dir(Path(config["out"]), fold)))


@dataclass(frozen=True)
class FoldOutcome:
    fold: int
    status: str  # "trained", "already finished" or "failed"
    error: str = ""


def train_folds(cfg: ExperimentConfig, dataset: Dataset, out_dir: Path, address: str | None = None,
                verbose: bool = False) -> list[FoldOutcome]:
    """Train every unfinished fold with Ray, at most `cfg.ray.max_concurrent_folds` at once, with one progress
    display for all of them.

    Args:
        cfg: the experiment config (its fold count checked against the dataset's: `train.cli.check_folds`).
        dataset: the shards (`hnp.shard_format.read_dataset`), readable from every worker.
        out_dir: the run folder; fold{k}/ folders land in it.
        address: a Ray cluster to join; None joins RAY_ADDRESS when set (as under `ray job submit`),
            else starts Ray on this machine.
        verbose: let Ray's and the workers' own output through to the console; otherwise it goes to
            `<out_dir>/logs/ray.log` (`train.console`), named here at the start and with any error.

    Returns:
        One outcome per fold; failed folds carry their error.
    """
    out_dir = out_dir.resolve()
    pending = [k for k in range(cfg.folds) if not fold_finished(fold_dir(out_dir, k), cfg.train.epochs)]
    outcomes = {k: FoldOutcome(k, "already finished") for k in range(cfg.folds) if k not in pending}
    for k in outcomes:
        log.info("fold%d: already finished in %s, not retrained", k, fold_dir(out_dir, k))
    if pending:
        ray_log = out_dir / "logs" / "ray.log"
        redirect = not verbose and _CONSOLE.acquire(blocking=False)
        if not verbose and not redirect:
            log.warning("another training in this process has the console: Ray's output of this one goes where "
                        "that one's goes, not to %s", ray_log)
        try:
            with RayOutputToFile(ray_log, enabled=redirect) as output:
                if output.enabled:
                    log.info("training fold%s %s; Ray's own output goes to %s (-v shows it here)",
                             "s" if len(pending) > 1 else "", ", ".join(map(str, pending)), ray_log)
                outcomes.update(_train_with_ray(cfg, dataset, out_dir, pending, address, output, ray_log))
        finally:
            if redirect:
                _CONSOLE.release()
    return [outcomes[k] for k in range(cfg.folds)]


# The descriptors 1 and 2 are the process's. Two trainings in threads of one process (a test's, a notebook's) that
# both redirected them would each restore what it found: the one that started second and ended last would point
# the console into the first one's log for good. So only one at a time redirects them.
_CONSOLE = threading.Lock()


def _train_with_ray(cfg: ExperimentConfig, dataset: Dataset, out_dir: Path, pending: list[int], address: str | None,
                    output: RayOutputToFile, ray_log: Path) -> dict[int, FoldOutcome]:
    """Join or start Ray, fit the pending folds under one progress display, record the restarts."""
    started_here = _init_ray(cfg, address)
    try:
        name = progress_board_name(cfg, out_dir)
        board = start_board(name)
        display = ProgressDisplay(board, pending, cfg.train.epochs, output.console,
                                  live=output.live and output.enabled)
        with display, output.logging_to(display):
            outcomes = _run_folds(cfg, dataset, out_dir, pending, name, display, ray_log)
        record_resumes(board, out_dir)
        return outcomes
    finally:
        if started_here:  # flush the workers' logs now, not at interpreter exit after our own output
            import ray

            ray.shutdown()


FAULTS_FILE = "faults.jsonl"


def record_resumes(board: Any, out_dir: Path) -> list[dict[str, Any]]:
    """Log each time a fold started from a checkpoint in this launch; the restarts after a worker failure are
    also appended to `<out_dir>/faults.jsonl`: a fault survived is recorded, never a silent restart.

    Returns:
        the restarts after a failure.
    """
    import ray

    faults = []
    for event in ray.get(board.resumes.remote()):
        failure = event["event"] == RESTARTED
        log.log(logging.WARNING if failure else logging.INFO, "fold%d %s: resumed after epoch %d (the epochs "
                "checkpointed before are kept, none is trained twice)", event["fold"], event["event"],
                event["after_epoch"])
        faults += [event] if failure else []
    if faults:
        with open(out_dir / FAULTS_FILE, "a") as handle:
            handle.writelines(json.dumps(fault) + "\n" for fault in faults)
    return faults


def progress_board_name(cfg: ExperimentConfig, out_dir: Path) -> str:
    """The progress board's Ray name: the experiment and its run folder (two runs on one cluster never mix)."""
    return f"{cfg.name}-{fold_run_id(cfg, 0, out_dir).rsplit('-', 1)[-1]}"


def _init_ray(cfg: ExperimentConfig, address: str | None) -> bool:
    """Connect to Ray; True when this call started (or joined) it, so the caller also ends the connection."""
    import math

    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        _ray_init(address=address, namespace=RAY_NAMESPACE)  # None reads RAY_ADDRESS; a job ships its own code
        return True
    # A local Ray: the workers import this repository's packages from its root, installed or not.
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # Declare at least the CPUs the configured concurrency asks for, so a small machine runs the folds
    # side by side (time-shared) instead of leaving the last ones waiting forever for a free CPU.
    fold_cpus = cfg.ray.workers_per_fold * cfg.ray.cpus_per_worker
    wanted = math.ceil(min(cfg.folds, cfg.ray.max_concurrent_folds) * fold_cpus)
    # The dashboard serves Ray's State API, which each fold's PlacementGroupCleaner (Ray Train V2) polls every
    # second to see whether the fold's controller is alive; without it every poll fails with a warning, and a
    # dead controller's placement group would never be cleaned up. On this machine only, with token auth.
    # address="local": a new Ray of our own, never one another program left running on this machine.
    _ray_init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
              num_cpus=max(os.cpu_count() or 1, wanted), runtime_env={"env_vars": {"PYTHONPATH": python_path}},
              namespace=RAY_NAMESPACE)
    return True


def _ray_init(**kwargs: object) -> None:
    """`ray.init`, with its failures (a cluster out of reach, a local start timed out) worded for the user."""
    import ray

    try:
        ray.init(**kwargs)
    except Exception as err:  # Ray raises bare Exception, ConnectionError or RuntimeError here
        address = kwargs.get("address") or os.environ.get("RAY_ADDRESS")
        where = "a local Ray" if address == "local" else f"the Ray cluster at {address}"
        raise HnpError(f"could not start or join {where}: {err}. On a busy machine, run it again; "
                       "to use a cluster, pass --address or set RAY_ADDRESS") from err


def _run_folds(cfg: ExperimentConfig, dataset: Dataset, out_dir: Path, folds: list[int], board: str,
               display: ProgressDisplay, ray_log: Path) -> dict[int, FoldOutcome]:
    """Fit the folds, `max_concurrent_folds` threads at a time; a fold that fails is reported when it fails and
    the others go on."""
    storage = cfg.ray.storage_path or str(out_dir / "ray")
    base = {"experiment": config_to_dict(cfg), "shards": str(dataset.folder.resolve()), "dataset": dataset.identity,
            "out": str(out_dir), "storage": storage, "progress_board": board}
    pool = ThreadPoolExecutor(max(1, cfg.ray.max_concurrent_folds), thread_name_prefix="hnp-fold")
    futures = {pool.submit(fit_fold, {**base, "fold": fold}): fold for fold in folds}
    outcomes = {}
    try:
        for future in as_completed(futures):
            fold = futures[future]
            error = future.exception()
            if error is None:
                outcomes[fold] = FoldOutcome(fold, "trained")
                continue
            outcomes[fold] = FoldOutcome(fold, "failed", _error_line(error))
            display.mark_failed(fold)
            log.error("fold%d failed: %s\n%s\n(Ray's own output: %s)", fold, outcomes[fold].error,
                      str(error).strip(), ray_log)
    finally:
        # An interrupt leaves the other folds' threads waiting on Ray: don't wait for them here, the Ray shutdown
        # that follows ends their fits.
        pool.shutdown(wait=False, cancel_futures=True)
    return outcomes


def _error_line(error: BaseException) -> str:
    """The innermost message of a Ray error chain, on one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
