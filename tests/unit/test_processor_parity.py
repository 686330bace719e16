"""Our processor against Perceptron's reference processor (tests/golden/reference_processor, made by
tests/golden/make_processor_golden.py): resize, patches, grids, text ids, positions, truncation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from isaac_train.processing.image_processing import (
    IsaacImageProcessorFast,
    resize_uint8,
    to_rgb_uint8,
)
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tensor_stream import Modality

from ..golden.golden_images import golden_images

GOLDEN = Path(__file__).parents[1] / "golden" / "reference_processor"
META = json.loads((GOLDEN / "golden.json").read_text())
CONFIGS = META["configs"]


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def tensors():
    return load_file(GOLDEN / "golden.safetensors")


@pytest.fixture(scope="module")
def images():
    return golden_images()


def _image_processor(cfg: str) -> IsaacImageProcessorFast:
    c = CONFIGS[cfg]
    return IsaacImageProcessorFast(patch_size=c["vision_patch_size"], pixel_shuffle_scale=c["pixel_shuffle_scale"],
                                   max_num_patches=c["vision_max_num_patches"],
                                   min_num_patches=c["vision_min_num_patches"])


@pytest.mark.parametrize("cfg", ["tiny", "real"])
@pytest.mark.parametrize("name", sorted(META["images"]))
def test_image_matches_reference(images, tensors, name, cfg):
    record = META["images"][name]
    expected = record["configs"][cfg]
    ip = _image_processor(cfg)
    rgb = to_rgb_uint8(images[name])
    assert _sha(rgb) == record["rgb_sha256"], "RGB conversion differs (mode handling)"
    target = ip.target_size(rgb.shape[0], rgb.shape[1])
    assert list(target) == expected["target_hw"]
    assert _sha(resize_uint8(rgb, target)) == expected["resized_u8_sha256"], "uint8 bilinear resize differs"
    patches, grid = ip.process_one(images[name])
    assert [1, *grid] == expected["dims_real"]
    assert list(patches.shape) == expected["patches_shape"]
    if expected["patches_stored"] == "full":
        assert torch.equal(patches, tensors[expected["patches_key"]])
    else:
        assert torch.equal(patches[expected["sample_rows"]], tensors[expected["patch_rows_key"]])
    assert _sha(patches) == expected["patches_sha256"], "patches are not bit-identical"


@pytest.mark.parametrize("name", sorted(META["prompts"]))
def test_prompt_matches_reference(images, tensors, tiny_tokenizer, name):
    record = META["prompts"][name]
    settings = {**CONFIGS[record["config"]], **record.get("config_overrides", {})}
    settings["video_patch_size"] = settings.pop("vision_patch_size")
    processor = IsaacProcessor.from_settings(tiny_tokenizer, settings)
    truncated = record["num_tokens_before_truncation"] > record["num_tokens"]
    batch = processor(text=record["text"], images=[images[n] for n in record["images"]],
                      truncation="left" if truncated else False)
    stream = batch["tensor_stream"]
    events = stream.rows[0]
    assert [e.type.name for e in events] == [e["type"] for e in record["events"]]
    for ours, ref in zip(events, record["events"], strict=True):
        assert list(ours.idx_range) == ref["idx_range"]
        assert list(ours.dims_real[: len(ref["dims_real"])]) == ref["dims_real"]
        if ref["type"] == "text":
            assert ours.data.tolist() == ref["ids"]
    modality = tensors[f"prompt.{name}.modality"]
    assert torch.equal(stream.modality_mask()[0], modality)
    text = modality == int(Modality.text)
    assert torch.equal(batch["input_ids"][0][text], tensors[f"prompt.{name}.input_ids"][text])
    assert (batch["input_ids"][0][~text] == processor.image_token_id).all()
    ref_pos = tensors[f"prompt.{name}.positions"].clone()
    ref_pos[text] = ref_pos[text][:, :1].expand(-1, 3)  # the reference's rotary turns text (t,0,0) into (t,t,t)
    assert torch.equal(stream.position_ids()[0], ref_pos)
