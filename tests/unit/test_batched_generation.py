"""Batched evaluation generation: left-padded batches answer as each prompt alone does (mixed prompt lengths and
image counts, every batch size), never emit the image placeholder, and the rank split covers each sample once."""

from __future__ import annotations

import io

import PIL.Image
import pytest
import torch

from isaac_train.eval.generate import generate_answers, generate_batch, merge_answers, rank_share
from isaac_train.eval.samples import EvalSample

from ..data_helpers import encode_image
from .test_generation import _favour_image_token


def _samples() -> list[EvalSample]:
    """Prompts of 0, 1 and 2 images of different sizes and questions of different lengths."""
    shapes = [[], [(32, 48)], [(16, 16), (48, 32)], [], [(64, 32)], [(32, 32)], [], [(16, 48), (32, 16)]]
    out = []
    for i, sizes in enumerate(shapes):
        words = " ".join(["red circle"] * (1 + 3 * (i % 3)))
        content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": f"Question {i}: {words}?"}]
        out.append(EvalSample(f"s{i}", [{"role": "user", "content": content}], "red",
                              [encode_image(h, w, i * 10 + k) for k, (h, w) in enumerate(sizes)]))
    return out


@pytest.mark.parametrize("batch_size", [3, 8])
def test_batched_answers_equal_unbatched(tiny_model, tiny_processor, batch_size):
    samples = _samples()
    alone = [generate_batch(tiny_model, tiny_processor, [s], max_new_tokens=10)[0] for s in samples]
    together = generate_answers(tiny_model, tiny_processor, samples, batch_size=batch_size, max_new_tokens=10)
    assert together == alone
    assert len(set(alone)) > 1  # the prompts do lead to different answers


def test_a_batch_is_really_left_padded(tiny_model, tiny_processor):
    """The batch holds prompts of different lengths (so padding happens) and still equals the single answers."""
    samples = _samples()[:3]
    prompts = [tiny_processor.apply_chat_template(s.messages, add_generation_prompt=True) for s in samples]
    lengths = {int(tiny_processor(text=p, images=[PIL.Image.open(io.BytesIO(b)) for b in s.images] or None)
                   ["input_ids"].shape[1]) for p, s in zip(prompts, samples, strict=True)}
    assert len(lengths) == 3
    assert generate_answers(tiny_model, tiny_processor, samples, batch_size=3, max_new_tokens=10) == [
        generate_batch(tiny_model, tiny_processor, [s], max_new_tokens=10)[0] for s in samples]


def test_batched_generation_never_emits_the_image_placeholder(tiny_model, tiny_processor, monkeypatch):
    """The ids generate() returns (the decoded text would hide a special token) hold no placeholder."""
    image_token = _favour_image_token(tiny_model)
    outputs, generate = [], tiny_model.generate

    def recording(**kwargs):
        out = generate(**kwargs)
        outputs.append(out[:, kwargs["input_ids"].shape[1]:])
        return out

    monkeypatch.setattr(tiny_model, "generate", recording)
    samples = _samples()
    generate_answers(tiny_model, tiny_processor, samples, batch_size=4, max_new_tokens=6)
    torch.manual_seed(0)
    generate_answers(tiny_model, tiny_processor, samples, batch_size=4, max_new_tokens=6, do_sample=True, top_k=0)
    assert len(outputs) == 4 and all(o.shape[1] == 6 for o in outputs)
    assert not any((o == image_token).any() for o in outputs)


def test_rank_shares_cover_every_sample_once():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            shares = [rank_share(n, r, world) for r in range(world)]
            flat = sorted(i for s in shares for i in s)
            assert flat == list(range(n))
            equal = [rank_share(n, r, world, equal=True) for r in range(world)]
            assert len({len(s) for s in equal}) <= 1  # sharded weights: every rank runs as many batches
            assert sorted(i for s in equal for i in s if i is not None) == list(range(n))


def test_merge_refuses_twice_and_missing():
    assert merge_answers([{0: "a", 2: "c"}, {1: "b"}], 3) == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="two ranks"):
        merge_answers([{0: "a"}, {0: "a", 1: "b"}], 2)
    with pytest.raises(RuntimeError, match="no rank"):
        merge_answers([{0: "a"}], 2)
