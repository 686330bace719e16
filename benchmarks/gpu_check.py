"""GPU checks for the model (run where a GPU is lent; prints figures, asserts agreement).

    python benchmarks/gpu_check.py [--layers 28] [--seq 8192]

1. varlen (and flash-attn if installed) vs SDPA block mask, bf16, on a packed row of a mid-size random model:
   max |logit difference|.
2. Isaac-2B-shaped model (Qwen3-1.7B dims + SigLIP2-so400m dims), bf16 weights, random init, one packed row of
   `--seq` decoder tokens with images: forward+backward time, tokens/s, peak memory, and MFU with the FLOPs
   formula below (6 * params * tokens for matmuls, plus attention 12 * layers * hidden * sum(doc_len^2)/2
   causal for the decoder and 12 * layers * hidden * sum(patches_i^2) for the vision tower, each counted on
   its own tokens; H100 dense bf16 peak 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import time

import torch

import isaac_train
from isaac_train.model.config import IsaacConfig

PEAK_TFLOPS = 989.0


def isaac_2b_config(layers: int, backend: str) -> IsaacConfig:
    return IsaacConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1e6,
                         max_position_embeddings=40960),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           patch_size=16, num_patches=256, pixel_shuffle_scale_factor=2),
        pixel_shuffle_scale=2, video_patch_size=16, attn_backend=backend,
    )


def packed_row(seq: int, image_grids: list[tuple[int, int]], docs: int, image_token: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    image_tokens = [h * w // 4 for h, w in image_grids]
    text = seq - sum(image_tokens)
    per_doc = text // docs
    ids, lengths, img = [], [], 0
    for d in range(docs):
        n_text = per_doc if d < docs - 1 else text - per_doc * (docs - 1)
        doc = torch.randint(10, 150000, (n_text,), generator=gen).tolist()
        if img < len(image_tokens):
            doc = doc[:8] + [image_token] * image_tokens[img] + doc[8:]
            img += 1
        ids += doc
        lengths.append(len(doc))
    assert img == len(image_tokens), "more images than documents"
    patches = torch.randn(sum(h * w for h, w in image_grids), 768, generator=gen)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids], device=device), "labels": torch.tensor([ids], device=device),
        "cu_seqlens": cu.to(device), "pixel_values": patches.to(device, torch.bfloat16),
        "image_grid_hw": torch.tensor(image_grids, device=device), "_lengths": lengths,
    }


def flops(cfg: IsaacConfig, params_text: int, params_vision: int, lengths: list[int], grids) -> float:
    tokens = sum(lengths)
    patches = [h * w for h, w in grids]
    t, v = cfg.text_config, cfg.vision_config
    dense = 6 * params_text * tokens + 6 * params_vision * sum(patches) / 1.0
    attn_text = 12 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * sum(n * n for n in lengths) / 2
    attn_vision = 12 * v.num_hidden_layers * v.hidden_size * sum(p * p for p in patches)
    return dense + attn_text + attn_vision


def check_agreement(device: str) -> None:
    cfg = isaac_2b_config(layers=4, backend="sdpa")
    cfg.text_config.vocab_size = 4096
    model = isaac_train.IsaacForConditionalGeneration(cfg).to(device, torch.bfloat16).eval()
    batch = packed_row(2048, [(32, 32), (16, 48)], 4, cfg.image_token_id, device)
    batch.pop("_lengths"), batch.pop("labels")
    backends = ["varlen"] + (["flash_attn"] if isaac_train.model.attention.flash_attn_available() else [])
    with torch.no_grad():
        ref = model(**batch).logits.float()
        for backend in backends:
            model.config.attn_backend = backend
            diff = (model(**batch).logits.float() - ref).abs()
            print(f"[agreement] {backend} vs sdpa (bf16, 4 layers, 2048 tokens, 4 docs): max {diff.max():.3e} "
                  f"mean {diff.mean():.3e}")


def bench_2b(layers: int, seq: int, device: str, steps: int = 5) -> None:
    cfg = isaac_2b_config(layers, backend="varlen")
    model = isaac_train.IsaacForConditionalGeneration(cfg).to(device, torch.bfloat16).train()
    params_vision = sum(p.numel() for p in model.model.vision_embedding.parameters())
    params_text = sum(p.numel() for p in model.parameters()) - params_vision - model.model.embed_tokens.weight.numel()
    grids = [(40, 40), (32, 48), (24, 64), (48, 32)]
    batch = packed_row(seq, grids, 8, cfg.image_token_id, device)
    lengths = batch.pop("_lengths")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(f"[2B] step {step} loss {out.loss.item():.4f} {times[-1]:.3f}s")
    dt = sorted(times[1:])[len(times[1:]) // 2]
    f = flops(cfg, params_text, params_vision, lengths, grids)
    print(f"[2B] layers {layers} seq {seq} docs {len(lengths)} images {len(grids)}: {dt:.3f}s/step "
          f"{seq / dt:,.0f} tok/s, MFU {f / dt / 1e12 / PEAK_TFLOPS:.1%}, "
          f"peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--seq", type=int, default=8192)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device")
    print(torch.cuda.get_device_name(), torch.__version__)
    check_agreement("cuda")
    bench_2b(args.layers, args.seq, "cuda")


if __name__ == "__main__":
    main()
