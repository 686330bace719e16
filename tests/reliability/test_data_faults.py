"""Data that yields nothing stops with a message instead of hanging: an epoch without one usable sample raises
NoUsableSamples naming the shards and the skip reasons; a job whose readers cannot all get a sample is refused at
start-up, on every rank, within seconds."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from isaac_train.data.loader import LoaderSpec, NoUsableSamples, PackedLoader, SourceSpec
from isaac_train.data.shards import ShardSet, ShardWriter

from ..data_helpers import chat_sample, encode_image
from ..distributed.helpers import run_train, two_rank_overrides
from ..train.conftest import tiny_overrides
from .conftest import ROOT


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


# ---- an image bomb -----------------------------------------------------------------------------------------------

# Two bombs: 20000 x 20000 (past twice PIL's limit, which data.max_image_pixels sets: PIL refuses it at open) and
# 11000 x 10000 (110 MP, between the limit and twice it: PIL would only warn and decode 330 MB). The work runs under
# an address-space cap of what the process maps after its imports plus CAP_HEADROOM, so anything that decodes
# either dies of MemoryError; the control, under the same cap, is PIL decoding the smaller one with its own check
# off: it must fail, or the cap proves nothing.
CAP_HEADROOM = 256 << 20
BOMBS = {"huge": (20000, 20000), "big": (11000, 10000)}
_UNDER_A_CAP = r"""
import json, resource, sys
from pathlib import Path

import PIL.Image

from data_tools import make_shards
from data_tools.formats import build_converter
from data_tools.inspect_cmd import image_info
from data_tools.validate import ScanConfig, scan_sample
from isaac_train.data.loader import LoaderSpec, PackedLoader, SourceSpec
from isaac_train.data.shards import ShardSet
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

shards, records, control, headroom = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config())
loader = PackedLoader(LoaderSpec(sources=[SourceSpec("bombs", shards)], seq_len=256, pack_buffer=4, epochs=1,
                                 shuffle=False, num_workers=2), processor)
mapped = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) << 10
resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
out = {"cap_mb": (mapped + headroom) >> 20}
out["loader_keys"] = sorted(k for batch in loader for row in batch.sample_keys for k in row)
out["loader_skipped"] = loader.skip_counts()
shard_set = ShardSet(shards)
scanned = [scan_sample(shard_set, s, p, ScanConfig(processor, 256, "truncate"))
           for s in range(len(shard_set.tars)) for p in range(shard_set.counts[s])]
out["validate"] = {r.key: [r.reason, r.message] for r in scanned}
out["inspect"] = [image_info(0, "0.png", p.read_bytes(), processor).error for p in sorted(records.parent.glob("*.png"))]
report = make_shards.make_shards(build_converter("chat-jsonl", records), records.parent / "made", workers=1,
                                 progress=False)
out["make_shards"] = [report["samples"], report["skipped"], report["examples"]]
PIL.Image.MAX_IMAGE_PIXELS = None  # the control: PIL's own check off, decode a bomb under the same cap
try:
    with PIL.Image.open(control) as image:
        image.load()
    out["control"] = "decoded"
except MemoryError:
    out["control"] = "MemoryError"
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_image_bombs_are_skipped_from_their_header_under_a_memory_cap(tmp_path):
    """PNG bombs (about 1 MB on disk, 330 MB and 1.2 GB decoded) in shards and in records for make-shards: the
    loader with 2 workers, validate, inspect and make-shards skip each as image_too_large and count it, in a process
    whose address space could not hold one decoded."""
    from ..data_tools.bombs import png_bomb

    records = tmp_path / "records" / "chat.jsonl"
    records.parent.mkdir()
    bombs = {name: records.parent / f"{name}.png" for name in BOMBS}
    for name, size in BOMBS.items():
        bombs[name].write_bytes(png_bomb(*size))
    writer = ShardWriter(tmp_path / "shards", max_count=4)
    rng = np.random.default_rng(3)
    for i in range(6):
        sample, images = chat_sample(i, rng)
        writer.write(f"s{i:05d}", sample, images)
    question = [{"type": "image"}, {"type": "text", "text": "?"}]
    for name, path in bombs.items():
        writer.write(name, {"messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": "nothing"}]}, [("0.png", path.read_bytes())])
    writer.close()
    lines = [{"image": str(path), "conversations": [{"from": "human", "value": "<image>\nwhat?"},
                                                    {"from": "gpt", "value": "nothing"}]} for path in bombs.values()]
    lines.append({"messages": [{"role": "user", "content": "hello?"}, {"role": "assistant", "content": "hi"}]})
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = subprocess.run([sys.executable, "-c", _UNDER_A_CAP, str(tmp_path / "shards"), str(records),
                          str(bombs["big"]), str(CAP_HEADROOM)], capture_output=True, text=True, timeout=240,
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\naddress space capped at {result['cap_mb']} MB")
    assert result["control"] == "MemoryError", "the cap must be low enough that decoding a bomb fails"
    assert result["loader_skipped"] == {"image_too_large": 2}
    assert result["loader_keys"] == [f"bombs/s{i:05d}" for i in range(6)]
    sizes = {"huge": "400,000,000 pixels", "big": "11000x10000 = 110,000,000 pixels"}
    for name, size in sizes.items():
        reason, message = result["validate"].pop(name)
        assert reason == "image_too_large" and message == (
            f"image 0: image of {size} is over the limit of 60,000,000 pixels (data.max_image_pixels, make-shards "
            "--max-image-pixels); not decoded")
    assert all(r == [None, ""] for r in result["validate"].values())
    assert [error.split(" is over")[0] for error in result["inspect"]] == [
        f"image 0: image of {sizes['big']}", f"image 0: image of {sizes['huge']}"]
    written, skipped, examples = result["make_shards"]
    assert written == 1 and skipped == {"image_too_large": 2}
    assert sorted(e.split(": image of ")[1].split(" is over")[0] for e in examples["image_too_large"]) == sorted(
        sizes.values())
