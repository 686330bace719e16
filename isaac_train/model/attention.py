"""Attention backends for packed rows: which tokens may see which, and the kernels that honour it.

transformers' Qwen3 and SigLIP2 attention modules hand their `attention_mask` argument, untouched, to the
function registered under `config._attn_implementation`. We register `isaac` there and pass an
`AttentionSpec` as that argument: it says which documents (decoder) or images (vision tower) the tokens belong
to, so one function can run SDPA or eager attention per document, PyTorch's varlen flash kernel, or flash-attn's
varlen function. Attention never crosses documents or images in any backend, and no backend builds a (row, row)
or (patches, patches) mask in training: sdpa and eager run each document (image) on its own tokens, documents of
equal length batched together, and skip padding tails. Only decoding against a KV cache uses a dense mask (its
queries are few).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_FUNCTION_NAME = "isaac"
RUNNABLE_BACKENDS = ("sdpa", "eager", "varlen", "flash_attn")


@dataclass
class AttentionSpec:
    """Who attends to whom in one attention call, for every backend.

    Attributes:
        backend: resolved backend, one of RUNNABLE_BACKENDS.
        causal: decoder (True) or vision tower (False).
        segments: (n_segments + 1,) boundaries of documents/images over the flattened (B*T) tokens, on the host
            (a list): sdpa and eager slice each segment out by them. A segment never crosses a row.
        skip: indices of segments whose attention is not computed (padding tails): their output is zero.
        cu_seqlens: the same boundaries as an int32 tensor on the device, for the varlen kernels.
        max_seqlen: longest segment, for the varlen kernels.
        dense_mask: bool (B, 1, Q, K), True where attention is allowed: decoding against a KV cache only.
    """

    backend: str
    causal: bool
    segments: list[int] | None = None
    skip: frozenset[int] = frozenset()
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    dense_mask: torch.Tensor | None = None

    @classmethod
    def for_segments(cls, backend: str, causal: bool, segments: list[int], device: torch.device,
                     skip: frozenset[int] = frozenset()) -> AttentionSpec:
        """Spec for packed segments given on the host; the device copy is made only for the varlen kernels."""
        lengths = [b - a for a, b in zip(segments[:-1], segments[1:], strict=True)]
        cu = None
        if backend in ("varlen", "flash_attn"):
            cu = torch.tensor(segments, dtype=torch.int32).to(device, non_blocking=True)
        return cls(backend=backend, causal=causal, segments=segments, skip=skip, cu_seqlens=cu,
                   max_seqlen=max(lengths, default=0))


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the kernel for `requested` (a config `attn_backend`); raise if it cannot run here.

    `auto` means: flash-attn's varlen function if installed, else PyTorch's varlen flash kernel, on CUDA with
    bf16/fp16 activations; SDPA per document otherwise. An explicit backend that cannot run raises. The
    activations' dtype is autocast's when autocast is on (fp32 embeddings then reach bf16 projections).
    """
    if device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    half = dtype in (torch.bfloat16, torch.float16)
    if requested == "auto":
        if device.type == "cuda" and half:
            return "flash_attn" if flash_attn_available() else "varlen"
        return "sdpa"
    if requested in ("sdpa", "eager"):
        return requested
    if requested in ("varlen", "flash_attn"):
        if device.type != "cuda" or not half:
            raise RuntimeError(
                f"attn_backend={requested!r} needs a CUDA device and bf16/fp16 activations, but the model runs on "
                f"{device.type} in {dtype}. Set attn_backend=sdpa (or auto), or run on a GPU with bf16."
            )
        if requested == "flash_attn" and not flash_attn_available():
            raise RuntimeError(
                "attn_backend='flash_attn' needs the flash-attn package (pip install 'isaac-train[flash]'). "
                "Set attn_backend=varlen to use PyTorch's own flash kernel instead."
            )
        return requested
    raise ValueError(f"Unknown attn_backend={requested!r}; choose one of auto, {', '.join(RUNNABLE_BACKENDS)}")


def padded_causal_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, past_len: int, device: torch.device
) -> torch.Tensor:
    """Dense (B, 1, Q, past+Q) bool mask for (left- or right-) padded rows, with a KV cache of `past_len`.

    A padding query sees only itself, so no softmax row is empty (an empty row gives NaN, and NaN in a
    value vector poisons every later layer even where its weight is zero).
    """
    k_len = past_len + q_len
    q_pos = torch.arange(past_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None]).expand(batch, q_len, k_len)
    if attention_mask is not None:
        keep = attention_mask[:, -k_len:].to(device=device, dtype=torch.bool)
        mask = mask & keep[:, None, :]
        mask = mask | (k_pos[None, None, :] == q_pos[None, :, None]) & ~keep[:, past_len:, None]
    return mask[:, None]


