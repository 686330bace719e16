"""A packed preference pair is exactly its two documents alone: per-answer log-probabilities, the DPO loss and
its gradients from the packed row (data/packing.py pair mode, model/loss.py lm_group_logps) equal those from one
unpacked forward per document (the SFT token loss of each document alone, another code path), with images, and
whether the vision tower sees a pair's images once (shared) or once per document."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isaac_train.data.decode import encode_pair
from isaac_train.data.packing import build_batch, item_from_pair, item_from_sample
from isaac_train.objectives.preference_loss import preference_losses

from ..data_helpers import pair_sample

IMAGES = (1, 2, 0, 1)  # images per pair's prompt
PAD = 0


def encoded_pairs(processor):
    rng = np.random.default_rng(3)
    pairs = []
    for i, n in enumerate(IMAGES):
        sample, pictures = pair_sample(i, rng, images=n)
        members = {"json": json.dumps(sample).encode(), **dict(pictures)}
        pairs.append(encode_pair(members, processor, 4096, normalize_pixels=False))
    return pairs


def dpo_loss(logps: torch.Tensor, ref: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    p, r, n = logps.view(-1, 2), ref.view(-1, 2), tokens.view(-1, 2)
    return preference_losses(p[:, 0], p[:, 1], r[:, 0], r[:, 1], n[:, 0], n[:, 1], beta=0.1).loss.sum()


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("shared", [True, False], ids=["vision_once_per_pair", "vision_per_document"])
def test_packed_pairs_equal_their_documents_alone(tiny_model, tiny_processor, shared):
    model = tiny_model.train()
    pairs = encoded_pairs(tiny_processor)
    items = [item_from_pair(c, r, None, f"p{i}", shared_images=shared) for i, (c, r) in enumerate(pairs)]
    rows = [items[:2], items[2:]]  # two pairs per row: documents of different pairs share a row
    seq_len = max(sum(it.length for it in row) for row in rows) + 7  # and a padding tail
    batch = build_batch(rows, seq_len, PAD)
    assert batch.num_pairs == len(pairs)
    patches = [0 if c.pixel_values is None else c.pixel_values.shape[0] for c, _ in pairs]
    assert batch.pixel_values.shape[0] == sum(patches) * (1 if shared else 2)  # what the vision tower encodes

    packed = model(**batch.model_inputs()).group_logps
    tokens = torch.tensor(batch.layout.group_tokens, dtype=torch.float32)
    ref = packed.detach() + torch.randn(packed.shape, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float32)  # any fixed reference
    dpo_loss(packed, ref, tokens).backward()
    packed_grads = grads(model)

    alone, alone_tokens = [], []
    for chosen, rejected in pairs:
        for doc in (chosen, rejected):
            one = build_batch([[item_from_sample(doc, None, "d")]], len(doc), PAD)
            out = model(**one.model_inputs())
            alone.append(-out.loss_sum)  # the document's summed token log-probability (SFT's loss path)
            alone_tokens.append(one.num_label_tokens)
    alone = torch.stack(alone)
    assert batch.layout.group_tokens == alone_tokens
    torch.testing.assert_close(packed.detach(), alone.detach(), atol=1e-5, rtol=0)
    loss = dpo_loss(alone, ref, tokens)
    loss.backward()
    alone_grads = grads(model)
    assert abs(dpo_loss(packed.detach(), ref, tokens) - loss.detach()) < 1e-6
    assert packed_grads.keys() == alone_grads.keys()
    assert any("vision" in name for name in packed_grads)  # the images were in the graph
    for name, g in alone_grads.items():
        torch.testing.assert_close(packed_grads[name], g, atol=1e-6, rtol=0, msg=name)
