"""Data that yields nothing stops with a message instead of hanging: an epoch without one usable sample raises
NoUsableSamples naming the shards and the skip reasons; a job whose readers cannot all get a sample is refused at
start-up, on every rank, within seconds."""

from __future__ import annotations

import gc
import json
import re
import time
from collections import Counter

import numpy as np
import pytest

from isaac_train.data.loader import LoaderSpec, NoUsableSamples, PackedLoader, SourceSpec
from isaac_train.data.shards import ShardSet, ShardWriter

from ..data_helpers import chat_sample, encode_image
from ..distributed.helpers import run_train, two_rank_overrides
from ..train.conftest import tiny_overrides


def _write(root, n: int, bad: dict[int, str], per_shard: int = 5):
    """n chat samples in shards of `per_shard`; sample i is broken as bad[i] says ("corrupt_image": a JPEG cut to a
    third, "bad_json": JSON that does not parse). Returns the dataset dir and the sample keys that are good."""
    rng = np.random.default_rng(11)
    writer = ShardWriter(root, max_count=per_shard)
    good = []
    for i in range(n):
        sample, images = chat_sample(i, rng)
        if bad.get(i) == "corrupt_image":
            jpeg = encode_image(40, 40, i, "JPEG")
            sample["messages"][0]["content"] = [{"type": "image"}, {"type": "text", "text": "what?"}]
            images = [("0.jpg", jpeg[: len(jpeg) // 3])]
        elif i not in bad:
            good.append(f"s{i:05d}")
        writer.write(f"s{i:05d}", b'{"messages": [' if bad.get(i) == "bad_json" else sample, images)
    writer.close()
    return root, good


def _all_bad(n: int = 12) -> dict[int, str]:
    return {i: ("corrupt_image" if i % 2 else "bad_json") for i in range(n)}


def _spec(shards, **kw) -> LoaderSpec:
    base = dict(sources=[SourceSpec("faults", str(shards))], seq_len=256, pack_buffer=4, shuffle_block=8,
                num_workers=0, epochs=None, seed=5)
    base.update(kw)
    return LoaderSpec(**base)


# ---- an epoch without one usable sample ------------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers, epochs", [(0, None), (2, None), (0, 1)], ids=["train", "train-2-workers", "eval"])
def test_all_bad_data_stops_naming_shards_and_reasons(tmp_path, tiny_processor, workers, epochs):
    plan = _all_bad()
    shards, _ = _write(tmp_path, len(plan), plan)
    loader = PackedLoader(_spec(shards, num_workers=workers, epochs=epochs), tiny_processor)
    start = time.perf_counter()
    with pytest.raises(NoUsableSamples) as caught:
        list(loader)
    elapsed = time.perf_counter() - start
    message = str(caught.value)
    print(f"\n{elapsed:.2f}s: {message}")
    assert elapsed < 30
    assert message.startswith("no usable sample"), "the reader's message must come first, not torch's wrapper"
    assert str(ShardSet(str(shards)).tars[0]) in message and f"isaac-data validate {shards}" in message
    tried = int(re.search(r"tried (\d+) samples", message).group(1))
    counts = {r: int(c) for r, c in re.findall(r"^  (\w+): (\d+), e\.g\. shard-", message, re.MULTILINE)}
    assert counts and set(counts) <= set(plan.values()) and sum(counts.values()) == tried
    if workers == 0:  # one reader tried every sample: the counts are the plan's
        assert counts == Counter(plan.values())
    start = time.perf_counter()
    del caught
    gc.collect()
    assert time.perf_counter() - start < 4, "the DataLoader workers must stop at once, not at a 5 s join timeout"


@pytest.mark.timeout(300)
def test_trainer_stops_on_all_bad_data(tmp_path):
    from isaac_train.train.cli import compose_config
    from isaac_train.train.loop import train

    plan = _all_bad()
    shards, _ = _write(tmp_path / "bad", len(plan), plan)
    start = time.perf_counter()
    with pytest.raises(NoUsableSamples, match="corrupt_image") as caught:
        train(compose_config(tiny_overrides(shards, tmp_path / "run")))
    assert time.perf_counter() - start < 60 and str(shards) in str(caught.value)


# ---- no false positive -------------------------------------------------------------------------------------------

def test_mostly_bad_data_still_yields_across_epochs(tmp_path, tiny_processor):
    n = 30
    plan = {i: kind for i, kind in _all_bad(n).items() if i not in (3, 17, 26)}
    shards, good = _write(tmp_path, n, plan)
    loader = PackedLoader(_spec(shards, max_error_rate=1.0), tiny_processor)
    it = iter(loader)
    keys = [k.split("/")[1] for _ in range(4) for row in next(it).sample_keys for k in row]
    assert set(keys) <= set(good) and len(keys) >= 4
    assert loader.samples_seen() > 2 * n  # 4 batches of 4 samples from 3 good ones per epoch: epochs went by
    assert set(loader.skip_counts()) == set(plan.values())


def test_resume_where_only_bad_samples_remain_in_the_epoch(tmp_path, tiny_processor):
    """Samples 0-5 good, 6-19 bad, read in order one batch per good sample: after 6 batches only bad samples remain
    in epoch 0. A resume there must remember the epoch's usable samples, or it would raise falsely."""
    n, n_good = 20, 6
    plan = {i: kind for i, kind in _all_bad(n).items() if i >= n_good}
    shards, good = _write(tmp_path, n, plan)
    spec = _spec(shards, shuffle=False, pack_buffer=1, max_error_rate=1.0)
    straight = PackedLoader(spec, tiny_processor)
    it = iter(straight)
    reference = [next(it).sample_keys for _ in range(n_good + 2)]
    first = PackedLoader(spec, tiny_processor)
    it = iter(first)
    for _ in range(n_good):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert state["readers"][0]["epochs"] == [0] and state["readers"][0]["cursors"] == [n_good]
    resumed = PackedLoader(spec, tiny_processor)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert [next(it).sample_keys for _ in range(2)] == reference[n_good:]  # epoch 1 starts, nothing raised
    assert reference[n_good][0][0].endswith(good[0])


@pytest.mark.timeout(300)
def test_trainer_trains_on_mostly_bad_data(tmp_path):
    from isaac_train.train.cli import compose_config
    from isaac_train.train.loop import train

    plan = {i: kind for i, kind in _all_bad(20).items() if i % 5}
    shards, _ = _write(tmp_path / "data", 20, plan)
    result = train(compose_config(tiny_overrides(shards, tmp_path / "run", "train.max_steps=3",
                                                 "data.max_error_rate=1.0")))
    assert result.state.step == 3


# ---- a reader with no sample at all ------------------------------------------------------------------------------

@pytest.mark.parametrize("world, workers", [(2, 2), (3, 0)])
def test_too_few_samples_for_the_readers_is_refused_on_every_rank(tmp_path, tiny_processor, world, workers):
    readers = world * max(workers, 1)
    shards, _ = _write(tmp_path / "small", readers - 1, {})
    for rank in range(world):
        with pytest.raises(ValueError) as caught:
            PackedLoader(_spec(shards, num_workers=workers), tiny_processor, rank=rank, world_size=world)
        message = str(caught.value)
        assert f"holds {readers - 1} sample(s)" in message and f"{readers} loader readers" in message
        assert f"{world} processes x data.num_workers={workers}" in message and str(shards) in message
    enough, _ = _write(tmp_path / "enough", readers, {})
    PackedLoader(_spec(enough, num_workers=workers), tiny_processor, rank=world - 1, world_size=world)


@pytest.mark.timeout(300)
def test_two_processes_on_one_sample_exit_within_seconds(tmp_path):
    shards, _ = _write(tmp_path / "one", 1, {})
    start = time.perf_counter()
    out = run_train(two_rank_overrides(shards, tmp_path / "run", "ddp"), nproc=2, timeout=240, check=False)
    elapsed = time.perf_counter() - start
    assert out.returncode != 0
    assert "holds 1 sample(s) but the job has 2 loader readers (2 processes x data.num_workers=1)" in out.stderr, \
        out.stderr[-3000:]
    assert elapsed < 120, f"took {elapsed:.0f}s: a rank waited on the other instead of refusing"
