"""Save/load in both Perceptron layouts, Auto classes, and state dicts of either layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

import isaac_train
from isaac_train.model.layouts import load_state_dict_any_layout, to_layout

from ..conftest import GOLDEN_DIR


def _keys(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("layout", ["0.1", "0.2"])
def test_round_trip_is_exact(tiny_model, tmp_path, layout):
    tiny_model.config.checkpoint_layout = layout
    tiny_model.save_pretrained(tmp_path)
    keys = _keys(tmp_path)
    text_prefix = "model.layers.0." if layout == "0.1" else "model.text_model.layers.0."
    assert any(k.startswith(text_prefix) for k in keys)
    assert "lm_head.weight" in keys and "model.vision_embedding.1.weight" in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert ("text_config" in config) == (layout == "0.2")
    assert config["video_patch_size"] == 16 and config["vision_config"]["model_type"] == "pixel_shuffle_siglip2"

    loaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, isaac_train.IsaacForConditionalGeneration)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.checkpoint_layout == layout
    ours, theirs = tiny_model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("layout", ["0.1", "0.2"])
def test_state_dict_of_either_layout_loads_strictly(tiny_model, layout):
    fresh = isaac_train.IsaacForConditionalGeneration(tiny_model.config)
    load_state_dict_any_layout(fresh, to_layout(tiny_model.state_dict(), layout))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tiny_model.state_dict().values(),
                                                 strict=True))


def test_rotary_buffers_in_a_checkpoint_are_ignored(tiny_model):
    sd = to_layout(tiny_model.state_dict(), "0.2")
    sd["model.rotary_emb.inv_freq"] = torch.ones(8)
    load_state_dict_any_layout(isaac_train.IsaacForConditionalGeneration(tiny_model.config), sd)


def test_auto_classes_resolve_the_reference_checkpoint():
    config = AutoConfig.from_pretrained(GOLDEN_DIR)
    assert isinstance(config, isaac_train.IsaacConfig) and config.checkpoint_layout == "0.1"
    assert config.rope_theta == 1e6 and config.mrope_section == [4, 2, 2]
    assert isinstance(AutoModelForCausalLM.from_pretrained(GOLDEN_DIR), isaac_train.IsaacForConditionalGeneration)
    base, info = AutoModel.from_pretrained(GOLDEN_DIR, output_loading_info=True)
    assert isinstance(base, isaac_train.IsaacModel) and info["unexpected_keys"] == {"lm_head.weight"}


def test_lm_head_stays_untied(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)
