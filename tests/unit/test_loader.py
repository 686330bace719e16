"""The streaming loader: every sample once per epoch, packed-batch invariants, exact resume, bad data counts."""

from __future__ import annotations

import json

import pytest
import torch

from isaac_train.data.loader import LoaderSpec, PackedLoader, SourceSpec
from isaac_train.data.shards import ShardWriter, manifest_path
from isaac_train.processing.processor import IGNORE_INDEX

from ..data_helpers import chat_sample, encode_image, make_chat_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_chat_shards(tmp_path_factory.mktemp("shards"), n=60, per_shard=7)


def _spec(shards, **kw):
    base = dict(sources=[SourceSpec("unit", str(shards))], seq_len=256, pack_buffer=8, shuffle_block=16,
                num_workers=0, epochs=1, seed=3)
    base.update(kw)
    return LoaderSpec(**base)


def _keys(batches):
    return [k for b in batches for row in b.sample_keys for k in row]


def test_every_sample_exactly_once_on_2_ranks_x_2_workers(shards, tiny_processor):
    ledger = []
    for rank in range(2):
        loader = PackedLoader(_spec(shards, num_workers=2), tiny_processor, rank=rank, world_size=2)
        batches = list(loader)
        ledger += _keys(batches)
        assert sum(loader.skip_counts().values()) == 0
    assert len(ledger) == 60 and len(set(ledger)) == 60


