"""The trainer with inject.py's faults plus one more (`python -m tests.reliability.inject_weights OVERRIDES`, also
under torchrun). Test-only: the library has no fault hooks.

    FAULT_INF_WEIGHT="RANK:STEP"   right after that rank's optimizer update in training step STEP, one trainable
                                   weight it holds (its shard under FSDP2, its fp32 partition under ZeRO) becomes
                                   inf: an update that leaves the weights non-finite while the loss and gradient
                                   norm were finite
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def poison_after_update(update: int, current_step: Callable[[], int] | None = None):
    """Set one weight to inf right after the `update`-th optimizer step of this process (counted over every
    optimizer), or with `current_step`, after the first optimizer step taken while it returns `update` (DeepSpeed's
    ZeRO steps its optimizer once at start-up, to create the state); returns the hook's handle (`.remove()`)."""
    count = {"n": 0, "done": False}

    def hook(optimizer, _args, _kwargs) -> None:
        count["n"] += 1
        if count["done"] or (current_step() if current_step else count["n"]) != update:
            return
        count["done"] = True
        params = [p for group in optimizer.param_groups for p in group["params"]]
        local = [p.to_local() if hasattr(p, "to_local") else p for p in params]  # FSDP2: this rank's shard
        target = next(t for t in local if t.numel())
        with torch.no_grad():
            target[(0,) * target.dim()] = float("inf")
        print(f"FAULT: rank {os.environ.get('RANK', '0')}: weight set to inf after update {update}", file=sys.stderr,
              flush=True)

    return register_optimizer_step_post_hook(hook)


def weights_fault_cmd(overrides: list[str], nproc: int = 0) -> list[str]:
    """inject.py's command line, running this module instead."""
    from .conftest import inject_cmd

    return [part if part != "tests.reliability.inject" else "tests.reliability.inject_weights"
            for part in inject_cmd(overrides, nproc)]


if __name__ == "__main__":
    from tests.reliability import inject

    inject._install()
    if os.environ.get("FAULT_INF_WEIGHT"):
        rank, updates = inject._rank_steps(os.environ["FAULT_INF_WEIGHT"])
        if inject.RANK == rank:
            poison_after_update(min(updates), lambda: inject._step["now"])  # the step as the loop's heartbeat says
    from isaac_train.train.cli import main

    sys.argv = ["isaac-train", *sys.argv[1:]]
    main()