def _per_segment(query, key, value, spec: AttentionSpec, scaling, dropout, training) -> torch.Tensor:
    """sdpa / eager attention of each segment on its own tokens: (B, H, T, D) inputs -> (B, T, H, D) output.

    Segments of equal length are stacked into one call (images of one size, many tiny documents); segments in
    `spec.skip` (padding) are not computed and give zeros. Cost is sum(n_i^2), never (B*T)^2.
    """
    b, h, t, d = query.shape
    bounds = spec.segments
    lengths = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    # (B, H, T, D) -> (B*T, H, D) (a view: transformers' q/k/v are transposed (B, T, H, D) projections), cut into
    # segments with one split, whose backward is one concatenation (slicing each segment out would zero-fill a
    # whole-row gradient per segment)
    flat = [x.transpose(1, 2).reshape(b * t, x.shape[1], d).split(lengths) for x in (query, key, value)]
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        if i not in spec.skip and length:
            by_length.setdefault(length, []).append(i)
    pieces: dict[int, torch.Tensor] = {}
    for members in by_length.values():
        if len(members) == 1:
            q, k, v = (parts[members[0]].transpose(0, 1)[None] for parts in flat)
        else:
            q, k, v = (torch.stack([parts[i] for i in members]).transpose(1, 2) for parts in flat)
        out = _attend(q, k, v, spec, scaling, dropout, training).transpose(1, 2)  # (n, L, H, D)
        pieces.update(zip(members, out.unbind(0), strict=True))
    ordered = [pieces[i] if i in pieces else query.new_zeros(n, h, d) for i, n in enumerate(lengths)]
    return torch.cat(ordered).view(b, t, h, d)


def _attend(q, k, v, spec: AttentionSpec, scaling, dropout, training) -> torch.Tensor:
    """One batch of whole segments (n, H, L, D), causal or not, with no mask tensor beyond a causal (L, L)."""
    if spec.backend == "eager":
        mask = None
        if spec.causal:
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        return _eager(q, k, v, mask, scaling, dropout, training)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=spec.causal,
                                          scale=scaling, enable_gqa=k.shape[1] != q.shape[1])


def _eager(query, key, value, mask, scaling, dropout, training):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, value)


def _varlen(query, key, value, spec: AttentionSpec, scaling):
    """Run a varlen flash kernel on (B, H, T, D) tensors whose rows are flattened into one token axis."""
    b, h, t, d = query.shape
    q = query.transpose(1, 2).reshape(b * t, h, d)
    k = key.transpose(1, 2).reshape(b * t, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * t, value.shape[1], d)
    cu = spec.cu_seqlens.to(device=q.device, dtype=torch.int32)
    if spec.backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(
            q, k, v, cu, cu, spec.max_seqlen, spec.max_seqlen, softmax_scale=scaling, causal=spec.causal
        )
    else:
        from torch.nn.attention.varlen import varlen_attn

        window = (-1, 0) if spec.causal else (-1, -1)
        out = varlen_attn(
            q, k, v, cu, cu, spec.max_seqlen, spec.max_seqlen,
            scale=scaling, window_size=window, enable_gqa=k.shape[1] != h,
        )
    return out.view(b, t, h, d)


# Compiled layers (model.compile) call attention as it is: its inputs describe this batch's documents (host lists,
# a per-segment loop), which compiled code would specialise on and recompile for at every new batch.
@torch.compiler.disable
def isaac_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: AttentionSpec,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: (B, H, Q, D) inputs -> (B, Q, H, D) output."""
    spec = attention_mask
    if not isinstance(spec, AttentionSpec):
        raise TypeError(
            "Isaac layers expect an AttentionSpec as attention_mask; build inputs through IsaacModel.forward"
        )
    if spec.backend in ("varlen", "flash_attn"):
        if dropout:
            raise ValueError("attention dropout is not supported by the varlen backends; set it to 0")
        return _varlen(query, key, value, spec, scaling), None
    if spec.dense_mask is None:
        if spec.segments is None:
            raise ValueError(f"attention backend {spec.backend!r} needs segments or a dense mask")
        return _per_segment(query, key, value, spec, scaling, dropout, module.training), None
    if spec.backend == "eager":
        out = _eager(query, key, value, spec.dense_mask, scaling, dropout, module.training)
    else:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=spec.dense_mask, dropout_p=dropout, scale=scaling,
            enable_gqa=key.shape[1] != query.shape[1],
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_FUNCTION_NAME, isaac_attention_forward)
