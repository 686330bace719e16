"""A training step on packed rows: activation checkpointing changes nothing, bf16 runs, meta-device init."""

from __future__ import annotations

import copy

import torch

import isaac_train
from isaac_train.model.tiny import tiny_config

from ..conftest import IMAGE_TOKEN, make_document, pack


def _batch():
    pieces = [[5, (4, 6), 3], [9], [(2, 2), 4]]
    docs = [make_document(torch.Generator().manual_seed(i), p) for i, p in enumerate(pieces)]
    batch = pack(docs, pad_to=40)
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == IMAGE_TOKEN, -100)
    return batch


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_identical_gradients(tiny_model):
    model = tiny_model.train()
    batch = _batch()
    plain = model(**batch)
    plain.loss.backward()
    expected = _grads(model)
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ckpt = model(**batch)
    ckpt.loss.backward()
    assert torch.equal(plain.loss, ckpt.loss)
    for name, grad in _grads(model).items():
        assert torch.equal(grad, expected[name]), name


def test_bf16_step_is_finite_and_close_to_fp32(tiny_model):
    batch = _batch()
    fp32 = tiny_model.train()(**batch).loss
    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    out = model(**{**batch, "pixel_values": batch["pixel_values"].bfloat16()})
    out.loss.backward()
    assert abs(out.loss.item() - fp32.item()) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_builds_on_the_meta_device():
    with torch.device("meta"):
        model = isaac_train.IsaacForConditionalGeneration(tiny_config())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert not list(model.buffers()), "no buffers: nothing to re-materialise after sharding"
