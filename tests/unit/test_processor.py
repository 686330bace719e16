"""IsaacProcessor: the model card flow, batching, labels, bad input."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from isaac_train.processing.processor import IGNORE_INDEX, SampleTooLongError


def _image(h, w, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tiny_processor):
    tiny_model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    return tmp_path


def test_model_card_usage_example(checkpoint):
    """Render the chat, process text and two images, generate, decode (the Isaac model card's flow)."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                     {"type": "text", "text": "Where is the red circle?"}]},
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n<image><image>Where is the red circle?<|im_end|>\n<|im_start|>assistant\n"
    batch = processor(text=prompt, images=[_image(100, 150), _image(300, 80, 1)], return_tensors="pt")
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)
    new = generated[:, batch["input_ids"].shape[1]:]
    assert new.shape == (1, 5)
    text = processor.post_process_image_text_to_text(new, skip_special_tokens=True)
    assert isinstance(text[0], str) and len(text) == 1


def test_saved_processor_round_trips(checkpoint, tiny_processor):
    loaded = AutoProcessor.from_pretrained(checkpoint)
    assert loaded.chat_template == tiny_processor.chat_template
    for field in ("patch_size", "max_num_patches", "min_num_patches", "pixel_shuffle_scale"):
        assert getattr(loaded.image_processor, field) == getattr(tiny_processor.image_processor, field)
    assert loaded.max_sequence_length == tiny_processor.max_sequence_length
    assert loaded.image_token_id == tiny_processor.image_token_id == 498


def test_processor_reads_config_json_when_processor_config_is_absent(checkpoint):
    (checkpoint / "processor_config.json").unlink()
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert processor.image_processor.max_num_patches == 256 and processor.image_processor.min_num_patches == 16


def test_batched_prompts_generate_like_single_prompts(tiny_model, tiny_processor):
    p1 = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}],
        add_generation_prompt=True)
    p2 = tiny_processor.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True)
    images = [_image(64, 96)]
    batch = tiny_processor(text=[p1, p2], images=images)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    kw = {"max_new_tokens": 5, "do_sample": False}
    together = tiny_model.generate(**batch, **kw)[:, -5:]
    alone1 = tiny_model.generate(**tiny_processor(text=p1, images=images), **kw)[:, -5:]
    alone2 = tiny_model.generate(**tiny_processor(text=p2), **kw)[:, -5:]
    assert torch.equal(together[0], alone1[0]) and torch.equal(together[1], alone2[0])


def _label_text(processor, sample):
    return processor.tokenizer.decode(sample.labels[sample.labels != IGNORE_INDEX])


def test_labels_cover_assistant_turns_only(tiny_processor):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": [{"type": "text", "text": "A circle."}]},
    ]
    sample = tiny_processor.encode_chat(messages, [_image(64, 64)])
    assert _label_text(tiny_processor, sample) == "Red.<|im_end|>A circle.<|im_end|>"
    image_positions = sample.input_ids == tiny_processor.image_token_id
    assert image_positions.sum() == 4 and (sample.labels[image_positions] == IGNORE_INDEX).all()
    # Labels are the tokens themselves (the model shifts them).
    kept = sample.labels != IGNORE_INDEX
    assert torch.equal(sample.labels[kept], sample.input_ids[kept])


def test_empty_assistant_turn_trains_only_the_end_token(tiny_processor):
    messages = [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]
    sample = tiny_processor.encode_chat(messages)
    assert _label_text(tiny_processor, sample) == "<|im_end|>"


def test_document_labels_cover_all_text_but_no_image(tiny_processor):
    segments = [{"type": "text", "text": "A red circle."}, {"type": "image"}, {"type": "text", "text": " Then blue."}]
    sample = tiny_processor.encode_document(segments, [_image(32, 64)])
    assert _label_text(tiny_processor, sample) == "A red circle. Then blue."
    (h, w), = sample.image_grid_hw.tolist()
    assert int((sample.input_ids == tiny_processor.image_token_id).sum()) == h * w // 4
    assert sample.pixel_values.shape == (h * w, 768)
    assert (sample.labels[sample.input_ids == tiny_processor.image_token_id] == IGNORE_INDEX).all()


def test_training_truncation_never_cuts_an_image(tiny_processor):
    segments = [{"type": "text", "text": "Intro text here."}, {"type": "image"}, {"type": "text", "text": "Tail."}]
    full = tiny_processor.encode_document(segments, [_image(64, 64)])
    n_text = int((full.input_ids[: full.input_ids.tolist().index(tiny_processor.image_token_id)]).numel())
    cut = tiny_processor.encode_document(segments, [_image(64, 64)], max_length=n_text + 2)  # would split the image
    assert len(cut) == n_text and cut.pixel_values is None and cut.image_grid_hw.shape == (0, 2)
    with pytest.raises(SampleTooLongError):
        tiny_processor.encode_chat([{"role": "user", "content": "x " * 50}, {"role": "assistant", "content": "y"}],
                                   max_length=10)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        ([], "marker"),
        ([b"not an image at all"], "cannot decode"),
        ([b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"], "cannot decode"),
        ([np.zeros((0, 10, 3), dtype=np.uint8)], "zero size"),
        ([PIL.Image.new("L", (8000, 8000))], "over Isaac's limit"),
        ([object()], "unsupported image type"),
    ],
)
def test_bad_images_get_clear_errors(tiny_processor, images, match):
    with pytest.raises(ValueError, match=match):
        tiny_processor(text="<image>What is this?", images=images)


def test_truncated_jpeg_is_refused(tiny_processor):
    buf = io.BytesIO()
    _image(64, 64).save(buf, format="JPEG")
    with pytest.raises(ValueError, match="cannot decode"):
        tiny_processor(text="<image>", images=[buf.getvalue()[: len(buf.getvalue()) // 2]])


def test_unknown_content_type_is_refused(tiny_processor):
    with pytest.raises(ValueError, match="'video'"):
        tiny_processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}])


def test_prompt_over_the_limit(tiny_processor):
    tiny_processor.max_sequence_length = 20
    with pytest.raises(ValueError, match="max_sequence_length=20"):
        tiny_processor(text="word " * 40)
    kept = tiny_processor(text="word " * 40, truncation="left")
    assert kept["input_ids"].shape[1] == 20


def test_image_inputs_of_every_kind_give_the_same_patches(tiny_processor):
    array = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    ip = tiny_processor.image_processor
    ref = ip(PIL.Image.fromarray(array))["pixel_values"]
    for other in (array, torch.from_numpy(array), torch.from_numpy(array).permute(2, 0, 1),
                  torch.from_numpy(array).float() / 255):
        assert torch.equal(ip(other)["pixel_values"], ref)
    png = io.BytesIO()
    PIL.Image.fromarray(array).save(png, format="PNG")
    assert torch.equal(ip(png.getvalue())["pixel_values"], ref)


def test_uint8_patches_are_normalised_by_the_model_bit_exactly(tiny_model, tiny_processor):
    image = _image(70, 90, 5)
    floats, grid = tiny_processor.image_processor.process_one(image)
    raw, _ = tiny_processor.image_processor.process_one(image, normalize=False)
    assert raw.dtype == torch.uint8
    grids = torch.tensor([grid])
    vision = tiny_model.model.vision_embedding
    with torch.no_grad():
        assert torch.equal(vision(raw, grids), vision(floats, grids))
