"""Save a trained model as a Hugging Face directory (LoRA merged), with its processor files.

The full exporter (any strategy's checkpoint, adapter export, verification) is isaac-export; this is what the
trainer writes at the end of a run (`run.export=true`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..model import IsaacForConditionalGeneration
from ..processing.processor import IsaacProcessor


def merged_model(model: torch.nn.Module) -> IsaacForConditionalGeneration:
    """A plain IsaacForConditionalGeneration: LoRA merged into a copy when the model is a peft model."""
    if isinstance(model, IsaacForConditionalGeneration):
        return model
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    raise TypeError(f"cannot export a {type(model).__name__}")


def export_hf(model: torch.nn.Module, processor: IsaacProcessor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    plain = merged_model(model)
    plain.save_pretrained(out)
    processor.save_pretrained(out)
    return out
