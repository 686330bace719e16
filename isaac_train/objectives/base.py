"""The objective seam's base class (see objectives/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RunData:
    """What an objective may read before the first step (setup): `batches_of(split)` is one pass over the "train"
    or "eval" data's packed batches, in order, every rank reading all of them (None: no such split); `sources` the
    shard specs (train/data prepare_data), for fingerprints."""

    batches_of: Callable[[str], Iterable[Any] | None]
    sources: dict[str, Any] = field(default_factory=dict)
    processor: Any = None  # the run's IsaacProcessor (grpo generates with it)


class Objective:
    """Base: what the loop asks of an objective."""

    name = "base"
    pairs = False  # the loader makes preference pairs (two documents packed together) instead of samples
    prompts = False  # the loader yields prompts (PromptBatch), which next_micro_batches turns into packed batches
    row_images: tuple = ()  # grpo: each step_rows row's first image (for the W&B table)
    empty_steps = False  # a step may have a count of 0 (nothing to learn from): it updates nothing, never an error
    stat_names: tuple[str, ...] = ()  # per-step sums the objective reports (summed over micro-batches and ranks)

    def setup(self, strategy: Any, make_frozen: Any, data: RunData | None = None) -> None:
        """After the strategy is set up, before a checkpoint is resumed: build what else the objective needs (a
        reference model, reference log-probabilities computed over `data`)."""

    def next_micro_batches(self, strategy: Any, batches: Iterator[Any], n: int) -> list[Any]:
        """The step's `n` micro-batches (host PackedBatches) from the loader's iterator."""
        return [next(batches) for _ in range(n)]

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

    def step_metrics(self) -> dict[str, float]:
        """Host-side figures of the last step on this rank (grpo: rollout timings), for metrics.jsonl."""
        return {}

    def step_rows(self) -> list[dict[str, Any]] | None:
        """This rank's rows describing the last step's data (grpo: its rollouts) to gather and write; None when the
        step made none (the same on every rank)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for an exact resume (per rank: plain containers and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s result (an empty dict: a checkpoint made before the objective kept any)."""

    def evaluate(self, strategy: Any, batches: Any, device: Any) -> dict[str, float] | None:
        """Held-out metrics on eval batches (in place of the eval loss); None: the token loss (train/evaluate.py)."""
        return None
