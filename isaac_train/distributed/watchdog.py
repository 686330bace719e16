"""No silent hangs: every rank says where it is, and a rank that stops responding is named.

`Watchdog.beat(step)` at the start of every step, and before its evaluation and its checkpoint
- re-arms faulthandler: a phase (data + forward + backward + collectives, evaluation, saving) that has not ended
  after `strategy.timeout_s` + 15 s dumps every thread's stack to stderr and exits with code 1, so a stalled rank
  leaves by itself (showing where it was stuck) instead of holding its node;
- records "step, time" under `isaac/<attempt>/heartbeat/<rank>` in the process group's store (torchrun's rendezvous
  store, which outlives any one rank).
Inside `explain()`, any error a rank raises is recorded under `isaac/<attempt>/error/<rank>`; when a collective fails (a
peer died, or it timed out after `strategy.timeout_s`) the error is re-raised naming the other ranks' errors, or
the ranks that reported none (stalled, or killed), with where their heartbeats last were.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import re
import sys
import time
from collections.abc import Iterator

import torch.distributed as dist

from ..dist_env import DistEnv

logger = logging.getLogger(__name__)
GRACE_S = 15  # beyond the collective timeout, so that the others' collective error (naming this rank) comes first
REPORT_WAIT_S = 3.0


class RankFailure(RuntimeError):
    """A collective failed because another rank stopped responding or exited; the message names it."""


class Watchdog:
    def __init__(self, env: DistEnv, timeout_s: float) -> None:
        self.env, self.timeout_s = env, timeout_s
        # keys of this attempt only: torchrun's store outlives a restart of the workers (--max-restarts)
        self.prefix = f"isaac/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.store = None
        if env.distributed:
            with contextlib.suppress(Exception):
                self.store = dist.distributed_c10d._get_default_store()

    def beat(self, step: int) -> None:
        faulthandler.dump_traceback_later(self.timeout_s + GRACE_S, exit=True, file=sys.stderr)
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.set(f"{self.prefix}/heartbeat/{self.env.rank}", f"{step} {time.time():.3f}")

    def stop(self) -> None:
        faulthandler.cancel_dump_traceback_later()

    def positions(self) -> dict[int, tuple[int, float] | None]:
        """rank -> (step it last started, when) from the store; None for a rank that never reported."""
        out: dict[int, tuple[int, float] | None] = {}
        for rank in range(self.env.world_size):
            beat = self._get(f"{self.prefix}/heartbeat/{rank}")
            out[rank] = (int(beat.split()[0]), float(beat.split()[1])) if beat else None
        return out

    def report(self) -> str:
        """What the other ranks recorded: their errors, or (none recorded) where they last were."""
        if self.store is None:
            return "no heartbeats available"
        deadline = time.time() + REPORT_WAIT_S  # the others' collectives fail too: give them a moment to say why
        errors: dict[int, str] = {}
        while True:
            errors = {r: e for r in range(self.env.world_size) if r != self.env.rank
                      and (e := self._get(f"{self.prefix}/error/{r}")) is not None}
            if len(errors) == self.env.world_size - 1 or time.time() > deadline:
                break
            time.sleep(0.2)
        positions, now = self.positions(), time.time()
        parts = [f"rank {r} failed: {e}" for r, e in sorted(errors.items())]
        for r, p in positions.items():
            if r != self.env.rank and r not in errors:
                where = f"last started step {p[0]} {now - p[1]:.0f} s ago" if p else "never reported a step"
                parts.append(f"rank {r} reported no error: stalled or killed ({where})")
        return "; ".join(parts) or "every other rank is fine"

    def _get(self, key: str) -> str | None:
        with contextlib.suppress(Exception):
            if self.store.check([key]):
                return self.store.get(key).decode()
        return None

    @contextlib.contextmanager
    def explain(self) -> Iterator[None]:
        """Record this rank's error for the others; re-raise a failed collective as RankFailure naming the ranks
        that caused it (distributed only)."""
        try:
            yield
        except Exception as err:
            if not self.env.distributed:
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            if self.store is not None:
                with contextlib.suppress(Exception):
                    self.store.set(f"{self.prefix}/error/{self.env.rank}", f"{type(err).__name__}: {first}")
            if not _is_collective_error(err):
                raise
            what = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo's "[file.cc:553] " prefix
            raise RankFailure(f"a collective failed ({what}): {self.report()}. A collective waits at most "
                              f"strategy.timeout_s={self.timeout_s:g} s.") from err
        finally:
            self.stop()


def _is_collective_error(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset",
                                   "Timed out", "timed out"))
