"""What the loop optimises, behind one seam: `objective=sft|dpo` (configs/objective/).

The loop (train/loop.py) keeps its shape for every objective; an objective decides

    pairs                          what the loader makes of a sample (False: one document; True: a preference
                                   pair, two documents packed together in one row)
    setup(strategy, make_frozen, data)
                                   what it needs besides the policy (a reference model; reference log-probs
                                   computed in one pass over `data`, a RunData)
    count(batch) -> int            this micro-batch's share of the step's normaliser (label tokens, pairs)
    micro_step(strategy, batch, scale) -> (loss sum, stats)
                                   forward + backward of one micro-batch (`scale`: world / global count);
                                   both returned on the device, not read
    stat_names, metrics(sums, count) -> dict
                                   what it reports, from the step's sums over micro-batches and ranks

so that the step still reads the device once (train_step). The next objective is one more module here.
"""

from __future__ import annotations

from typing import Any

from .base import Objective, RunData


def make_objective(cfg: Any) -> Objective:
    """The Objective of `objective.name` (the config is validated: config/schema.py)."""
    name = cfg.objective.name
    if name == "sft":
        from .sft import SFT

        return SFT()
    if name == "dpo":
        from .dpo import DPO

        return DPO(cfg)
    raise ValueError(f"objective={name!r}: choose sft or dpo")


__all__ = ["Objective", "RunData", "make_objective"]
