"""Throughput over the steps since the last logged one: tokens/s, images/s, MFU, packing, data wait."""

from __future__ import annotations

from typing import Any

from .flops import step_flops


class StepWindow:
    """`add(...)` after every step; `record(...)` at a log step returns the averages and starts a new window."""

    def __init__(self, parts: dict, trains: tuple[bool, bool, bool], peak_flops: float | None,
                 data_wait_s: float) -> None:
        self.parts, self.trains, self.peak = parts, trains, peak_flops
        self._reset(data_wait_s)

    def _reset(self, data_wait_s: float) -> None:
        self.tokens, self.images, self.flops, self.time, self.fill, self.n = 0, 0, 0.0, 0.0, 0.0, 0
        self.wait_at_start = data_wait_s

    def add(self, micro: list, tokens: int, seconds: float) -> None:
        """One step: its micro-batches, the tokens of all ranks, its wall time."""
        self.tokens += tokens
        self.images += sum(int(b.image_grid_hw.shape[0]) for b in micro)
        self.flops += sum(step_flops(self.parts, b, *self.trains) for b in micro)
        self.time += seconds
        self.fill += sum(b.fill for b in micro) / len(micro)
        self.n += 1

    def record(self, data_wait_s: float) -> dict[str, Any]:
        out = {"tokens_per_s": self.tokens / self.time, "images_per_s": self.images / self.time,
               "packing_efficiency": self.fill / self.n, "step_time_s": self.time / self.n,
               "data_wait_s": data_wait_s - self.wait_at_start}
        if self.peak:
            out["mfu"] = self.flops / self.time / self.peak
        self._reset(data_wait_s)
        return out
