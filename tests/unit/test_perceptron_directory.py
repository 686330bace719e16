"""A directory shaped like Perceptron's hub checkpoints (remote-code auto_map, processor_config.json with a
nested config) loads with our classes through the Auto API, without importing the remote code."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

import isaac_train


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
