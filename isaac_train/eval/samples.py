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

from ..data.decode import SkipSample, parse_sample
from ..data.prompts import EvalSample, content_text, prompt_sample  # noqa: F401  (content_text: eval's public name)
from ..data.records import Skip, _as_list, convert_record
from ..data.shards import SampleReadError, ShardSet, read_sample


@dataclass
class EvalSet:
    samples: list[EvalSample]
    skipped: Counter = field(default_factory=Counter)


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
            sample = prompt_sample(ref.key, kind, items, images, obj, refs, out.skipped)
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
            sample = prompt_sample(str(obj.get("id", f"line{lineno:06d}")), "chat", converted.sample["messages"],
                                   images, obj, refs, out.skipped)
            if sample is not None:
                out.samples.append(sample)
    return out
