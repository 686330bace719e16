"""A directory shaped like Perceptron's hub checkpoints (remote-code auto_map, processor_config.json with a
nested config) loads with our classes through the Auto API, without importing the remote code."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

import isaac_train

from ..conftest import GOLDEN_DIR


@pytest.fixture
def perceptron_dir(tmp_path, tiny_tokenizer):
    d = tmp_path / "Isaac-tiny"
    shutil.copytree(GOLDEN_DIR, d)
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modular_isaac.IsaacConfig",
                          "AutoModelForCausalLM": "modular_isaac.IsaacForConditionalGeneration"}
    (d / "config.json").write_text(json.dumps(config))
    (d / "modular_isaac.py").write_text("raise RuntimeError('remote code must not be imported')\n")
    tiny_tokenizer.save_pretrained(d)
    (d / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "modular_isaac.IsaacProcessor"}, "processor_class": "IsaacProcessor",
        "config": {"vision_max_num_patches": 6144, "vision_min_num_patches": 256, "video_patch_size": 16,
                   "pixel_shuffle_scale": 2, "max_sequence_length": 16384, "vision_token": "<image>"},
    }))
    return d


def test_auto_classes_load_our_implementation(perceptron_dir):
    assert isinstance(AutoConfig.from_pretrained(perceptron_dir), isaac_train.IsaacConfig)
    assert isinstance(AutoModelForCausalLM.from_pretrained(perceptron_dir), isaac_train.IsaacForConditionalGeneration)
    model = AutoModelForImageTextToText.from_pretrained(perceptron_dir)
    assert isinstance(model, isaac_train.IsaacForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(perceptron_dir)
    assert isinstance(processor, isaac_train.IsaacProcessor)
    # processor_config.json's nested config wins over config.json's tiny values
    assert processor.image_processor.max_num_patches == 6144 and processor.image_processor.min_num_patches == 256
    assert processor.max_sequence_length == 16384
