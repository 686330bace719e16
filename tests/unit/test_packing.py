"""Packed rows: documents never see each other, positions restart, images stay in their own document."""

from __future__ import annotations

import pytest
import torch

from ..conftest import IMAGE_TOKEN, make_document, pack, single

DOCS = [
    [7, (4, 6), 5],  # text, one image (real grid 4x6 -> 6 tokens), text
    [3, (2, 2), (4, 4), 9],  # two adjacent images of different sizes
    [11],  # text only
    [(6, 2), 4, (2, 8), 2],  # starts with an image
]


def _docs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [make_document(gen, pieces) for pieces in DOCS]


def _doc_slices(docs):
    bounds = torch.tensor([0] + [len(d["input_ids"]) for d in docs]).cumsum(0).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_packed_row_equals_documents_alone(tiny_model):
    docs = _docs()
    with torch.no_grad():
        packed = tiny_model(**pack(docs, pad_to=80)).logits[0]
        for doc, sl in zip(docs, _doc_slices(docs), strict=True):
            alone = tiny_model(**single(doc)).logits[0]
            torch.testing.assert_close(packed[sl], alone, atol=1e-5, rtol=0)


def test_changing_one_document_leaves_others_bit_identical(tiny_model):
    docs = _docs()
    changed = [dict(d) for d in docs]
    changed[1]["pixel_values"] = changed[1]["pixel_values"] + 1.0  # another image
    changed[2]["input_ids"] = changed[2]["input_ids"].roll(1)  # other tokens
    with torch.no_grad():
        a = tiny_model(**pack(docs)).logits[0]
        b = tiny_model(**pack(changed)).logits[0]
    slices = _doc_slices(docs)
    for i in (0, 3):
        assert torch.equal(a[slices[i]], b[slices[i]])
    for i in (1, 2):
        assert not torch.equal(a[slices[i]], b[slices[i]])


def test_vision_attention_never_crosses_images(tiny_model):
    gen = torch.Generator().manual_seed(1)
    grids = torch.tensor([[4, 6], [2, 2], [8, 4]])
    patches = torch.randn(int((grids[:, 0] * grids[:, 1]).sum()), 768, generator=gen)
    vision = tiny_model.model.vision_embedding
    with torch.no_grad():
        together = vision(patches, grids)
        alone = torch.cat([vision(p, g[None]) for p, g in zip(patches.split([24, 4, 32]), grids, strict=True)])
        poked = patches.clone()
        poked[24:28] += 3.0  # change the second image only
        after = vision(poked, grids)
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    assert torch.equal(after[:6], together[:6]) and torch.equal(after[7:], together[7:])
    assert not torch.equal(after[6], together[6])


def test_positions_restart_per_document(tiny_model):
    docs = _docs()
    batch = pack(docs)
    starts = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    starts[0, batch["cu_seqlens"][:-1].long()] = True
    packed_pos = tiny_model.model.compute_position_ids(batch["input_ids"], batch["image_grid_hw"], starts)[0]
    for doc, sl in zip(docs, _doc_slices(docs), strict=True):
        ids = doc["input_ids"][None]
        first = torch.zeros_like(ids, dtype=torch.bool)
        first[0, 0] = True
        alone = tiny_model.model.compute_position_ids(ids, doc["image_grid_hw"], first)[0]
        assert torch.equal(packed_pos[sl], alone)
        assert packed_pos[sl][0, 0] == 0


def test_position_layout_matches_spec_example(tiny_model):
    """isaac_spec.md §6.5: text 5, image real 4x6, text 3, image real 2x2, text 1."""
    ids = torch.tensor([[1, 1, 1, 1, 1] + [IMAGE_TOKEN] * 6 + [1, 1, 1] + [IMAGE_TOKEN] + [1]])
    grids = torch.tensor([[4, 6], [2, 2]])
    first = torch.zeros_like(ids, dtype=torch.bool)
    first[0, 0] = True
    pos = tiny_model.model.compute_position_ids(ids, grids, first)[0].tolist()
    expected = [[t, t, t] for t in range(5)]
    expected += [[5, 0, 0], [5, 0, 1], [5, 0, 2], [5, 1, 0], [5, 1, 1], [5, 1, 2]]
    expected += [[t, t, t] for t in (6, 7, 8)] + [[9, 0, 0], [10, 10, 10]]
    assert pos == expected


def test_image_count_mismatch_is_a_clear_error(tiny_model):
    doc = make_document(torch.Generator().manual_seed(0), [3, (4, 6), 2])
    doc["input_ids"] = doc["input_ids"][:-3]  # drop placeholder tokens
    with pytest.raises(ValueError, match="image tokens"):
        tiny_model(**single(doc))


def test_cu_seqlens_must_cover_the_row(tiny_model):
    batch = pack(_docs())
    batch["cu_seqlens"] = batch["cu_seqlens"][:-1]
    with pytest.raises(ValueError, match="cu_seqlens"):
        tiny_model(**batch)
