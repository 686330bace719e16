"""LoRA exported as a PEFT adapter directory for the base checkpoint it was trained on.

The adapter holds the LoRA weights and, as `modules_to_save`, every module that trained in full beside them
(projector, unfrozen vision blocks), so `PeftModel.from_pretrained(base, adapter_dir)` gives the trained model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .verify import MERGE_TOLERANCE, ExportVerificationError, logits_of

PREFIX = "base_model.model."


def fully_trained_modules(model: nn.Module) -> list[str]:
    """Names (relative to the Isaac model) of modules with trainable parameters that are not LoRA weights."""
    names = set()
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" not in name:
            names.add(name.removeprefix(PREFIX).rsplit(".", 1)[0])
    return sorted(names)


def save_adapter(model: nn.Module, out: Path, base: Path, cfg, dtype: torch.dtype) -> nn.Module:
    """Write `model`'s adapter (LoRA + fully trained modules) for `base` into `out`; returns the adapter model."""
    from peft import get_peft_model

    from ..model import IsaacForConditionalGeneration

    config = copy.deepcopy(model.peft_config["default"])
    config.modules_to_save = fully_trained_modules(model) or None
    config.base_model_name_or_path = str(base)
    fresh = get_peft_model(IsaacForConditionalGeneration.from_pretrained(base, dtype=torch.float32), config)
    trained = model.state_dict()
    state = {}
    for key, value in fresh.state_dict().items():
        if ".original_module." in key:
            state[key] = value  # the base's weights, untouched
            continue
        source = key.replace(".modules_to_save.default.", ".")
        if source not in trained:
            raise ExportVerificationError(f"the adapter needs {key} but the trained model has no {source}")
        state[key] = trained[source]
    fresh.load_state_dict(state, strict=True)
    fresh.to(dtype)
    fresh.save_pretrained(out)
    return fresh


def verify_adapter(trained: nn.Module, out: Path, base: Path, sample: dict, dtype: torch.dtype) -> float:
    """Base + adapter (reloaded from `out`, fp32 compute) against the model as trained."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32),
                                         str(out)).float()
    reference = logits_of(trained, sample)
    diff = float((logits_of(reloaded, sample) - reference).abs().max())
    tolerance = (MERGE_TOLERANCE if dtype == torch.float32 else 2e-2) * max(1.0, float(reference.abs().max()))
    if diff > tolerance:
        raise ExportVerificationError(f"base + adapter reloaded from {out} differ from the trained model by "
                                      f"{diff:.3e} (tolerance {tolerance:.1e})")
    return diff
