"""Batched generation for evaluation: left-padded prompts through the KV cache, split over ranks.

    answers = generate_answers(model, processor, samples, batch_size=8, max_new_tokens=64)

Each batch goes through the processor (left padding, images per prompt) and `model.generate` (greedy or sampling,
stop at eos; the image placeholder is never generated). A greedy answer equals the sample's unbatched answer
(tests/unit/test_batched_generation.py).

On several processes each rank answers `rank_share` of the samples (`answers_on_rank`), and `merge_answers`
puts the gathered answers back in order, each sample once. With sharded weights (fsdp, zero3: `synced=True`)
every rank must run every forward, so the ranks take equally long shares (a short one is topped up with copies of
a sample whose answers are dropped) and generate with `synced_gpus` (a rank whose batch finished keeps stepping
until all have).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch

from .samples import EvalSample, content_text


def rank_share(n: int, rank: int, world: int, equal: bool = False) -> list[int | None]:
    """The sample indices rank `rank` answers: every world-th one from `rank`. With `equal` (sharded weights)
    every rank gets ceil(n / world) entries, the short ones topped up with None (a filler, answered and dropped)."""
    share: list[int | None] = list(range(rank, n, world))
    if equal and n:
        share += [None] * (math.ceil(n / world) - len(share))
    return share


def _autocast(model: torch.nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when frozen weights are held in bf16 beside fp32 ones (train.precision=bf16), as it trains;
    a model that is all one dtype runs as it is."""
    dtypes = {p.dtype for p in model.parameters()}
    if torch.bfloat16 in dtypes and len(dtypes) > 1:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_batch(model, processor, samples: Sequence[EvalSample], max_new_tokens: int = 64,
                   do_sample: bool = False, synced: bool = False, **sampling: Any) -> list[str]:
    """The answers to `samples`, generated together in one left-padded batch."""
    prompts = [processor.apply_chat_template(s.messages, add_generation_prompt=True) for s in samples]
    images = [[PIL.Image.open(io.BytesIO(b)) for b in s.images] for s in samples]
    batch = processor(text=prompts, images=images if any(images) else None)
    new = generate_new_tokens(model, batch, processor.tokenizer, max_new_tokens, synced=synced, do_sample=do_sample,
                              **sampling)
    return [text.strip() for text in processor.post_process_image_text_to_text(new)]


@torch.no_grad()
def generate_new_tokens(model, batch, tokenizer, max_new_tokens: int, synced: bool = False,
                        **sampling: Any) -> torch.Tensor:
    """`model.generate` on a processor batch (moved to the model's device), stopping at eos: the generated ids
    after the prompt, (rows, new), padded with pad_token_id. With `synced` (sharded weights) every rank steps until
    all are done and runs the vision tower in the prefill, whether its batch has images. What isaac-eval's answers
    and GRPO's rollouts (objectives/rollout.py) share."""
    device = _device(model)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if synced:
        sampling["keep_vision_graph"] = True
    with _autocast(model, device):
        out = model.generate(**batch, max_new_tokens=max_new_tokens, synced_gpus=synced,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sampling)
    return out[:, batch["input_ids"].shape[1]:]


def generate_answers(model, processor, samples: Sequence[EvalSample], batch_size: int = 8, max_new_tokens: int = 64,
                     do_sample: bool = False, synced: bool = False, progress: bool = False,
                     **sampling: Any) -> list[str]:
    """The answers to `samples` in order, `batch_size` at a time; `progress` shows a bar with samples/s.

    Batches are formed from the samples sorted by `_batch_key` (image count, prompt text) and the answers put back
    in the given order: alike prompts (one task's template) pad less and tend to answer at alike lengths, so a
    batch waits less for its longest answer. A greedy answer does not depend on its batch."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    order = sorted(range(len(samples)), key=lambda i: _batch_key(samples[i]))
    answers: dict[int, str] = {}
    bar = tqdm(total=len(samples), desc="generating", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            texts = generate_batch(model, processor, [samples[i] for i in chunk], max_new_tokens, do_sample, synced,
                                   **sampling)
            answers.update(zip(chunk, texts, strict=True))
            bar.update(len(chunk))  # the bar shows samples/s
    finally:
        bar.close()
        model.train(was_training)
    return [answers[i] for i in range(len(samples))]


def _batch_key(sample: EvalSample) -> tuple[int, int, str]:
    """Images, then prompt length, then the question: samples of one task template end up side by side."""
    text = " ".join(content_text(m.get("content", "")) for m in sample.messages)
    return len(sample.images), len(text), sample.question


def answers_on_rank(model, processor, samples: Sequence[EvalSample], rank: int, world: int, synced: bool = False,
                    **options: Any) -> dict[int, str]:
    """This rank's share of the answers as {sample index: answer}; fillers (sharded weights) are dropped."""
    share = rank_share(len(samples), rank, world, equal=synced)
    if not share:
        return {}
    filler = share[0] if share[0] is not None else 0  # a rank's first entry is a real sample unless it has none
    picked = [samples[filler if i is None else i] for i in share]
    answers = generate_answers(model, processor, picked, synced=synced, **options)
    return {i: a for i, a in zip(share, answers, strict=True) if i is not None}


def merge_answers(parts: Sequence[dict[int, str]], n: int) -> list[str]:
    """The answers of every rank (gathered) in sample order; each sample answered exactly once."""
    merged: dict[int, str] = {}
    for part in parts:
        twice = merged.keys() & part.keys()
        if twice:
            raise RuntimeError(f"samples {sorted(twice)[:5]} were answered on two ranks")
        merged.update(part)
    missing = sorted(set(range(n)) - merged.keys())
    if missing:
        raise RuntimeError(f"samples {missing[:5]} were answered on no rank")
    return [merged[i] for i in range(n)]
