"""The reference model of a preference objective, without a second copy where none is needed.

- `adapters`: under LoRA the reference is the policy itself with its adapters disabled (peft's disable_adapter):
  the base weights, no second copy. Only when nothing else trains (model.train_projector=false,
  model.train_vision=none): disabling the adapters does not undo a trained projector's or vision tower's updates.
- `copy`: a frozen copy of the starting weights (model.pretrained, or the seeded initialisation), built by the
  same factory as the policy with everything frozen, its weights in bf16 under train.precision=bf16, and placed
  by the strategy as it places the policy (Strategy.frozen_copy: sharded under fsdp / zero3).
- `none`: reference-free losses (simpo).

Its log-probabilities come from a forward without gradients, with the same autocast and collectives on every rank
as the policy's (Strategy.forward_frozen), on the same packed inputs: the two see the same tokens and images.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def only_adapters_train(cfg: Any) -> bool:
    """Under LoRA, nothing but the adapters trains (no projector, no vision weights): only then is the policy with its
    adapters disabled the starting model."""
    m = cfg.model
    return cfg.peft.kind == "lora" and not m.train_projector and m.train_vision == "none"


def resolve_reference(setting: str, cfg: Any) -> str:
    """auto: none for simpo; the adapters disabled when only LoRA adapters train; else a frozen copy (a trained
    projector or vision tower would move an adapters-disabled reference along with the policy)."""
    if setting != "auto":
        return setting
    if cfg.objective.loss_type == "simpo":
        return "none"
    return "adapters" if only_adapters_train(cfg) else "copy"


def peft_model_of(model: nn.Module) -> nn.Module:
    from peft import PeftModel

    for module in model.modules():
        if isinstance(module, PeftModel):
            return module
    raise TypeError("objective.reference=adapters needs a LoRA model (peft=lora)")


class Reference:
    """`logps(strategy, inputs)` -> (n_groups,) the reference's per-answer log-probabilities, no gradient
    (`output(...)`: its whole forward output, per-token log-probabilities included)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.model: nn.Module | None = None

    def setup(self, strategy: Any, make_frozen: Any) -> None:
        if self.kind == "copy":
            self.model = strategy.frozen_copy(make_frozen)
        elif self.kind == "adapters":
            peft_model_of(strategy.eval_model)  # refuse early when there are no adapters

    def release(self) -> None:
        """Free the frozen copy (its log-probs were precomputed: objectives/reference_table.py)."""
        self.model = None
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def logps(self, strategy: Any, inputs: dict[str, Any]) -> torch.Tensor | None:
        out = self.output(strategy, inputs)
        return None if out is None else out.group_logps

    def output(self, strategy: Any, inputs: dict[str, Any]) -> Any:
        """The reference's forward output on `inputs` (group_logps, token_logps), None for kind none."""
        if self.kind == "none":
            return None
        if self.kind == "copy":
            return strategy.forward_frozen(self.model, inputs)
        with self.adapters_off(strategy.eval_model):  # the unwrapped model: no gradient, no DDP bookkeeping
            return strategy.forward_frozen(strategy.eval_model, inputs)

    @staticmethod
    def adapters_off(model: nn.Module) -> contextlib.AbstractContextManager:
        return peft_model_of(model).disable_adapter()
