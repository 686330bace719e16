"""A rank's life from its first line: stop requests are honoured from the start, and a rank dies with its launcher.

`begin()` is the first thing `isaac-train` does (before Hydra, torch or the model are imported):

- SIGTERM / SIGUSR1 set the process-wide `StopFlag`. During start-up (6-20 s of imports, the process group, the
  model) the trainer checks it between phases and leaves with REQUEUE_EXIT_CODE: nothing was trained, so the last
  committed checkpoint stands (`exit_before_training`). Once training runs, the loop finishes the step,
  checkpoints and leaves with the same code (train/loop.py).
- Under torchrun (which starts every rank in a session of its own, so a kill of the launcher's process group never
  reaches them) a rank asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), and a thread watches
  for a changed parent (the signal is tied to the parent *thread*, and is lost if the parent died before it was
  asked for). A rank that outlived its launcher would go on training and committing checkpoints beside the job
  that replaces it; the last committed checkpoint is what a restart resumes, bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped on a signal, checkpointed (or nothing to save), start me again"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


class StopFlag:
    """Set by SIGTERM / SIGUSR1; the trainer checks it between start-up phases and between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.active = True
        self._previous: dict[int, Any] = {}
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers (tests, notebooks)
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def restore(self) -> None:
        """Put back the handlers that were there before (a library caller's process goes on)."""
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
        self.active = False


_flag: StopFlag | None = None


def stop_flag() -> StopFlag:
    """The process-wide stop flag, installed on first use (by `begin()` when the command line runs)."""
    global _flag
    if _flag is None or not _flag.active:
        _flag = StopFlag()
    return _flag


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


_watching: list[int] = []


def begin() -> StopFlag:
    """The first line of a rank: stop handlers in place; under torchrun, die with the launcher (once a process)."""
    flag = stop_flag()
    if under_torchrun() and not _watching:
        die_with_parent()
        _watching.append(os.getppid())
        watch_parent(_watching[0])
    return flag


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG). False where the
    call is not available (not Linux): the parent watch still ends the process."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """A daemon thread that ends this process (and its DataLoader workers) once its parent is no longer `parent`."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"isaac-train: rank {os.environ.get('RANK', '?')}: the launcher (pid {parent}) is gone; exiting with "
              "it (the last committed checkpoint stands)", file=sys.stderr, flush=True)
        kill_children()
        os._exit(1)

    thread = threading.Thread(target=watch, name="isaac-parent-watch", daemon=True)
    thread.start()
    return thread


def kill_children() -> None:
    """SIGKILL this process's multiprocessing children (DataLoader workers) before it leaves."""
    import multiprocessing

    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError, AttributeError, ValueError):
            os.kill(child.pid, signal.SIGKILL)


def record_requeue(step: int, checkpoint: Path | str | None) -> None:
    """torchrun exits 1 whatever its workers return: for the launch scripts, a rank that stops on a signal writes
    the requeue code to $ISAAC_EXIT_FILE (when set), atomically (several ranks may write the same record)."""
    path = os.environ.get("ISAAC_EXIT_FILE")
    if not path:
        return
    record = {"exit_code": REQUEUE_EXIT_CODE, "step": step,
              "checkpoint": None if checkpoint is None else str(checkpoint)}
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def exit_before_training(flag: StopFlag, where: str, checkpoint: Path | None = None, step: int = 0,
                         cleanup: Any = None) -> None:
    """Leave with REQUEUE_EXIT_CODE when a stop signal came during start-up (`where`: the phase just finished).
    Nothing has trained in this process, so there is nothing to save: `checkpoint` (the last committed one, when
    known) stands. `cleanup()` runs first (the run directory's lock is released). Returns when no signal came."""
    if flag.signal is None:
        return
    if cleanup is not None:
        with contextlib.suppress(Exception):
            cleanup()
    name = signal.Signals(flag.signal).name
    kept = f"the last committed checkpoint {checkpoint} stands" if checkpoint else "nothing was committed yet"
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"isaac-train: {rank}{name} during start-up ({where}): no step was trained, {kept}; exiting with code "
          f"{REQUEUE_EXIT_CODE} so the job can be requeued", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        record_requeue(step, checkpoint)
    kill_children()
    sys.stdout.flush()
    os._exit(REQUEUE_EXIT_CODE)  # other ranks may be inside a collective: no barrier, no teardown
