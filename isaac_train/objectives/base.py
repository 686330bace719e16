"""The objective seam's base class (see objectives/__init__.py)."""

from __future__ import annotations

from typing import Any

import torch


class Objective:
    """Base: what the loop asks of an objective."""

    name = "base"
    pairs = False  # the loader makes preference pairs (two documents packed together) instead of samples
    stat_names: tuple[str, ...] = ()  # per-step sums the objective reports (summed over micro-batches and ranks)

    def setup(self, strategy: Any, make_frozen: Any) -> None:
        """After the strategy is set up: build what else the objective needs (a reference model)."""

    def count(self, batch: Any) -> int:
        """This micro-batch's part of the step's normaliser: the loss is the sum over micro-batches and ranks of
        `micro_step`'s loss sums divided by the sum of these counts."""
        raise NotImplementedError

    def micro_step(self, strategy: Any, batch: Any, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward one micro-batch (on the device); `scale` = world size / the global count.
        Returns its loss sum and its `stat_names` sums as device tensors (not read)."""
        raise NotImplementedError

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """metrics.jsonl entries from the step's summed stats and the global count."""
        return {}

    def evaluate(self, strategy: Any, batches: Any, device: Any) -> dict[str, float] | None:
        """Held-out metrics on eval batches (in place of the eval loss); None: the token loss (train/evaluate.py)."""
        return None
