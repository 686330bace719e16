"""IsaacConfig reads Perceptron's config.json as published (0.1 flat, 0.2 nested) and writes it back."""

from __future__ import annotations

import json
import logging

import pytest

from isaac_train import IsaacConfig

VISION = {
    "model_type": "pixel_shuffle_siglip2", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "patch_size": 16, "num_patches": 256, "pixel_shuffle_scale_factor": 2,
    "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
TEXT = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "bos_token_id": 151643, "eos_token_id": 151645,
}
TOP = {"model_type": "isaac", "video_patch_size": 16, "vision_max_num_patches": 6144, "vision_min_num_patches": 256,
       "pixel_shuffle_scale": 2, "max_sequence_length": 16384, "vision_token": "<image>"}


def _write(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return IsaacConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 1e6},
        {"_rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
        {"_rope_scaling": {"rope_type": "default", "rope_theta": 1e6}},
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
    ],
)
def test_isaac_01_flat_config(tmp_path, rope):
    cfg = _write(tmp_path, {**TOP, **TEXT, **rope, "vision_config": VISION})
    assert cfg.checkpoint_layout == "0.1"
    assert cfg.text_config.hidden_size == 2048 and cfg.text_config.num_key_value_heads == 8
    assert cfg.rope_theta == 1e6
    assert cfg.mrope_section == [32, 16, 16]
    assert cfg.video_patch_size == 16 and cfg.vision_max_num_patches == 6144 and cfg.vision_min_num_patches == 256
    assert cfg.eos_token_id == 151645
    saved = cfg.to_dict()
    assert "text_config" not in saved and saved["hidden_size"] == 2048 and saved["rope_theta"] == 1e6


def test_isaac_02_nested_config(tmp_path):
    text = {**TEXT, "model_type": "qwen3", "rope_scaling": {"rope_type": "default", "mrope_section": [32, 16, 16]},
            "rope_theta": 1e6}
    cfg = _write(tmp_path, {**TOP, "text_config": text, "vision_config": VISION, "vision_mean": [0.5] * 3})
    assert cfg.checkpoint_layout == "0.2"
    assert cfg.rope_theta == 1e6 and cfg.mrope_section == [32, 16, 16]
    assert cfg.to_dict()["text_config"]["hidden_size"] == 2048
    cfg.save_pretrained(tmp_path / "again")
    again = IsaacConfig.from_pretrained(tmp_path / "again")
    assert again.checkpoint_layout == "0.2" and again.text_config.to_dict() == cfg.text_config.to_dict()


def test_missing_theta_is_never_silently_10000(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = _write(tmp_path, {**TOP, **TEXT, "vision_config": VISION})
    assert cfg.rope_theta == 1e6
    assert "rope theta" in caplog.text


def test_bad_mrope_section_names_the_field(tmp_path):
    text = {**TEXT, "rope_scaling": {"rope_type": "default", "mrope_section": [32, 16, 8]}, "rope_theta": 1e6}
    with pytest.raises(ValueError, match="mrope_section"):
        _write(tmp_path, {**TOP, "text_config": text, "vision_config": VISION})


def test_scaled_rope_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rope_type"):
        _write(tmp_path, {**TOP, **TEXT, "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6},
                          "vision_config": VISION})


def test_inconsistent_pixel_shuffle_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pixel_shuffle_scale"):
        _write(tmp_path, {**TOP, **TEXT, "rope_theta": 1e6, "pixel_shuffle_scale": 1, "vision_config": VISION})


def test_unknown_attention_backend_is_refused():
    with pytest.raises(ValueError, match="attn_backend"):
        IsaacConfig(attn_backend="flash3", vision_config=VISION, text_config={**TEXT, "rope_theta": 1e6},
                    pixel_shuffle_scale=2)
