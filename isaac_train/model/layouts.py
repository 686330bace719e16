"""Perceptron's two checkpoint layouts and the mapping between them and our module names.

Isaac-0.1 stores the text stack flat under `model.` (`model.embed_tokens`, `model.layers.L`, `model.norm`);
Isaac-0.2 nests it under `model.text_model.`. Vision (`model.vision_embedding.{0,1,3}`) and `lm_head` are the
same in both. Our modules use the 0.1 names; 0.2 names are mapped on load and written back on save when the
config says `checkpoint_layout="0.2"`.
"""

from __future__ import annotations

import re

import torch

TEXT_PARTS = ("embed_tokens.", "layers.", "norm.")
# Applied by transformers' from_pretrained (regex -> replacement) to every checkpoint key.
LOAD_KEY_MAPPING = {r"^model\.text_model\.": "model.", r"^text_model\.": ""}


def to_layout(state_dict: dict[str, torch.Tensor], layout: str, prefixed: bool = True) -> dict[str, torch.Tensor]:
    """Rename our (0.1-named) keys for `layout`. `prefixed`: keys start with `model.` (the LM-head model) or not
    (the bare IsaacModel)."""
    if layout == "0.1":
        return dict(state_dict)
    if layout != "0.2":
        raise ValueError(f"unknown checkpoint_layout {layout!r}; use '0.1' or '0.2'")
    head = "model." if prefixed else ""
    pattern = re.compile("^" + re.escape(head) + "(" + "|".join(re.escape(p) for p in TEXT_PARTS) + ")")
    return {pattern.sub(head + r"text_model.\1", k): v for k, v in state_dict.items()}


def from_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of either layout to ours (0.1 names); drops `rotary_emb` buffers some exports carry."""
    out = {}
    for key, value in state_dict.items():
        if "rotary_emb." in key:
            continue
        for pattern, repl in LOAD_KEY_MAPPING.items():
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def load_state_dict_any_layout(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a full state dict of either Perceptron layout strictly (no missing, no unexpected keys)."""
    model.load_state_dict(from_layout(state_dict), strict=True)
