"""What the loop optimises, behind one seam: `objective=sft|dpo|grpo` (configs/objective/).

The loop (train/loop.py) keeps its shape for every objective; an objective decides

    pairs                          what the loader makes of a sample (False: one document; True: a preference
                                   pair, two documents packed together in one row)
    prompts, next_micro_batches(strategy, batches, n)
                                   prompts instead of samples, and the step's packed micro-batches made from them
                                   (grpo: the rollout; default: the loader's next n batches)
    setup(strategy, make_frozen, data)
                                   what it needs besides the policy (a reference model; reference log-probs
                                   computed in one pass over `data`, a RunData)
    count(batch) -> int            this micro-batch's share of the step's normaliser (label tokens, pairs)
    micro_step(strategy, batch, scale) -> (loss sum, stats)
                                   forward + backward of one micro-batch (`scale`: world / global count);
                                   both returned on the device, not read
    stat_names, metrics(sums, count) -> dict
                                   what it reports, from the step's sums over micro-batches and ranks
    step_metrics(), step_rows()    host figures of the step (rollout timings) and rows to write (rollouts)
    state_dict(), load_state_dict(state)
                                   what a checkpoint keeps for an exact resume (a rollout still being optimised)

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
    if name == "grpo":
        from .grpo import GRPO

        return GRPO(cfg)
    raise ValueError(f"objective={name!r}: choose sft, dpo or grpo")


__all__ = ["Objective", "RunData", "make_objective"]
