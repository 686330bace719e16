"""No silent hangs: every rank says where it is, and a rank that stops responding is named.

`Watchdog.beat(step)` at the start of every step
- re-arms faulthandler: a step (data, forward, backward, collectives, saving) that has not ended after
  `strategy.timeout_s` + a minute dumps every thread's stack to stderr and exits with code 1, so a stalled rank
  leaves by itself instead of holding its node;
- records "step, time" under `isaac/heartbeat/<rank>` in the process group's store (torchrun's rendezvous
  store, which outlives any one rank).
When a collective fails (a peer died, or it timed out after `strategy.timeout_s`), `explain()` turns the error
into one that names the ranks that are behind or gone, from those heartbeats.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import sys
import time
from collections.abc import Iterator

import torch.distributed as dist

from .setup import DistEnv

logger = logging.getLogger(__name__)
GRACE_S = 60  # beyond the collective timeout, so that the collective's own error (naming ranks) comes first


class RankFailure(RuntimeError):
    """A collective failed because another rank stopped responding or exited; the message names it."""


class Watchdog:
    def __init__(self, env: DistEnv, timeout_s: float) -> None:
        self.env, self.timeout_s = env, timeout_s
        self.store = None
        if env.distributed:
            with contextlib.suppress(Exception):
                self.store = dist.distributed_c10d._get_default_store()

    def beat(self, step: int) -> None:
        faulthandler.dump_traceback_later(self.timeout_s + GRACE_S, exit=True, file=sys.stderr)
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.set(self._key(self.env.rank), f"{step} {time.time():.3f}")

    def stop(self) -> None:
        faulthandler.cancel_dump_traceback_later()

    def _key(self, rank: int) -> str:
        return f"isaac/heartbeat/{rank}"

    def positions(self) -> dict[int, tuple[int, float] | None]:
        """rank -> (step it last started, when) from the store; None for a rank that never reported."""
        out: dict[int, tuple[int, float] | None] = {}
        for rank in range(self.env.world_size):
            out[rank] = None
            with contextlib.suppress(Exception):
                if self.store.check([self._key(rank)]):
                    step, when = self.store.get(self._key(rank)).decode().split()
                    out[rank] = (int(step), float(when))
        return out

    def report(self) -> str:
        if self.store is None:
            return "no heartbeats available"
        positions = self.positions()
        known = [p[0] for p in positions.values() if p is not None]
        front = max(known, default=0)
        now = time.time()
        behind = [f"rank {r} last started step {p[0]} {now - p[1]:.0f} s ago" if p else f"rank {r} never reported"
                  for r, p in positions.items() if p is None or p[0] < front]
        if not behind:
            return f"every rank started step {front}; one of them exited or stalled inside it"
        return "; ".join(behind) + f" (the others are at step {front})"

    @contextlib.contextmanager
    def explain(self) -> Iterator[None]:
        """Re-raise a failed collective as RankFailure naming the ranks that are behind (distributed only)."""
        try:
            yield
        except Exception as err:
            if not self.env.distributed or not _is_collective_error(err):
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise RankFailure(
                f"rank {self.env.rank}: a collective failed ({first}): {self.report()}. Look at that rank's log "
                f"for its error; a collective waits at most strategy.timeout_s={self.timeout_s:g} s.") from err
        finally:
            self.stop()


def _is_collective_error(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset",
                                   "Timed out", "timed out"))
