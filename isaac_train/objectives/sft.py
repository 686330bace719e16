"""objective=sft: next-token cross-entropy over the label tokens, divided by the step's global label count."""

from __future__ import annotations

from .base import Objective


class SFT(Objective):
    name = "sft"

    def count(self, batch) -> int:
        return batch.num_label_tokens

    def micro_step(self, strategy, batch, scale):
        out = strategy.forward_backward(batch.model_inputs(), scale)
        return out.loss_sum.detach(), None
