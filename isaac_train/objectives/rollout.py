"""GRPO's rollout: G completions per prompt from the model's batched KV-cache generation, and the packed batch
the update trains on.

    completions = sample_completions(model, processor, prompts, group_size=8, max_new_tokens=64, temperature=1.0)
    batch = completion_batch(prompts, completions, kept, seq_len, pad_id, image_token_id)

Each prompt (a PromptItem of the loader's prompt mode: the chat template with the generation prompt, images as
patches) is repeated G times in one left-padded batch through `model.generate` (sampling, or greedy at temperature
0; stop at eos; the image placeholder is never generated). A completion is the sampled token ids up to and
including the first eos, or `max_new_tokens` ids when it was cut (truncated). The update trains on exactly those
ids, never on a re-tokenised text: each completion becomes one document (the prompt's events, then the
completion's tokens, labels on the completion only) packed best-fit into rows, its label group the completion's
index, so that the model returns every completion token's log-probability from the packed layout.

With sharded weights (fsdp, zero3: `synced=True`) every rank generates its share in step (synced_gpus) and runs
the vision tower in the prefill, images or not, as evaluation does (eval/generate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.packing import PackedBatch, Packer, item_from_sample
from ..data.prompts import PromptItem
from ..eval.generate import generate_new_tokens
from ..processing.processor import IGNORE_INDEX, EncodedSample
from ..processing.tensor_stream import Event, TensorStream


@dataclass
class Completions:
    """The sampled completions of a batch of prompts, prompt-major: completion g of prompt p is index p * G + g."""

    ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    group_size: int

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.ids]


@torch.no_grad()
def sample_completions(model, processor, prompts: Sequence[PromptItem], group_size: int, max_new_tokens: int,
                       temperature: float = 1.0, top_p: float = 1.0, synced: bool = False) -> Completions:
    """`group_size` completions of every prompt, generated together (see the module docstring)."""
    batch = processor.batch_events([p.events for p in prompts for _ in range(group_size)])
    tokenizer = processor.tokenizer
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0
                else {"do_sample": False})
    was_training = model.training
    model.eval()
    try:
        new = generate_new_tokens(model, batch, tokenizer, max_new_tokens, synced=synced, **sampling).tolist()
    finally:
        model.train(was_training)
    ids, truncated = [], []
    for row in new:
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else None
        ids.append(row[:end] if end is not None else row[:max_new_tokens])
        truncated.append(end is None)
    texts = [t.strip() for t in processor.post_process_image_text_to_text(ids)]
    return Completions(ids, texts, truncated, group_size)


def completion_sample(prompt: PromptItem, ids: Sequence[int], image_token_id: int) -> EncodedSample:
    """The prompt followed by a completion's token ids as one training sample, labels on the completion only.
    The completion continues the prompt's last text run, so its positions are those generation gave it."""
    events = [*prompt.events, Event.text(list(ids), role="assistant")]
    stream = TensorStream([events])
    input_ids = stream.input_ids(image_token_id)[0]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[len(input_ids) - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
    patches, grids = stream.image_patches()
    grids = grids if grids is not None else torch.zeros(0, 2, dtype=torch.long)
    return EncodedSample(input_ids, labels, patches, grids, events)


def completion_batch(prompts: Sequence[PromptItem], completions: Completions, kept: Sequence[bool], seq_len: int,
                     pad_id: int, image_token_id: int) -> PackedBatch:
    """The kept completions as documents packed best-fit into rows of `seq_len` (as many rows as they need); the
    k-th kept completion is label group k. At least one completion must be kept."""
    packer = Packer(seq_len, rows=max(len(kept), 1), pad_id=pad_id, buffer_size=max(len(kept), 1))
    for index, (ids, keep) in enumerate(zip(completions.ids, kept, strict=True)):
        if not keep:
            continue
        prompt = prompts[index // completions.group_size]
        item = item_from_sample(completion_sample(prompt, ids, image_token_id), prompt.address,
                                f"{prompt.key}#{index % completions.group_size}")
        item.group = len(packer.waiting)
        packer.add(item)  # refuses a document over seq_len, naming it
    batch = packer.pop_batch()  # every kept completion, best-fit into as many rows as they need
    if batch is None:
        raise ValueError("completion_batch needs at least one kept completion")
    return batch  # label groups by each item's `group` (build_batch's group_by_segment)
