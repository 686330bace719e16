"""Prompts: a chat up to its last assistant turn, with that turn's text as the reference answer.

The form evaluation asks (eval/samples.py reads them from shards and chat JSONL) and objective=grpo samples
completions for (the loader's prompt mode, loader.py). A preference pair is read as its prompt and chosen answer;
a document (pre-training text) or a chat that does not end with the assistant's answer is no prompt and is
counted by reason, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .decode import SkipSample, chosen_chat, parse_sample


@dataclass
class EvalSample:
    key: str
    messages: list[dict[str, Any]]  # the prompt: every message before the expected answer
    expected: str  # the expected answer's text
    images: list[bytes]
    meta: dict[str, Any] = field(default_factory=dict)
    image_refs: list[str] = field(default_factory=list)  # where each image came from (shard#member, or a path)

    @property
    def question(self) -> str:
        """The text of the last prompt message."""
        return content_text(self.messages[-1]["content"]) if self.messages else ""

    @property
    def task(self) -> str | None:
        """The sample's task (`meta.task`, else `meta.type`), for per-task summaries."""
        value = self.meta.get("task", self.meta.get("type"))
        return None if value is None else str(value)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text items of a content list joined by spaces."""
    if isinstance(content, str):
        return content
    return " ".join(i.get("text", "") for i in content if isinstance(i, dict) and i.get("type") == "text")


def prompt_sample(key: str, kind: str, items: list[dict], images: list[bytes], obj: dict, refs: list[str],
                  skipped: Counter) -> EvalSample | None:
    """The prompt of a parsed sample (decode.parse_sample's kind, items, images and object), or None with the
    reason counted in `skipped` (document, no_final_answer)."""
    kind, items = chosen_chat(kind, items, obj)  # a preference pair: its prompt, answered as its chosen answer
    if kind != "chat":
        skipped["document"] += 1
        return None
    if len(items) < 2 or items[-1].get("role") != "assistant":
        skipped["no_final_answer"] += 1
        return None
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    return EvalSample(key, items[:-1], content_text(items[-1]["content"]).strip(), images, dict(meta), refs)


def prompt_from_members(key: str, members: dict[str, bytes], refs: list[str] | None = None) -> EvalSample:
    """A shard sample's tar members -> its prompt; SkipSample with the reason when it has none."""
    kind, items, images, obj = parse_sample(members)
    skipped: Counter = Counter()
    sample = prompt_sample(key, kind, items, images, obj, refs or [], skipped)
    if sample is None:
        reason = next(iter(skipped))
        raise SkipSample(reason, "a document, not a chat" if reason == "document" else
                         "the chat does not end with the assistant's answer (the reference answer of a prompt)")
    return sample


@dataclass
class PromptItem:
    """A prompt as the loader's prompt mode yields it (objective=grpo): the sample, its prompt made into events
    for generation (the chat template with the generation prompt; images as uint8 patches), its address."""

    sample: EvalSample
    events: list[Any]  # processing.tensor_stream Events
    address: Any
    key: str

    @property
    def length(self) -> int:
        return sum(e.num_tokens() for e in self.events)


@dataclass
class PromptBatch:
    """A micro-batch of prompts; `sample_keys` and `meta` as a PackedBatch's (one "row" of prompt keys)."""

    prompts: list[PromptItem]
    sample_keys: list[list[str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def encode_prompt(members: dict[str, bytes], processor: Any, key: str, address: Any, max_tokens: int,
                  refs: list[str] | None = None) -> PromptItem:
    """A shard sample -> a PromptItem whose prompt leaves room for a completion: at most `max_tokens` tokens, else
    SkipSample("too_long") naming the settings."""
    from .decode import _skips

    sample = prompt_from_members(key, members, refs)
    text = processor.apply_chat_template(sample.messages, add_generation_prompt=True)
    with _skips():
        events, _ = processor.build_events(text, sample.images, normalize=False)
    item = PromptItem(sample, events, address, key)
    if item.length > max_tokens:
        raise SkipSample("too_long", f"the prompt has {item.length} tokens; with objective.max_new_tokens the "
                                     f"completion must fit train.seq_len ({max_tokens} tokens left for the prompt): "
                                     "raise train.seq_len or lower objective.max_new_tokens")
    return item
