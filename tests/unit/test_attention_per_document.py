"""sdpa / eager run attention per document (decoder) and per image (vision tower), never over a dense mask.

The reference is what the model did before: one attention call over the whole row (or all patches) with a
dense block-diagonal mask built from the same boundaries. Every case must agree with it within 1e-6 on every
real token (padding tails are not computed any more: their outputs are not compared), gradients included.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from isaac_train.model import attention
from isaac_train.model.packed import PackedLayout

from ..conftest import make_document, pack

CASES = {
    "several documents, padding tail": ([[7, (4, 6), 5], [3, (2, 2), (4, 4), 9], [11], [(6, 2), 4, 2]], 96),
    "one document": ([[9, (4, 4), 20]], None),
    "one document and a padding tail": ([[9, (4, 4), 20]], 64),
    "many tiny documents": ([[1], [2], [1], [3], [2], [2], [1], [2], [5], [2], [2], [1]], 40),
    "equal-length documents and equal-size images": ([[3, (4, 4), 2], [3, (4, 4), 2], [9], [9]], None),
}


def dense_reference(query, key, value, spec, scaling, dropout, training):
    """The old path: one call over the row with a (B, 1, T, T) mask from the segment boundaries."""
    b, _, t, _ = query.shape
    bounds = torch.tensor(spec.segments)
    seg = torch.searchsorted(bounds[1:], torch.arange(b * t), right=True).view(b, t)
    mask = seg[:, :, None] == seg[:, None, :]
    if spec.causal:
        mask &= torch.ones(t, t, dtype=torch.bool).tril()
    mask = mask[:, None]
    if spec.backend == "eager":
        out = attention._eager(query, key, value, mask, scaling, dropout, training)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                             enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2)


def real_positions(batch: dict) -> torch.Tensor:
    cu = batch["cu_seqlens"].tolist()
    keep = torch.ones(cu[-1], dtype=torch.bool)
    for i in batch["packed"].padding:
        keep[cu[i]:cu[i + 1]] = False
    return keep


def packed_batch(docs: list, pad_to: int | None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    batch = pack([make_document(gen, pieces) for pieces in docs], pad_to=pad_to)
    cu = batch["cu_seqlens"].tolist()
    padding = frozenset({len(cu) - 2}) if pad_to else frozenset()
    labels = batch["input_ids"].clone()
    labels[:, ::3] = -100
    if pad_to:
        labels[:, cu[-2]:] = -100  # the padding tail carries no label
    grids = batch["image_grid_hw"]
    batch["labels"] = labels
    batch["packed"] = PackedLayout.from_inputs(
        cu, labels, padding, [] if grids is None else [tuple(g) for g in grids.tolist()],
        int((batch["input_ids"] == 498).sum()),
    )
    return batch


def run(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch, return_logits=True)
    out.loss.backward()  # the mean over label tokens, as training backpropagates it
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach()[0], out.loss_sum.detach(), grads


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("case", list(CASES))
def test_per_document_equals_the_dense_mask(tiny_model, monkeypatch, backend, case):
    docs, pad_to = CASES[case]
    batch = packed_batch(docs, pad_to)
    tiny_model.config.attn_backend = backend
    tiny_model.train()  # dropout is 0 in the tiny config; train mode runs the training path
    logits, loss, grads = run(tiny_model, batch)
    monkeypatch.setattr(attention, "_per_segment", dense_reference)
    ref_logits, ref_loss, ref_grads = run(tiny_model, batch)
    keep = real_positions(batch)
    torch.testing.assert_close(logits[keep], ref_logits[keep], atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_without_a_layout_the_padding_tail_is_attended_as_before(tiny_model, monkeypatch):
    """A caller that gives only cu_seqlens (no PackedLayout) gets every segment computed, padding included."""
    batch = packed_batch(*CASES["several documents, padding tail"])
    plain = {k: v for k, v in batch.items() if k not in ("packed", "labels")}
    with torch.no_grad():
        ours = tiny_model(**plain).logits
        monkeypatch.setattr(attention, "_per_segment", dense_reference)
        ref = tiny_model(**plain).logits
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


class SquareTensors(TorchDispatchMode):
    """Records the ops that produce a tensor whose last two dimensions are (side, side) for a side in `sides`."""

    def __init__(self, sides: set[int]) -> None:
        super().__init__()
        self.sides, self.seen = sides, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            square = isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == t.shape[-2]
            if square and t.shape[-1] in self.sides:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_no_row_by_row_or_patch_by_patch_tensor_is_made(tiny_model, backend):
    """Seven documents in a 96-token row, images of 24 and 16 patches: no (96, 96) mask or score matrix and no
    (40, 40) one over all patches is made, forward or backward; the dense reference does make them."""
    batch = packed_batch([[5, (4, 6), 3], [8], [(4, 4), 6], [9], [7], [12], [10]], 96)
    tiny_model.config.attn_backend = backend
    tiny_model.train()
    with SquareTensors({96, 40}) as mode:
        tiny_model(**batch).loss_sum.backward()
    assert not mode.seen, mode.seen[:5]
    with pytest.MonkeyPatch.context() as patch, SquareTensors({96, 40}) as reference:
        patch.setattr(attention, "_per_segment", dense_reference)
        tiny_model(**batch).loss_sum.backward()
    assert {shape[-1] for _, shape in reference.seen} == {96, 40}  # the check can see a dense mask


def test_compiled_layers_do_not_recompile_for_new_layouts(tiny_model):
    """model.compile compiles each layer: a batch with other documents must not recompile it (the attention,
    whose inputs describe the batch's documents, runs outside the compiled graphs)."""
    import torch._dynamo

    tiny_model.train()
    for block in tiny_model.model.layers:
        block.compile(dynamic=True, backend="eager")  # dynamo's guards are what matters, not the backend
    layouts = [([[7, (4, 6), 5], [11]], 70), ([[3], [9], [20]], 72), ([[5, (2, 2), 8], [2], [2], [30]], 80),
               ([[12], [40]], 96)]
    try:
        for i, (docs, pad_to) in enumerate(layouts):
            torch._dynamo.config.error_on_recompile = i >= 2  # the first two calls settle the dynamic shapes
            tiny_model(**packed_batch(docs, pad_to)).loss.backward()
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()
