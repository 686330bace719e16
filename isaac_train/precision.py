"""Frozen weights in the compute dtype: with `train.precision=bf16` what does not train is held in bf16.

Trainable parameters keep fp32 master weights (what the optimizer steps); frozen ones (LoRA's base, a frozen
vision tower or decoder, embeddings, lm_head) are held in bf16, except norm weights. For Isaac-2B under LoRA that
is 4.89 GB instead of 9.78 GB of frozen weights on every GPU.
"""

from __future__ import annotations

import torch
from torch import nn


def frozen_dtype(precision: str) -> torch.dtype:
    """The dtype frozen weights are held in: bf16 when the forward runs under bf16 autocast (`train.precision=bf16`
    on CPU or on a GPU with bf16, as Strategy.autocast decides), else fp32. Trainable weights are always fp32."""
    if precision != "bf16" or (torch.cuda.is_available() and not torch.cuda.is_bf16_supported()):
        return torch.float32
    return torch.bfloat16


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm layers (torch's, SigLIP2's, Qwen3's): their frozen weights stay fp32."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or type(module).__name__.endswith(
        ("RMSNorm", "LayerNorm"))


def embedding_output_in_fp32(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an embedding held in bf16: under autocast its rows come out in fp32, as they did from fp32
    weights (the residual stream, rope tables and image features follow the embeddings' dtype). The upcast is exact,
    so the forward equals the one with fp32 weights holding the same (bf16) values. Outside autocast (a model cast
    to bf16 throughout, e.g. for export) nothing changes."""
    if output.dtype == torch.bfloat16 and torch.is_autocast_enabled(output.device.type):
        return output.float()
    return output


def _cast_to_bf16(param: nn.Parameter) -> None:
    param.data = param.data.to(torch.bfloat16)  # the same Parameter object: tied weights stay tied


def hold_frozen_in_bf16(model: nn.Module, cast=_cast_to_bf16) -> int:
    """Hold the frozen floating-point parameters of `model` in bf16, in place; returns how many were cast.

    Under bf16 autocast a matmul casts an fp32 weight to bf16 anyway, so a bf16 weight gives the same result when
    the fp32 one held bf16-representable values (pretrained Perceptron checkpoints are bf16); a seeded fp32 init is
    rounded once (the checkpoint then holds those bf16 bits). Kept in fp32: trainable parameters (the optimizer's
    fp32 master weights) and the weights of norm layers (a few KB a layer): CPU autocast does not cast LayerNorm
    (fp32 input and bf16 weight fail there), and Qwen3's q/k RMSNorm would multiply its bf16 input by a bf16 weight
    in bf16 instead of fp32. Embeddings held in bf16 get `embedding_output_in_fp32`. With these, loss and gradients
    equal the fp32-weight run bit for bit when the weights are bf16-representable
    (tests/distributed/test_frozen_bf16.py).
    `cast(param)` converts one parameter (ZeRO-3 passes one that converts its partition)."""
    count = 0
    for module in model.modules():
        if is_norm(module):
            continue
        held = [p for p in module.parameters(recurse=False)
                if not p.requires_grad and p.is_floating_point() and p.dtype != torch.bfloat16]
        for param in held:
            cast(param)
        count += len(held)
        if held and isinstance(module, nn.Embedding):
            module.register_forward_hook(embedding_output_in_fp32)
    return count


def parameter_bytes(model: nn.Module) -> dict[tuple[str, bool], int]:
    """Bytes of parameters per (dtype name, trainable), for the whole model also when sharded (global sizes)."""
    out: dict[tuple[str, bool], int] = {}
    for p in model.parameters():
        key = (str(p.dtype).removeprefix("torch."), bool(p.requires_grad))
        out[key] = out.get(key, 0) + getattr(p, "ds_numel", p.numel()) * p.element_size()
    return out


def describe_parameter_memory(model: nn.Module) -> str:
    """One line for the start-up log: "parameters: 5.10 GB bf16 frozen, 0.01 GB fp32 frozen, 0.07 GB fp32 trainable"
    (whole-model sizes; frozen first)."""
    short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}

    def size(n: int) -> str:
        return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"

    parts = sorted(parameter_bytes(model).items(), key=lambda kv: (kv[0][1], kv[0][0]))
    return "parameters: " + ", ".join(f"{size(n)} {short.get(dtype, dtype)} {'trainable' if trainable else 'frozen'}"
                                      for (dtype, trainable), n in parts)
