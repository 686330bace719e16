"""Model FLOPs of a training step, and MFU.

Per packed batch, counting multiply-adds as 2 FLOPs:
- decoder matmuls: 2 * P_dec * T forward, where P_dec counts the decoder's weight-matrix parameters (attention,
  MLP, LM head; not embeddings) and T the real (non-padding) tokens; backward 2x that again for weight gradients
  and 2x for activation gradients: 6 * P_dec * T when the decoder trains, 4 * P_dec * T when it is frozen but the
  gradient flows through it (projector or vision training), 2 * P_dec * T otherwise;
- decoder attention: 4 * L * d_head * H * sum_docs(n_doc^2) / 2 forward (causal, per document), x3 with backward;
- vision tower: the same on its own patch tokens: 2/6 * P_vis * N_patches (6 when it trains), and attention
  4 * L_v * d_v * sum_images(n_img^2) (bidirectional, per image), x3 when it trains;
- projector: 2/6 * P_proj * N_merged.
MFU = FLOPs / step time / the device's peak (dense bf16) FLOP/s, reported only where the peak is known.
"""

from __future__ import annotations

import torch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def matmul_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def step_flops(model_parts: dict, batch, train_decoder: bool, train_vision: bool, train_projector: bool) -> float:
    """FLOPs of forward+backward for one PackedBatch (see the module docstring for the formula)."""
    cu = batch.cu_seqlens.tolist()
    padding = batch.layout.padding if batch.layout is not None else frozenset()
    docs = [b - a for i, (a, b) in enumerate(zip(cu[:-1], cu[1:], strict=True)) if i not in padding]
    tokens = sum(docs)  # padding tails are not work worth counting (attention skips them)
    grads_flow = train_decoder or train_vision or train_projector
    dec_mult = 6 if train_decoder else (4 if grads_flow else 2)
    flops = dec_mult * model_parts["decoder_params"] * tokens
    flops += (3 if grads_flow else 1) * 4 * model_parts["decoder_attn_dim"] * sum(n * n for n in docs) / 2
    grids = batch.image_grid_hw.tolist()
    if grids:
        patches = [h * w for h, w in grids]
        vis_mult = 6 if train_vision else 2
        flops += vis_mult * model_parts["vision_params"] * sum(patches)
        flops += (3 if train_vision else 1) * 4 * model_parts["vision_attn_dim"] * sum(n * n for n in patches)
        flops += (6 if train_projector else 2) * model_parts["projector_params"] * sum(patches) / 4
    return float(flops)


def model_parts(isaac) -> dict:
    """Sizes the FLOPs formula needs, from an IsaacForConditionalGeneration."""
    cfg = isaac.config
    t, v = cfg.text_config, cfg.vision_config
    emb = isaac.model.vision_embedding
    return {
        "decoder_params": matmul_params(isaac.model.layers) + isaac.lm_head.weight.numel(),
        "decoder_attn_dim": t.num_hidden_layers * t.num_attention_heads * t.head_dim,
        "vision_params": matmul_params(emb[0]),
        "vision_attn_dim": v.num_hidden_layers * v.hidden_size,
        "projector_params": matmul_params(emb[1]) + matmul_params(emb[3]),
    }


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None
