"""Our implementation against Perceptron's reference code on the same tiny random weights.

The golden tensors in tests/golden/reference_tiny were produced by tests/golden/make_reference_golden.py
(Perceptron's modular_isaac.py under transformers 4.57.3); see tests/golden/README.md.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from isaac_train.processing.tensor_stream import Event, TensorStream

from ..conftest import GOLDEN_DIR

CASES = ["case0", "case1", "case2"]


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN_DIR / "golden.json").read_text())
    return meta, load_file(GOLDEN_DIR / "golden.safetensors")


@pytest.fixture(scope="module")
def reference_model():
    model, info = AutoModelForImageTextToText.from_pretrained(GOLDEN_DIR, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.config.attn_backend = "sdpa"
    return model.eval()


def stream_for(meta: dict, tensors: dict, case: str, merge: int) -> TensorStream:
    events, offset = [], 0
    grids = tensors.get(f"{case}.grids")
    for seg in meta["cases"][case]["segments"]:
        if seg["type"] == "text":
            events.append(Event.text(seg["ids"]))
        else:
            h, w = grids[seg["index"]].tolist()
            events.append(Event.image(tensors[f"{case}.patches"][offset : offset + h * w], (h, w), merge))
            offset += h * w
    return TensorStream([events])


@pytest.mark.parametrize("case", CASES)
def test_logits_match_reference_from_stream(golden, reference_model, case):
    meta, tensors = golden
    stream = stream_for(meta, tensors, case, merge=2)
    with torch.no_grad():
        logits = reference_model(tensor_stream=stream).logits[0]
    torch.testing.assert_close(logits, tensors[f"{case}.logits"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_logits_match_reference_from_ids(golden, reference_model, case):
    """The placeholder-id path (what packed batches use) gives the same logits as the stream path."""
    meta, tensors = golden
    stream = stream_for(meta, tensors, case, merge=2)
    patches, grids = stream.image_patches()
    ids = stream.input_ids(reference_model.config.image_token_id)
    with torch.no_grad():
        logits = reference_model(input_ids=ids, pixel_values=patches, image_grid_hw=grids).logits[0]
    torch.testing.assert_close(logits, tensors[f"{case}.logits"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_positions_and_rotary_match_reference(golden, reference_model, case):
    meta, tensors = golden
    stream = stream_for(meta, tensors, case, merge=2)
    ref_pos = tensors[f"{case}.positions"]
    is_text = tensors[f"{case}.modality"] == 1
    expected = ref_pos.clone()
    expected[is_text] = ref_pos[is_text, :1].expand(-1, 3)  # the reference turns text (t,0,0) into (t,t,t)
    ours = stream.position_ids()[0]
    assert torch.equal(ours, expected)
    from_ids = reference_model.model.compute_position_ids(
        stream.input_ids(reference_model.config.image_token_id), stream.image_patches()[1],
        torch.nn.functional.pad(torch.ones(1, 1, dtype=torch.bool), (0, ours.shape[0] - 1)),
    )[0]
    assert torch.equal(from_ids, expected)
    cos, sin = reference_model.model.rotary_emb(ours[None], torch.float32)
    torch.testing.assert_close(cos[0], tensors[f"{case}.cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0], tensors[f"{case}.sin"], atol=1e-6, rtol=0)


def test_vision_tower_matches_reference(golden, reference_model):
    _, tensors = golden
    vision = reference_model.model.vision_embedding
    with torch.no_grad():
        shuffled = vision[0](tensors["case1.patches"], tensors["case1.grids"])
        features = vision(tensors["case1.patches"], tensors["case1.grids"])
    torch.testing.assert_close(shuffled, tensors["case1.vision_tower_shuffled"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features, tensors["case1.vision_features"], atol=1e-5, rtol=0)
