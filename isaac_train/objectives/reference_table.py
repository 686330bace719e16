"""Reference log-probabilities computed in one pass and stored (`objective.precompute_reference=true`).

Before the first step, the reference (the frozen copy, or the policy with its adapters disabled) scores every pair of
the training data once, and of the eval data when there is some, and the run then reads those numbers instead of
running a second model every step: the frozen copy is freed after the pass, and a step costs what an sft step on the
same tokens costs. The table is a JSON file (`objective.reference_logps`, default `<run dir>/reference_logps.json`;
point several runs with the same reference and data at one file to pay the pass once):

    {"format": 1, "fingerprint": {...}, "splits": {"train": {"<source>/<key>": [chosen, rejected], ...}, "eval": ...}}

The fingerprint says what the numbers depend on (the reference weights, the data, the sequence length, the
precision); a file with another fingerprint is computed again and replaced, with a line saying why. Values are the
float32 sums the live reference gives (JSON keeps a float32 exactly), from a forward over another packing of the same
pairs (the loader's, in order), so they equal the live reference's up to the float rounding of another row layout.

Every rank runs the pass over every batch (under fsdp / zero3 each forward needs every rank); rank 0 writes the file
(atomically) and every rank keeps its own copy of the table in memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT = 1


class ReferenceTable:
    """split -> {pair key: (chosen, rejected) reference log-probabilities}."""

    def __init__(self, splits: dict[str, dict[str, list[float]]], path: Path) -> None:
        self.splits = splits
        self.path = path

    def logps(self, split: str, sample_keys: list[list[str]], device: Any) -> torch.Tensor:
        """(2 * pairs,) the batch's reference log-probabilities in its label-group order (rows, then pairs)."""
        table = self.splits.get(split, {})
        values = []
        for row in sample_keys:
            for key in row:
                pair = table.get(key)
                if pair is None:
                    raise KeyError(f"objective.reference_logps {self.path} holds no {split} pair {key!r}: the data "
                                   "changed after the table was computed; delete the file (it is computed again) or "
                                   "set objective.reference_logps to another path")
                values += pair
        return torch.tensor(values, dtype=torch.float32, device=device)


def table_path(cfg: Any) -> Path:
    return Path(cfg.objective.reference_logps or Path(cfg.run.output_dir) / "reference_logps.json")


def fingerprint(cfg: Any, data: dict[str, Any]) -> dict[str, Any]:
    """What the stored numbers depend on: the reference's weights, the pairs, how they are encoded, the precision."""
    m, d = cfg.model, cfg.data
    reference = ({"pretrained": str(Path(m.pretrained).resolve())} if m.pretrained
                 else {"size": m.size, "seed": cfg.train.seed})
    reference.update(peft=cfg.peft.kind, reference=cfg.objective.reference)
    return json.loads(json.dumps({
        "reference": reference, "train": data.get("train"), "eval": data.get("eval"),
        "seq_len": cfg.train.seq_len, "precision": cfg.train.precision, "length_policy": d.length_policy,
        "max_image_pixels": d.max_image_pixels, "attn_backend": m.attn_backend,
    }, default=str))


def load(path: Path, expected: dict[str, Any], env: Any) -> ReferenceTable | None:
    """The table at `path` if it was computed for `expected`; None (on every rank alike): compute it."""
    found = _read(path)
    table = None
    if found is not None and found.get("fingerprint") == expected:
        logger.info("reference log-probabilities read from %s", path)
        table = ReferenceTable(found["splits"], path)
    elif found is not None and env.is_main:
        saved = found.get("fingerprint") or {}
        changed = sorted(k for k in set(expected) | set(saved) if expected.get(k) != saved.get(k))
        print(f"isaac-train: {path} was computed for another reference or data ({', '.join(changed)}); computing "
              "it again", flush=True)
    if env.any(table is None):  # every rank reads before rank 0 may write, and all decide alike
        return None
    return table


def compute(path: Path, expected: dict[str, Any], score: Callable[[Any], torch.Tensor],
            batches_of: Callable[[str], Iterable[Any] | None], env: Any, progress: bool) -> ReferenceTable:
    """One pass of `score(batch)` (per-answer reference log-probs) over each split's batches (`batches_of(split)`,
    None: no such split); rank 0 writes the table to `path`."""
    splits: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for split in ("train", "eval"):
        batches = batches_of(split)
        if batches is not None:
            splits[split] = _score_split(split, batches, score, env.is_main and progress)
    if env.is_main:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"format": FORMAT, "fingerprint": expected, "splits": splits}))
        os.replace(tmp, path)
        counts = ", ".join(f"{len(v):,} {k}" for k, v in splits.items())
        print(f"isaac-train: reference log-probabilities of {counts} pairs in {time.perf_counter() - start:.1f} s "
              f"-> {path}", flush=True)
    env.barrier()
    return ReferenceTable(splits, path)


def _score_split(split: str, batches: Iterable[Any], score: Callable[[Any], torch.Tensor], progress: bool
                 ) -> dict[str, list[float]]:
    from tqdm import tqdm

    out: dict[str, list[float]] = {}
    for batch in tqdm(batches, desc=f"reference log-probs ({split})", unit="batch", disable=not progress):
        values = score(batch).float().cpu().tolist()
        keys = [key for row in batch.sample_keys for key in row]
        for i, key in enumerate(keys):
            if key in out:
                raise ValueError(f"pair {key!r} appears twice in the {split} data: two sources share a name or a "
                                 "shard holds one key twice; objective.precompute_reference needs unique keys")
            out[key] = values[2 * i:2 * i + 2]
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("ignoring %s (%s): computing the reference log-probabilities again", path, err)
        return None
    return found if isinstance(found, dict) and found.get("format") == FORMAT else None
