"""Run the real trainer (`python -m tests.reliability.inject OVERRIDES`, also under torchrun) with faults injected
from environment variables. Test-only: the library has no fault hooks. Every fault is real where it lands: a
SIGKILL of this process, a NaN in the loss the backward really sees, a rank that really sleeps or raises.

    FAULT_KILL_SAVE="SAVE:EVENT[:RANK]"  SIGKILL at the EVENT-th line executed inside the SAVE-th checkpoint save
                                         (counted in isaac_train's own code), on RANK (default 0)
    FAULT_COUNT_SAVES=FILE               write the number of line events of every save to FILE.rankR (JSON list)
    FAULT_NAN="RANK:STEP[,STEP...]"      multiply that rank's loss by NaN in those steps
    FAULT_STALL="RANK:STEP"              that rank sleeps for an hour at the start of that step's forward
    FAULT_RAISE="RANK:STEP"              that rank raises at that step's forward
    FAULT_SLOW_SAVE=SECONDS              every save sleeps this long after writing its files (signals land mid-save)
    FAULT_SLOW_STEP=SECONDS              every forward sleeps this long (signals land mid-step)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

PACKAGE = str(Path(__file__).resolve().parents[2] / "isaac_train")
RANK = int(os.environ.get("RANK", "0"))
_step = {"now": 0}


def _rank_steps(value: str) -> tuple[int, set[int]]:
    rank, steps = value.split(":")
    return int(rank), {int(s) for s in steps.split(",")}


def _install() -> None:
    from isaac_train.checkpoint import integrity, manager
    from isaac_train.distributed import watchdog
    from isaac_train.model import modeling

    beat = watchdog.Watchdog.beat

    def beat_and_remember(self, step):
        _step["now"] = step
        return beat(self, step)

    watchdog.Watchdog.beat = beat_and_remember

    forward = modeling.IsaacForConditionalGeneration.forward
    nan = _rank_steps(os.environ["FAULT_NAN"]) if os.environ.get("FAULT_NAN") else None
    stall = _rank_steps(os.environ["FAULT_STALL"]) if os.environ.get("FAULT_STALL") else None
    fail = _rank_steps(os.environ["FAULT_RAISE"]) if os.environ.get("FAULT_RAISE") else None
    slow_step = float(os.environ.get("FAULT_SLOW_STEP", "0"))

    def faulty_forward(self, *args, **kwargs):
        training = self.training and kwargs.get("labels") is not None
        if training and stall and RANK == stall[0] and _step["now"] in stall[1]:
            print(f"FAULT: rank {RANK} stalls at step {_step['now']}", file=sys.stderr, flush=True)
            time.sleep(3600)
        if training and fail and RANK == fail[0] and _step["now"] in fail[1]:
            raise RuntimeError(f"FAULT: rank {RANK} fails at step {_step['now']}")
        if training and slow_step:
            time.sleep(slow_step)
        out = forward(self, *args, **kwargs)
        if training and nan and RANK == nan[0] and _step["now"] in nan[1]:
            out.loss_sum = out.loss_sum * float("nan")
        return out

    modeling.IsaacForConditionalGeneration.forward = faulty_forward

    slow_save = float(os.environ.get("FAULT_SLOW_SAVE", "0"))
    if slow_save:
        digest_share = integrity.digest_share

        def slow_digest(*args, **kwargs):
            time.sleep(slow_save)
            return digest_share(*args, **kwargs)

        integrity.digest_share = slow_digest

    kill = os.environ.get("FAULT_KILL_SAVE")
    count_file = os.environ.get("FAULT_COUNT_SAVES")
    if kill or count_file:
        parts = [int(p) for p in kill.split(":")] if kill else [0, 0]
        kill_save, kill_event, kill_rank = (parts + [0])[:3]
        save = manager.CheckpointManager.save
        counts: list[int] = []

        def traced_save(self, *args, **kwargs):
            counts.append(0)
            armed = kill and len(counts) == kill_save and RANK == kill_rank

            def tracer(frame, event, arg):
                if not frame.f_code.co_filename.startswith(PACKAGE):
                    return None
                if event == "line":
                    counts[-1] += 1
                    if armed and counts[-1] == kill_event:
                        os.kill(os.getpid(), signal.SIGKILL)
                return tracer

            sys.settrace(tracer)
            try:
                return save(self, *args, **kwargs)
            finally:
                sys.settrace(None)
                if count_file:
                    Path(f"{count_file}.rank{RANK}").write_text(json.dumps(counts))

        manager.CheckpointManager.save = traced_save


if __name__ == "__main__":
    from isaac_train.distributed.lifecycle import begin

    begin()  # first, as isaac_train/train/__main__.py does
    _install()
    from isaac_train.train.cli import main

    sys.argv = ["isaac-train", *sys.argv[1:]]
    main()
