"""train.seed seeds every RNG: two identical runs save equal rank state (torch, Python's random and NumPy included),
another seed differs; a loader worker's draws while processing a sample (an augmentation's) are a function of the
seed and the sample's place in the stream: equal in two runs, distinct between workers and ranks, and the same in a
resumed run, pending samples re-read included."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isaac_train.checkpoint.safe_load import load_state_file
from isaac_train.data.loader import LoaderSpec, PackedLoader, SourceSpec
from isaac_train.data.seeding import derive_seed, seed_all, seeded_host
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from ..data_helpers import make_chat_shards
from ..train.conftest import tiny_overrides


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested state (dicts, lists, tuples) by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{prefix}.{i}").items()}
    return {prefix: value}


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k])]


def _rank_state(run: Path) -> dict[str, Any]:
    return _leaves(load_state_file(run / "checkpoints" / "latest" / "rank_00000.pt"))


def test_two_identical_runs_save_equal_rank_state_and_another_seed_differs(train_shards, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        random.random(), np.random.random(), torch.rand(())  # what ran before in the process must not matter
        train(compose_config(tiny_overrides(train_shards, tmp_path / name, "train.max_steps=3", "data.num_workers=1",
                                            f"train.seed={seed}")))
        runs[name] = _rank_state(tmp_path / name)
    rng = [k for k in runs["a"] if k.startswith(".rng.")]
    assert {k.split(".")[2] for k in rng} >= {"python", "numpy", "torch"}
    values = sum(runs["a"][k].numel() if torch.is_tensor(runs["a"][k]) else 1 for k in rng)
    assert values > 1248 + 5056  # Python's 625 words, NumPy's 624 keys, torch's 5056-byte state: each compared
    assert not _differing(runs["a"], runs["b"]), "identical runs must save identical rank state"
    differ = _differing({k: runs["a"][k] for k in rng}, {k: runs["other"][k] for k in rng})
    assert {k.split(".")[2] for k in differ} >= {"python", "numpy", "torch"}


def test_seed_all_seeds_every_rng_and_seeds_differ():
    def draws(seed: int) -> list[float]:
        seed_all(seed)
        return [random.random(), float(np.random.random()), float(torch.rand(()))]

    assert draws(7) == draws(7)
    assert all(x != y for x, y in zip(draws(7), draws(7 + 7919), strict=True))
    assert draws(-3) == draws(-3) and draws(1 << 70) == draws(1 << 70)  # any Python int is a seed
    # Python's and NumPy's RNGs are both MT19937: the same key would make them draw alike
    assert all(len(set(draws(seed))) == 3 for seed in (0, 1, 12345))


def test_a_sample_seeds_in_the_main_process_and_restores_its_streams():
    seed_all(5)
    expected = [random.random(), float(np.random.random()), float(torch.rand(()))]
    seed_all(5)
    with seeded_host(derive_seed(1, 2, 3)):
        inside = [random.random(), float(np.random.random()), float(torch.rand(()))]
    assert [random.random(), float(np.random.random()), float(torch.rand(()))] == expected
    with seeded_host(derive_seed(1, 2, 3)):
        assert [random.random(), float(np.random.random()), float(torch.rand(()))] == inside


class DrawingProcessor(IsaacProcessor):
    """The tiny processor with an augmentation's stand-in: after encoding a conversation it draws from Python's
    random, NumPy's global RNG and torch, and appends (sample, pid, draws) to `log`."""

    log = ""

    def encode_chat(self, messages, images=(), **kwargs):
        sample = super().encode_chat(messages, images, **kwargs)
        text = next(i["text"] for m in messages if isinstance(m["content"], list) for i in m["content"]
                    if i.get("type") == "text")
        draws = [random.random(), float(np.random.random()), float(torch.rand(()))]
        with open(self.log, "a") as f:  # one short O_APPEND write per line: whole lines from every worker
            f.write(json.dumps([text.split(":")[0], os.getpid(), draws]) + "\n")
        return sample


def _processor(tiny_tokenizer, log: Path) -> DrawingProcessor:
    processor = DrawingProcessor.from_settings(tiny_tokenizer, tiny_config())
    processor.log = str(log)
    return processor


def _read(log: Path) -> list[tuple[str, int, tuple[float, ...]]]:
    return [(k, pid, tuple(d)) for k, pid, d in map(json.loads, log.read_text().splitlines())]


def _spec(shards: Path, **kw) -> LoaderSpec:
    base = dict(sources=[SourceSpec("s", str(shards))], seq_len=256, pack_buffer=4, shuffle_block=8, num_workers=2,
                epochs=1, seed=3)
    return LoaderSpec(**{**base, **kw})


def _drain(loader: PackedLoader, batches: int | None = None) -> None:
    for n, _ in enumerate(loader, 1):
        if n == batches:
            break


def test_worker_draws_are_deterministic_and_differ_between_workers_and_ranks(tmp_path, tiny_tokenizer):
    shards = make_chat_shards(tmp_path / "shards", n=24, per_shard=6, seed=1)
    logs = {}
    for run in ("first", "second"):
        for rank in (0, 1):
            log = tmp_path / f"{run}-{rank}.jsonl"
            _drain(PackedLoader(_spec(shards), _processor(tiny_tokenizer, log), rank=rank, world_size=2))
            logs[run, rank] = _read(log)
    for rank in (0, 1):
        assert sorted((k, d) for k, _, d in logs["first", rank]) == sorted((k, d) for k, _, d in logs["second", rank])
    lines = logs["first", 0] + logs["first", 1]
    assert len({k for k, _, _ in lines}) == 24 and len(lines) == 24  # every sample once, on one of 4 readers
    assert len({d for _, _, d in lines}) == 24, "no two samples may draw alike"
    assert len({value for _, _, d in lines for value in d}) == 72
    # The first sample of each worker of each rank: torch seeds worker w alike on every rank (the DataLoader's
    # generator is seeded from train.seed alone), so these would pair up without the loader's own seeding.
    first: dict[tuple[int, int], tuple[float, ...]] = {}
    for rank in (0, 1):
        for _, pid, d in logs["first", rank]:
            first.setdefault((rank, pid), d)
    assert len(first) == 4 and len(set(first.values())) == 4


def test_a_resumed_loader_draws_what_the_uninterrupted_one_drew(tmp_path, tiny_tokenizer):
    """A resume after 3 batches: each sample, prefetched ones and those re-read from the packer's buffer included,
    draws in the resumed loader's workers exactly what it drew in a loader that was never stopped."""
    shards = make_chat_shards(tmp_path / "shards", n=40, per_shard=10, seed=2)
    whole = tmp_path / "whole.jsonl"
    _drain(PackedLoader(_spec(shards, pack_buffer=6), _processor(tiny_tokenizer, whole)))
    parts = tmp_path / "parts.jsonl"
    before = PackedLoader(_spec(shards, pack_buffer=6), _processor(tiny_tokenizer, parts))
    _drain(before, 3)
    state = before.state_dict()
    pending = sum(len(r["pending"]) for r in state["readers"] if r)
    del before
    after = PackedLoader(_spec(shards, pack_buffer=6), _processor(tiny_tokenizer, parts))
    after.load_state_dict(state)
    _drain(after)
    draws: dict[str, set] = defaultdict(set)
    for key, _, d in _read(whole) + _read(parts):
        draws[key].add(d)
    assert len(draws) == 40 and all(len(d) == 1 for d in draws.values()), \
        [k for k, d in draws.items() if len(d) > 1]
    assert pending > 0 and len(_read(parts)) >= 40 + pending  # re-read samples drew again, and alike
