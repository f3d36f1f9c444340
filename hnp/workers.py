"""Worker processes that end with the process they work for.

A pool worker waits for its next task on a pipe whose both ends it holds (multiprocessing hands a queue over
whole), and a forkserver's worker is the forkserver's child, which lives as long as any of its children. So when
the owner is SIGKILLed (the OOM killer's usual choice: the largest process), nothing tells its workers, and they
wait for good, holding their memory: seen here with `hnp phantom`'s pool and a torch DataLoader's forkserver
workers, asleep on their task pipes after the kill. torch's own check compares the worker's parent PID, which is the
forkserver's. Each worker therefore watches its owner and exits the moment it has ended.

    ProcessPoolExecutor(n, initializer=_init_worker, initargs=(os.getpid(), ...))  # _init_worker: exit_with(owner)
"""

from __future__ import annotations

import os
import select
import threading


def exit_with(owner: int) -> None:
    """End this process as soon as process `owner` has ended, however it ended; call it when a worker starts.

    Args:
        owner: the PID of the process the worker works for (`os.getpid()` there, passed to the worker).
    """
    try:
        handle = os.pidfd_open(owner)
    except ProcessLookupError:  # ended before this worker started
        os._exit(1)
    except (AttributeError, OSError):  # not Linux 5.3 or newer: nothing to watch with; the worker works on as before
        return
    threading.Thread(target=_exit_when_ended, args=(handle,), name=f"exit-with-{owner}", daemon=True).start()


def _exit_when_ended(handle: int) -> None:
    select.select([handle], [], [])  # a process's pidfd turns readable when the process ends
    os._exit(1)  # at once: whatever the worker is doing is for nobody now
