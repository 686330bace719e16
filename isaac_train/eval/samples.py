"""Evaluation samples: a prompt (the conversation up to its last assistant turn), the expected answer, images.

    read_eval_samples("/data/eval")                 a shard set (a folder, a glob, index.json, a list of tars)
    read_eval_samples("val.jsonl", image_root=...)  chat JSONL with images as `isaac-data make-shards` reads it

A sample is usable when it is a chat whose last message is the assistant's; documents (pre-training text) and
samples that cannot be read are counted in `EvalSet.skipped` by reason, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.decode import SkipSample, chosen_chat, parse_sample
from ..data.records import Skip, _as_list, convert_record
from ..data.shards import SampleReadError, ShardSet, read_sample


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


@dataclass
class EvalSet:
    samples: list[EvalSample]
    skipped: Counter = field(default_factory=Counter)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text items of a content list joined by spaces."""
    if isinstance(content, str):
        return content
    return " ".join(i.get("text", "") for i in content if isinstance(i, dict) and i.get("type") == "text")


def _sample(key: str, kind: str, items: list[dict], images: list[bytes], obj: dict, refs: list[str],
            skipped: Counter) -> EvalSample | None:
    kind, items = chosen_chat(kind, items, obj)  # a preference pair: its prompt, answered as its chosen answer
    if kind != "chat":
        skipped["document"] += 1
        return None
    if len(items) < 2 or items[-1].get("role") != "assistant":
        skipped["no_final_answer"] += 1
        return None
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    return EvalSample(key, items[:-1], content_text(items[-1]["content"]).strip(), images, dict(meta), refs)


def read_eval_samples(source: Any, limit: int | None = None, image_root: str | Path | None = None) -> EvalSet:
    """The first `limit` (all when None) usable samples of a shard set or a chat JSONL file, in order."""
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and path.is_file() and path.suffix in (".jsonl", ".json") and path.name != "index.json":
        return _from_jsonl(path, limit, image_root)
    return _from_shards(source, limit)


def _from_shards(shards: Any, limit: int | None) -> EvalSet:
    out = EvalSet([])
    shard_set = ShardSet(shards)
    for shard in range(len(shard_set.tars)):
        for position in range(shard_set.counts[shard]):
            if limit is not None and len(out.samples) >= limit:
                return out
            ref = shard_set.ref(shard, position)
            try:
                members = read_sample(ref)
                kind, items, images, obj = parse_sample(members)
            except (SkipSample, SampleReadError) as err:
                out.skipped[getattr(err, "reason", "unreadable")] += 1
                continue
            refs = [f"{shard_set.tars[shard]}#{ref.key}.{name}" for name in sorted(members) if name != "json"]
            sample = _sample(ref.key, kind, items, images, obj, refs, out.skipped)
            if sample is not None:
                out.samples.append(sample)
    return out


def _from_jsonl(path: Path, limit: int | None, image_root: str | Path | None) -> EvalSet:
    """Each line through make-shards' own record converter (data/records.py: images read and checked as it
    does)."""
    root = Path(image_root) if image_root is not None else path.parent
    out = EvalSet([])
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(out.samples) >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                converted = convert_record(obj, root, f"{path.name} line {lineno}")
            except json.JSONDecodeError:
                out.skipped["bad_json"] += 1
                continue
            except Skip as err:
                out.skipped[err.reason] += 1
                continue
            refs = [str(r) for r in (_as_list(obj.get("images")) or _as_list(obj.get("image")))]  # as convert_record
            images = [data for _, data in converted.images]
            sample = _sample(str(obj.get("id", f"line{lineno:06d}")), "chat", converted.sample["messages"], images,
                             obj, refs, out.skipped)
            if sample is not None:
                out.samples.append(sample)
    return out
