"""Attention per document (what sdpa / eager do now) against one call over the row with a dense block mask (what
they did before), on the same packed row, in one process, alternating.

    python benchmarks/attention_per_document.py [--seq-len 2048] [--docs 14] [--rounds 3] [--backend sdpa]

One training step (forward + backward) of the small Isaac preset on one packed row of `--docs` documents
(lengths 60-240 tokens) and a padding tail. Prints each path's step time, their ratio and both losses (equal).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from isaac_train.model import IsaacForConditionalGeneration, attention
from isaac_train.model.packed import PackedLayout
from isaac_train.model.tiny import small_config


def dense_mask_attention(query, key, value, spec, scaling, dropout, training):
    """The old path: one call over the whole row with a (B, 1, T, T) block-diagonal (causal) mask."""
    b, _, t, _ = query.shape
    seg = torch.searchsorted(torch.tensor(spec.segments[1:]), torch.arange(b * t), right=True).view(b, t)
    mask = seg[:, :, None] == seg[:, None, :]
    if spec.causal:
        mask &= torch.ones(t, t, dtype=torch.bool).tril()
    if spec.backend == "eager":
        out = attention._eager(query, key, value, mask[:, None], scaling, dropout, training)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None], scale=scaling,
                                             enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2)


def packed_row(seq_len: int, docs: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(60, 241, (docs,), generator=gen).tolist()
    while sum(lengths) >= seq_len:
        lengths.pop()
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    tail = seq_len - cu[-1]
    cu.append(seq_len)
    ids = torch.randint(6, 480, (1, seq_len), generator=gen)
    labels = ids.clone()
    labels[0, cu[-2]:] = -100
    positions = torch.cat([torch.arange(n) for n in [*lengths, tail]])[None, :, None].expand(1, seq_len, 3)
    layout = PackedLayout.from_inputs(cu, labels, frozenset({len(cu) - 2}) if tail else frozenset())
    return {"input_ids": ids, "labels": labels, "position_ids": positions.contiguous(), "packed": layout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--docs", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and path")
    parser.add_argument("--backend", choices=("sdpa", "eager"), default="sdpa")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = IsaacForConditionalGeneration(small_config(attn_backend=args.backend)).train()
    inputs = packed_row(args.seq_len, args.docs)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        out = model(**inputs)
        out.loss.backward()
        return float(out.loss)

    per_document = attention._per_segment
    paths = {"per document": per_document, "dense mask": dense_mask_attention}
    times: dict[str, list[float]] = {name: [] for name in paths}
    losses: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            attention._per_segment = fn
            losses[name] = step()  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    attention._per_segment = per_document
    docs = len(inputs["packed"].cu_seqlens) - 2
    print(f"small Isaac, {args.backend}, one row of {args.seq_len} tokens ({docs} documents + padding tail), "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.steps} steps")
    for name in paths:
        print(f"  {name:12s}: {sorted(times[name])[len(times[name]) // 2]:.3f} s/step, loss {losses[name]:.6f}")
    ratio = sorted(times["dense mask"])[args.rounds // 2] / sorted(times["per document"])[args.rounds // 2]
    print(f"  dense mask / per document: {ratio:.2f}x; |loss difference| "
          f"{abs(losses['dense mask'] - losses['per document']):.1e}")


if __name__ == "__main__":
    main()