def test_packed_batch_invariants(shards, tiny_processor, tiny_model):
    from isaac_train.data.decode import encode_members
    from isaac_train.data.shards import ShardSet, read_sample

    loader = PackedLoader(_spec(shards), tiny_processor)
    batch = next(iter(loader))
    ss = ShardSet(str(shards))
    by_key = {ss.manifests[s]["samples"][p]["key"]: (s, p) for s in range(len(ss.tars))
              for p in range(ss.counts[s])}
    cu = batch.cu_seqlens.tolist()
    row_keys = batch.sample_keys[0]
    assert len(cu) - 1 == len(row_keys) + (1 if batch.num_padding else 0)
    assert batch.fill > 0.5
    with torch.no_grad():
        out = tiny_model(**{k: v for k, v in batch.model_inputs().items() if k != "labels"})
    image_offset = 0
    for i, key in enumerate(row_keys):
        a, b = cu[i], cu[i + 1]
        alone = encode_members(read_sample(ss.ref(*by_key[key.split("/")[1]])), tiny_processor, 256)
        assert torch.equal(batch.input_ids[0, a:b], alone.input_ids)
        assert torch.equal(batch.labels[0, a:b], alone.labels)
        assert batch.position_ids[0, a, 0] == 0  # positions restart per document
        n_img = alone.image_grid_hw.shape[0]
        assert torch.equal(batch.image_grid_hw[image_offset : image_offset + n_img], alone.image_grid_hw)
        image_offset += n_img
        with torch.no_grad():
            single = tiny_model(input_ids=alone.input_ids[None], pixel_values=alone.pixel_values,
                                image_grid_hw=alone.image_grid_hw).logits[0]
        torch.testing.assert_close(out.logits[0, a:b], single, atol=1e-5, rtol=0)
    assert (batch.labels[0, cu[len(row_keys)]:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_next_batches(shards, tiny_processor, workers):
    spec = _spec(shards, num_workers=workers, epochs=None)
    straight = PackedLoader(spec, tiny_processor)
    it = iter(straight)
    reference = [next(it) for _ in range(8)]
    first = PackedLoader(spec, tiny_processor)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = PackedLoader(spec, tiny_processor)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for expected in reference[3:]:
        got = next(it)
        assert got.sample_keys == expected.sample_keys
        assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.labels, expected.labels)


def test_resume_with_other_settings_is_refused(shards, tiny_processor):
    loader = PackedLoader(_spec(shards), tiny_processor)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(ValueError, match="world size"):
        PackedLoader(_spec(shards), tiny_processor, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="data configuration"):
        PackedLoader(_spec(shards, seq_len=128), tiny_processor).load_state_dict(state)


def _bad_shards(root):
    """39 samples in 4 shards of 10: among the first 30, exactly 2 corrupt JPEGs, 3 bad JSON, 2 image-count
    mismatches and 2 over-long samples; then the last shard's tar is cut in the middle."""
    import numpy as np

    rng = np.random.default_rng(1)
    writer = ShardWriter(root, max_count=10)
    plan = {1: "corrupt_image", 4: "corrupt_image", 2: "bad_json", 7: "bad_json", 12: "bad_json",
            5: "image_count_mismatch", 18: "image_count_mismatch", 9: "too_long", 25: "too_long"}
    for i in range(39):
        sample, images = chat_sample(i, rng)
        kind = plan.get(i)
        if kind == "corrupt_image":
            jpeg = encode_image(40, 40, i, "JPEG")
            sample["messages"][0]["content"] = [{"type": "image"}, {"type": "text", "text": "what?"}]
            images = [("0.jpg", jpeg[: len(jpeg) // 3])]
        elif kind == "image_count_mismatch":
            sample["messages"][0]["content"].insert(0, {"type": "image"})
        elif kind == "too_long":
            sample["messages"][1]["content"] = "blue " * 400
        writer.write(f"s{i:05d}", b'{"messages": [' if kind == "bad_json" else sample, images)
    writer.close()
    last = writer.written[-1]
    cut = last.stat().st_size // 2
    with open(last, "r+b") as f:
        f.truncate(cut)
    manifest = json.loads(manifest_path(last).read_text())
    lost = sum(1 for s in manifest["samples"] if s["offset"] + s["length"] > cut)
    expected = {"corrupt_image": 2, "bad_json": 3, "image_count_mismatch": 2, "too_long": 2, "truncated_shard": lost}
    return expected


def test_bad_data_is_skipped_and_counted_exactly(tmp_path, tiny_processor):
    expected = _bad_shards(tmp_path)
    assert expected["truncated_shard"] > 0
    loader = PackedLoader(_spec(tmp_path, length_policy="drop", max_error_rate=1.0, num_workers=2), tiny_processor)
    keys = _keys(list(loader))
    assert loader.skip_counts() == expected
    assert len(keys) == 39 - sum(expected.values())
    assert loader.samples_seen() == 39


def test_run_stops_past_the_error_rate(tmp_path, tiny_processor):
    _bad_shards(tmp_path)
    loader = PackedLoader(_spec(tmp_path, length_policy="drop", max_error_rate=0.05, min_samples_for_error_rate=10),
                          tiny_processor)
    with pytest.raises(RuntimeError, match="max_error_rate"):
        list(loader)


def test_prompt_mode_every_prompt_once_resumable_and_too_long_counted(tmp_path, shards, tiny_processor):
    """objective=grpo's prompt mode: every prompt once over 2 ranks x 2 workers, rows_per_batch prompts per
    batch; a resume continues the stream; a prompt that leaves no room for the completion is skipped as too_long
    and a document (no final answer) as such, both counted."""
    ledger = []
    for rank in range(2):
        loader = PackedLoader(_spec(shards, num_workers=2, prompts=True, rows_per_batch=3, completion_room=16),
                              tiny_processor, rank=rank, world_size=2)
        batches = list(loader)
        assert all(len(b.prompts) <= 3 for b in batches) and any(len(b.prompts) == 3 for b in batches)
        assert all(b.prompts[0].sample.expected and b.prompts[0].events for b in batches)
        ledger += _keys(batches)
    assert len(ledger) == 60 and len(set(ledger)) == 60

    spec = _spec(shards, num_workers=2, epochs=None, prompts=True, rows_per_batch=2, completion_room=16)
    it = iter(PackedLoader(spec, tiny_processor))
    reference = [next(it).sample_keys for _ in range(6)]
    first = PackedLoader(spec, tiny_processor)
    it = iter(first)
    for _ in range(2):
        next(it)
    resumed = PackedLoader(spec, tiny_processor)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    it = iter(resumed)
    assert [next(it).sample_keys for _ in range(4)] == reference[2:]

    writer = ShardWriter(tmp_path / "mixed", prefix="m", max_count=10)
    writer.write("short", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]})
    writer.write("long", {"messages": [{"role": "user", "content": "word " * 300},
                                       {"role": "assistant", "content": "yes"}]})
    writer.write("doc", {"segments": [{"type": "text", "text": "a plain document"}]})
    writer.close()
    loader = PackedLoader(_spec(tmp_path / "mixed", prompts=True, rows_per_batch=4, completion_room=16),
                          tiny_processor)
    assert _keys(list(loader)) == ["unit/short"]
    assert loader.skip_counts() == {"too_long": 1, "document": 1}
