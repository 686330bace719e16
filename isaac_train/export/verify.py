"""What the writer and the adapter export share to prove a directory: the error they raise, the fixed sample and
the logits they compare (kept apart from both so that neither imports the other)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from torch import nn

# logits of the export against the model as trained: exact for the same weights, merge rounding for LoRA
MERGE_TOLERANCE = 1e-4


class ExportVerificationError(RuntimeError):
    """The written directory does not reproduce the trained model; nothing was put at the output path."""


def fixed_sample(processor) -> dict[str, torch.Tensor]:
    """A multimodal prompt that exercises vision, projector and decoder: two images of different shapes."""
    yy, xx = np.mgrid[0:48, 0:80]
    first = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
    second = np.stack([yy * 7 % 256, xx % 256, np.full_like(xx, 128)], -1).astype(np.uint8)[:40, :32]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                                             {"type": "image"}, {"type": "text", "text": "the two shapes."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=prompt, images=[PIL.Image.fromarray(first), PIL.Image.fromarray(second)])
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


@torch.no_grad()
def logits_of(model: nn.Module, sample: dict[str, torch.Tensor]) -> torch.Tensor:
    """fp32 logits of `model` (put in eval mode) on `sample`."""
    model.eval()
    return model(**sample).logits.float()
