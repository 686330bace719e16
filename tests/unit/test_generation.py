"""generate(): KV cache equals recomputation, batched padded prompts equal single ones, decode positions."""

from __future__ import annotations

import torch

from isaac_train.processing.tensor_stream import Event, TensorStream

from ..conftest import make_document

GREEDY = {"do_sample": False, "max_new_tokens": 8, "eos_token_id": None, "pad_token_id": 0}


def _prompt(seed, pieces):
    doc = make_document(torch.Generator().manual_seed(seed), pieces)
    return {**doc, "input_ids": doc["input_ids"][None]}


def test_cache_equals_no_cache(tiny_model):
    prompt = _prompt(0, [9, (4, 6), 5, (2, 2), 3])
    with torch.no_grad():
        cached = tiny_model.generate(**prompt, **GREEDY)
        recomputed = tiny_model.generate(**prompt, **GREEDY, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert cached.shape[1] == prompt["input_ids"].shape[1] + 8


def test_cached_logits_equal_full_forward(tiny_model):
    """Step-by-step decoding with the cache gives the logits of one forward over the whole sequence."""
    prompt = _prompt(1, [6, (4, 4), 7])
    with torch.no_grad():
        out = tiny_model.generate(**prompt, **GREEDY, output_logits=True, return_dict_in_generate=True)
        full = tiny_model(input_ids=out.sequences, pixel_values=prompt["pixel_values"],
                          image_grid_hw=prompt["image_grid_hw"]).logits[0]
    n = prompt["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits[0], full[n - 1 + step], atol=1e-5, rtol=0)


def test_left_padded_batch_equals_single_prompts(tiny_model):
    a = _prompt(2, [10, (4, 6), 4])
    b = _prompt(3, [3, (2, 2), 2])
    la, lb = a["input_ids"].shape[1], b["input_ids"].shape[1]
    ids = torch.zeros(2, la, dtype=torch.long)
    mask = torch.zeros(2, la, dtype=torch.long)
    ids[0], mask[0] = a["input_ids"][0], 1
    ids[1, la - lb:], mask[1, la - lb:] = b["input_ids"][0], 1
    batch = {
        "input_ids": ids, "attention_mask": mask,
        "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]]),
        "image_grid_hw": torch.cat([a["image_grid_hw"], b["image_grid_hw"]]),
    }
    with torch.no_grad():
        together = tiny_model.generate(**batch, **GREEDY)[:, la:]
        alone_a = tiny_model.generate(**a, **GREEDY)[:, la:]
        alone_b = tiny_model.generate(**b, **GREEDY)[:, lb:]
    assert torch.equal(together[0], alone_a[0])
    assert torch.equal(together[1], alone_b[0])


def test_decode_positions_continue_after_largest_prefill_position(tiny_model):
    """isaac_spec.md §7.4: a tall image whose h coordinate exceeds t makes decoding jump to max + 1."""
    prompt = _prompt(4, [1, (16, 2)])  # text (t=0), image at t=1 with h up to 7
    with torch.no_grad():
        out = tiny_model(**prompt, use_cache=True)
    assert int(out.rope_deltas[0]) == 8 - prompt["input_ids"].shape[1]


def test_generate_from_a_tensor_stream(tiny_model):
    """The stream is only needed at the first step; input_ids carry the prompt length."""
    prompt = _prompt(5, [4, (4, 6), 3])
    patches, grid = prompt["pixel_values"], prompt["image_grid_hw"][0]
    ids = prompt["input_ids"][0]
    stream = TensorStream([[Event.text(ids[:4]), Event.image(patches, tuple(grid.tolist()), 2), Event.text(ids[-3:])]])
    with torch.no_grad():
        from_stream = tiny_model.generate(input_ids=stream.input_ids(tiny_model.config.image_token_id),
                                          tensor_stream=stream, **GREEDY)
        from_ids = tiny_model.generate(**prompt, **GREEDY)
    assert torch.equal(from_stream, from_ids)


def _favour_image_token(model):
    """Add 100 to the image placeholder's logit at every position (a forward hook on the LM head)."""
    from ..conftest import IMAGE_TOKEN

    def favour(_module, _args, logits):
        bump = torch.zeros(logits.shape[-1], dtype=logits.dtype)
        bump[IMAGE_TOKEN] = 100.0
        return logits + bump

    model.lm_head.register_forward_hook(favour)
    return IMAGE_TOKEN


def test_generation_never_emits_the_image_placeholder(tiny_model):
    """A model whose logits favour <|image_pad|> generates other tokens, greedy, sampling and batched; without the
    suppression it would emit it (and the next step would take it for an image)."""
    image_token = _favour_image_token(tiny_model)
    a, b = _prompt(4, [6, (4, 4), 3]), _prompt(5, [9])
    with torch.no_grad():
        logits = tiny_model(**a).logits[0, -1]
        assert int(logits.argmax()) == image_token  # the model wants the placeholder
        greedy = tiny_model.generate(**a, **GREEDY)
        sampled = tiny_model.generate(**a, do_sample=True, top_k=0, max_new_tokens=8, eos_token_id=None,
                                      pad_token_id=0)
        la, lb = a["input_ids"].shape[1], b["input_ids"].shape[1]
        ids, mask = torch.zeros(2, la, dtype=torch.long), torch.zeros(2, la, dtype=torch.long)
        ids[0], mask[0] = a["input_ids"][0], 1
        ids[1, la - lb:], mask[1, la - lb:] = b["input_ids"][0], 1
        batched = tiny_model.generate(input_ids=ids, attention_mask=mask, pixel_values=a["pixel_values"],
                                      image_grid_hw=a["image_grid_hw"], **GREEDY)
    for out, n in ((greedy, la), (sampled, la), (batched, la)):
        assert out.shape[1] == n + 8
        assert not (out[:, n:] == image_token).any()


def test_callers_suppressed_tokens_are_kept(tiny_model):
    image_token = _favour_image_token(tiny_model)
    prompt = _prompt(6, [7])
    with torch.no_grad():
        first = int(tiny_model.generate(**prompt, **GREEDY)[0, -8])
        out = tiny_model.generate(**prompt, **GREEDY, suppress_tokens=[first])
    generated = out[0, -8:]
    assert not (generated == image_token).any() and not (generated == first).any()
