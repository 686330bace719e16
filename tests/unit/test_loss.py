"""The loss: sum and count over label tokens, shifted within documents, equal to plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from isaac_train.model.loss import IGNORE_INDEX, lm_loss_sum, shift_labels

from ..conftest import IMAGE_TOKEN, make_document, pack


def _labels(ids):
    labels = ids.clone()
    labels[ids == IMAGE_TOKEN] = IGNORE_INDEX
    return labels


def test_loss_equals_cross_entropy_on_full_logits(tiny_model):
    docs = [make_document(torch.Generator().manual_seed(i), p) for i, p in enumerate([[5, (4, 6), 9], [12]])]
    batch = pack(docs, pad_to=48)
    labels = _labels(batch["input_ids"])
    labels[0, sum(len(d["input_ids"]) for d in docs):] = IGNORE_INDEX  # padding tail
    out = tiny_model(**batch, labels=labels, return_logits=True)
    # Reference: per document, standard shift-by-one cross-entropy on the full fp32 logits.
    total, count, start = 0.0, 0, 0
    for doc in docs:
        n = len(doc["input_ids"])
        logits = out.logits[0, start : start + n - 1].float()
        target = labels[0, start + 1 : start + n]
        keep = target != IGNORE_INDEX
        total = total + F.cross_entropy(logits[keep], target[keep], reduction="sum")
        count += int(keep.sum())
        start += n
    assert int(out.num_label_tokens) == count
    torch.testing.assert_close(out.loss_sum, total, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(out.loss, total / count, atol=1e-6, rtol=1e-6)


def test_shift_never_crosses_a_document_start():
    labels = torch.arange(10)[None]
    starts = torch.zeros(1, 10, dtype=torch.bool)
    starts[0, [0, 4, 7]] = True
    shifted = shift_labels(labels, starts)[0].tolist()
    assert shifted == [1, 2, 3, IGNORE_INDEX, 5, 6, IGNORE_INDEX, 8, 9, IGNORE_INDEX]


def test_chunking_and_recomputation_do_not_change_values_or_gradients():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 50, 16, generator=gen, requires_grad=True)
    weight = torch.randn(40, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (3, 50), generator=gen)
    targets[:, ::3] = IGNORE_INDEX
    s1, n1 = lm_loss_sum(hidden, weight, targets, chunk_size=7)
    g1 = torch.autograd.grad(s1, (hidden, weight))
    logits = hidden @ weight.T
    s2 = F.cross_entropy(logits.reshape(-1, 40), targets.reshape(-1), reduction="sum", ignore_index=IGNORE_INDEX)
    g2 = torch.autograd.grad(s2, (hidden, weight))
    assert int(n1) == int((targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_label_tokens_gives_zero_with_a_connected_graph(tiny_model):
    ids = torch.tensor([[7, 8, 9]])
    tiny_model.train()
    out = tiny_model(input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX))
    assert out.loss_sum.item() == 0.0 and int(out.num_label_tokens) == 0
    out.loss_sum.backward()
    assert tiny_model.lm_head.weight.grad is not None


def test_training_with_labels_returns_no_logits(tiny_model):
    tiny_model.train()
    out = tiny_model(input_ids=torch.tensor([[7, 8, 9, 10]]), labels=torch.tensor([[7, 8, 9, 10]]))
    assert out.logits is None and out.loss is not None
