"""One progress display for the folds: each fold's rank 0 reports to a board, the driver draws the board.

    board = start_board(name)                      # driver: a named Ray actor holding every fold's latest state
    with ProgressDisplay(board, folds, epochs, stream) as display:
        ...                                        # the folds' fits: one line per fold, redrawn in place
    reporter = FoldReporter(name, fold, epochs)    # worker: reports steps and epochs to the board

On a terminal the lines are redrawn in place twice a second, with our log messages printed above them; when the
output is a pipe or a file, one plain line per fold is printed every `interval` seconds and whenever a fold
finishes an epoch. A line holds the fold's epoch, step of steps, running loss, last validation mean AUC,
images per second and the time left, e.g.

    fold2  epoch 3/4  step  61/131  loss 0.312  val AUC 0.913   41 img/s  1m52s left
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, TextIO

from hnp.errors import HnpError

REPORT_EVERY_S = 1.0  # worker side: at most one report a second (each costs a loss read and a Ray call)
REDRAW_EVERY_S = 0.5
_CLEAR_LINE = "\x1b[2K"
_UP = "\x1b[{n}F"


@dataclass(frozen=True)
class FoldState:
    """What the display shows of one fold."""

    fold: int
    status: str = "waiting"  # waiting, training, validating, done, failed
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float = math.nan  # mean training loss of the epoch so far
    val_auc: float = math.nan  # mean validation AUC of the last finished epoch
    images_per_s: float = math.nan
    done: float = 0.0  # share of the fold's work finished, 0..1
    elapsed: float = 0.0  # seconds since the fold started training in this process
    epochs_done: int = 0

    @property
    def seconds_left(self) -> float:
        if self.status == "done":
            return 0.0
        return self.elapsed * (1 - self.done) / self.done if self.done > 0 else math.nan


RESTARTED = "restarted after a worker failure"
RESUMED = "resumed from an earlier launch"


class ProgressBoard:
    """The latest state of every fold, and the resumes seen; a Ray actor between the fold workers and the driver
    (`start_board`)."""

    def __init__(self) -> None:
        self._states: dict[int, dict[str, Any]] = {}
        self._resumes: list[dict[str, Any]] = []

    def update(self, fold: int, fields: dict[str, Any]) -> None:
        self._states[fold] = {**self._states.get(fold, {}), **fields, "fold": fold}

    def resumed(self, fold: int, after_epoch: int) -> None:
        """A fold's worker group started from a checkpoint: after a failure if the fold already reported in this
        launch (its earlier workers did), else because an earlier launch left it unfinished."""
        event = RESTARTED if fold in self._states else RESUMED
        self._resumes.append({"fold": fold, "event": event, "after_epoch": after_epoch, "time": time.time()})

    def snapshot(self) -> dict[int, dict[str, Any]]:
        return dict(self._states)

    def resumes(self) -> list[dict[str, Any]]:
        return list(self._resumes)


def board_name(run_name: str) -> str:
    """The Ray actor name of a run's board (workers look it up by name)."""
    return f"hnp-progress-{run_name}"


