"""Evaluation during training: loss on eval shards, and generated answers for a few eval samples."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import PIL.Image
import torch

from ..data.decode import SkipSample, parse_sample
from ..data.loader import PackedLoader
from ..data.shards import SampleReadError, ShardSet, read_sample
from ..processing.processor import IsaacProcessor


def eval_loss(model: torch.nn.Module, loader: PackedLoader, max_batches: int, device: torch.device) -> float:
    """Mean next-token loss over the label tokens of the first `max_batches` eval batches."""
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        out = model(**batch.to(device).model_inputs(), return_logits=False)
        total += float(out.loss_sum)
        count += int(out.num_label_tokens)
    return total / max(count, 1)


def eval_conversations(shards: Any, n: int) -> list[dict[str, Any]]:
    """The first `n` usable chat samples of the eval shards: prompt messages, expected answer, images."""
    found: list[dict[str, Any]] = []
    shard_set = ShardSet(shards)
    for shard in range(len(shard_set.tars)):
        for position in range(shard_set.counts[shard]):
            if len(found) >= n:
                return found
            ref = shard_set.ref(shard, position)
            try:
                kind, items, images, obj = parse_sample(read_sample(ref))
            except (SkipSample, SampleReadError):
                continue
            if kind != "chat" or not items or items[-1].get("role") != "assistant":
                continue
            found.append({"key": ref.key, "messages": items[:-1], "expected": items[-1]["content"], "images": images,
                          "meta": obj.get("meta")})
    return found


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text items of a content list joined by spaces."""
    if isinstance(content, str):
        return content
    return " ".join(i.get("text", "") for i in content if isinstance(i, dict) and i.get("type") == "text")


@torch.no_grad()
def answer(model, processor: IsaacProcessor, messages: list[dict], images: list[bytes], device: torch.device,
           max_new_tokens: int = 48, synced: bool = False) -> str:
    """Greedy answer of the model to a conversation (rendered with the generation prompt). `synced`: the weights
    are sharded and every rank generates along; ranks that finish early keep stepping until all are done."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=prompt, images=images)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced,
                         eos_token_id=processor.tokenizer.eos_token_id, pad_token_id=processor.tokenizer.pad_token_id)
    return processor.post_process_image_text_to_text(out[:, batch["input_ids"].shape[1]:])[0].strip()


def generate_samples(model, processor: IsaacProcessor, shards: Any, n: int, device: torch.device,
                     synced: bool = False) -> list[dict]:
    """Rows (question, expected, generated, image) for the first `n` eval conversations."""
    was_training = model.training
    model.eval()
    rows = []
    # frozen weights held in bf16 (train.precision=bf16) beside fp32 ones: generate under bf16 autocast, as it trains
    held_bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
    for conv in eval_conversations(shards, n):
        question = content_text(conv["messages"][-1]["content"])
        image = PIL.Image.open(io.BytesIO(conv["images"][0])).convert("RGB") if conv["images"] else None
        with torch.autocast(device.type, dtype=torch.bfloat16) if held_bf16 else contextlib.nullcontext():
            generated = answer(model, processor, conv["messages"], conv["images"], device, synced=synced)
        rows.append({"key": conv["key"], "question": question, "expected": content_text(conv["expected"]),
                     "generated": generated,
                     "image": image})
    model.train(was_training)
    return rows
