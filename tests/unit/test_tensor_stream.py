"""TensorStream: positions, modality, slicing, packing several samples into one row."""

from __future__ import annotations

import torch

from isaac_train.processing.tensor_stream import Event, Modality, TensorStream


def _image(h, w, seed=0):
    return Event.image(torch.randn(h * w, 768, generator=torch.Generator().manual_seed(seed)), (h, w), 2)


def test_spec_toy_example_positions():
    """isaac_spec.md §6.5: text 5, image real 4x6, text 3, image real 2x2, text 1."""
    stream = TensorStream([[Event.text(range(5)), _image(4, 6), Event.text(range(3)), _image(2, 2), Event.text([9])]])
    pos = stream.position_ids()[0].tolist()
    assert pos[:5] == [[t, t, t] for t in range(5)]
    assert pos[5:11] == [[5, 0, 0], [5, 0, 1], [5, 0, 2], [5, 1, 0], [5, 1, 1], [5, 1, 2]]
    assert pos[11:] == [[6, 6, 6], [7, 7, 7], [8, 8, 8], [9, 0, 0], [10, 10, 10]]
    assert stream.modality_mask()[0].tolist() == [1] * 5 + [0] * 6 + [1] * 3 + [0] + [1]
    assert stream.shape == (1, 16)


def test_slice_keeps_positions_of_kept_tokens():
    stream = TensorStream([[Event.text(range(4)), _image(4, 6), Event.text(range(3))]])
    full = stream.position_ids()[0]
    cut = stream.slice(6, 13)  # inside the image (tokens 4..9), through to the end
    assert cut.rows[0][0].idx_range == (2, 6)
    assert cut.shape == (1, 7)
    assert torch.equal(cut.position_ids()[0][1:4, 1:], full[7:10, 1:])  # image h/w kept
    assert cut.position_ids()[0][0, 0] == 0  # the cut image is the first time step of the kept stream


def test_packed_stream_equals_documents_alone(tiny_model):
    docs = [
        TensorStream([[Event.text([10, 11, 12]), _image(4, 6, 1), Event.text([13, 14])]]),
        TensorStream([[Event.text([20, 21, 22, 23, 24])]]),
        TensorStream([[_image(2, 2, 2), _image(4, 4, 3), Event.text([30, 31])]]),
    ]
    packed = TensorStream.pack(docs)
    assert packed.cu_seqlens().tolist() == [0, 11, 16, 23]
    pos = packed.position_ids()[0]
    assert pos[11].tolist() == [0, 0, 0] and pos[16].tolist() == [0, 0, 0]
    with torch.no_grad():
        together = tiny_model(tensor_stream=packed).logits[0]
        offset = 0
        for doc in docs:
            alone = tiny_model(tensor_stream=doc).logits[0]
            torch.testing.assert_close(together[offset : offset + len(alone)], alone, atol=1e-5, rtol=0)
            offset += len(alone)


def test_padding_takes_no_time_step():
    pad = Event(Modality.padding, torch.zeros(3, dtype=torch.long), (3, 1, 1), (3, 1, 1), (0, 3))
    stream = TensorStream([[pad, Event.text([5, 6])]])
    assert stream.position_ids()[0].tolist() == [[0, 0, 0]] * 3 + [[0, 0, 0], [1, 1, 1]]