def start_board(run_name: str) -> Any:
    """Create the run's board actor (Ray must be initialized) on this driver's node; it lives as long as this
    driver. Pinned there because the driver reads the board's record of restarts when the folds end: left to
    Ray's scheduler, a zero-CPU actor lands on any node (on a cluster, mostly a worker node), and the loss of that
    node took the record with it and failed the run after every fold had finished.

    Raises:
        HnpError: the name is taken: the same run is being trained by another driver on this cluster.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Ray: a tiny named actor with no CPU reservation, so it never waits for a free core, on the driver's node
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    board = ray.remote(num_cpus=0)(ProgressBoard)
    try:
        return board.options(name=board_name(run_name), scheduling_strategy=here).remote()
    except ValueError as err:
        raise HnpError(f"another `hnp train` of this run is running on this Ray cluster ({err})") from err


class FoldReporter:
    """Worker side: rank 0 of a fold tells the board how it is doing. Never fails the training: a board that
    cannot be reached (a driver gone, a run started outside Ray) only stops the reports.

    Args:
        run_name: the experiment name (`board_name`).
        fold: this fold.
        epochs: epochs the fold trains.
    """

    def __init__(self, run_name: str, fold: int, epochs: int) -> None:
        self._fold, self._epochs = fold, epochs
        self._board = _find_board(run_name)
        self._node = _node_id()  # where the fold's rank 0 runs (on a cluster: which node to look at)
        self._started = time.perf_counter()
        self._last = -math.inf
        self._finished = {"epochs_done": 0, "val_auc": math.nan}

    def step(self, epoch: int, step: int, steps: int, loss_sum: Any, samples: int, images: int,
             seconds: float) -> None:
        """Training step `step` of `steps` of `epoch` finished; reported at most once every REPORT_EVERY_S.

        Args:
            loss_sum: the epoch's summed loss so far, a tensor: read (a device sync) only when a report is due.
            samples: what the loss was summed over so far (images, or studies of a fusion model; this rank).
            images: images trained on this epoch so far (a study's films; this rank).
            seconds: since the epoch started.
        """
        now = time.perf_counter()
        if now - self._last < REPORT_EVERY_S and step < steps:
            return
        self._last = now
        self._send(status="training", epoch=epoch, step=step, steps=steps, loss=float(loss_sum) / max(samples, 1),
                   images_per_s=images / seconds if seconds > 0 else math.nan,
                   done=((epoch - 1) + step / max(steps, 1)) / self._epochs)

    def validating(self, epoch: int) -> None:
        self._send(status="validating", epoch=epoch, done=epoch / self._epochs)

    def resumed(self, after_epoch: int) -> None:
        """The fold starts again after `after_epoch` finished epochs (a restart or a relaunch)."""
        if self._board is not None:
            try:
                self._board.resumed.remote(self._fold, after_epoch)
            except Exception:  # noqa: BLE001 - see _send
                self._board = None

    def epoch_done(self, epoch: int, loss: float, val_auc: float, images_per_s: float) -> None:
        self._finished = {"epochs_done": epoch, "val_auc": val_auc}
        finished = epoch >= self._epochs
        self._send(status="done" if finished else "training", epoch=epoch if finished else epoch + 1, loss=loss,
                   images_per_s=images_per_s, done=epoch / self._epochs, step=0)

    def _send(self, **fields: Any) -> None:
        if self._board is None:
            return
        fields = {**self._finished, **fields, "epochs": self._epochs, "node": self._node,
                  "elapsed": time.perf_counter() - self._started}
        try:
            self._board.update.remote(self._fold, fields)
        except Exception:  # noqa: BLE001 - progress is a courtesy; training goes on without it
            self._board = None


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return None


def _find_board(run_name: str) -> Any | None:
    try:
        import ray

        return ray.get_actor(board_name(run_name))
    except Exception:  # noqa: BLE001 - no Ray, or no board: no progress reports
        return None


def format_state(state: FoldState) -> str:
    """One display line for a fold."""
    head = f"fold{state.fold}"
    if state.status == "waiting":
        return f"{head}  starting (Ray is launching its workers)"
    if state.status == "failed":
        return f"{head}  failed (see the message below)"
    epoch = f"epoch {state.epoch}/{state.epochs}" if state.epochs else "starting"
    if state.status == "validating":
        where = "validating"
    elif state.status == "done":
        where = "finished"
    else:
        width = len(str(state.steps))
        where = f"step {state.step:>{width}}/{state.steps}"
    parts = [head, epoch, where, f"loss {_number(state.loss, '.3f')}", f"val AUC {_number(state.val_auc, '.3f')}",
             f"{_number(state.images_per_s, '4.0f')} img/s"]
    if state.status != "done":
        parts.append(f"{_duration(state.seconds_left)} left")
    return "  ".join(parts)


def _number(value: float, spec: str) -> str:
    return "  -  " if value is None or math.isnan(value) else format(value, spec)


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressDisplay:
    """Driver side: draws the board's folds on `stream` until closed (a context manager).

    Args:
        board: the `start_board` actor (or anything with `snapshot.remote()`).
        folds: the folds being trained, in display order.
        epochs: epochs per fold.
        stream: where to draw (the console).
        live: redraw in place (a terminal); False prints plain lines every `interval` seconds and at each
            finished epoch (a pipe or a file).
        interval: seconds between plain lines.
    """

    def __init__(self, board: Any, folds: list[int], epochs: int, stream: TextIO, *, live: bool,
                 interval: float = 30.0) -> None:
        self._board, self._stream, self._live, self._interval = board, stream, live, interval
        self._states = {fold: FoldState(fold=fold, epochs=epochs) for fold in folds}
        self._drawn = 0  # lines of the live display currently on screen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hnp-progress", daemon=True)
        self._last_plain = time.monotonic()
        self._printed: dict[int, tuple[int, str]] = {}  # plain mode: (epochs done, line) last printed per fold

    def __enter__(self) -> ProgressDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh(final=True)

    def mark_failed(self, fold: int) -> None:
        with self._lock:
            self._states[fold] = replace(self._states[fold], status="failed")

    def write(self, text: str) -> None:
        """Print `text` (a finished line, e.g. a log message) above the live display."""
        with self._lock:
            self._erase()
            self._stream.write(text if text.endswith("\n") else text + "\n")
            self._draw()
            self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(REDRAW_EVERY_S):
            self.refresh()

    def refresh(self, final: bool = False) -> None:
        """Read the board and draw: in place, or as plain lines when due."""
        self._read_board()
        with self._lock:
            if self._live:
                self._erase()
                self._draw()
            else:
                self._print_plain(final)
            self._stream.flush()

    def _read_board(self) -> None:
        try:
            import ray

            snapshot = ray.get(self._board.snapshot.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - a slow or gone board: draw what we have
            return
        with self._lock:
            for fold, fields in snapshot.items():
                if fold in self._states and self._states[fold].status != "failed":
                    known = {k: v for k, v in fields.items() if k in asdict(self._states[fold])}
                    self._states[fold] = replace(self._states[fold], **known)

    def _erase(self) -> None:
        if self._drawn:
            self._stream.write(_UP.format(n=self._drawn) + "".join(_CLEAR_LINE + "\n" for _ in range(self._drawn))
                               + _UP.format(n=self._drawn))
            self._drawn = 0

    def _draw(self) -> None:
        if not self._live:
            return
        lines = [format_state(state) for state in self._states.values()]
        self._stream.write("".join(f"{line}\n" for line in lines))
        self._drawn = len(lines)

    def _print_plain(self, final: bool) -> None:
        """Plain lines: a fold's line as soon as it starts and each time it finishes an epoch, and every `interval`
        seconds the lines of the folds whose state changed since they were last printed."""
        due = final or time.monotonic() - self._last_plain >= self._interval
        if due:
            self._last_plain = time.monotonic()
        for fold, state in self._states.items():
            line = format_state(state)
            epochs, previous = self._printed.get(fold, (0, None))
            news = state.epochs_done > epochs or previous is None and state.status != "waiting"
            if line != previous and (due or news):
                self._stream.write(line + "\n")
                self._printed[fold] = (state.epochs_done, line)


class DisplayLogHandler(logging.Handler):
    """Sends log records through the display, so they print above its lines instead of through them."""

    def __init__(self, display: ProgressDisplay, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self._display = display
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._display.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
