"""Images over the pixel limit (data.max_image_pixels, --max-image-pixels) are refused from their header, counted
as image_too_large everywhere, with one message naming the setting; PIL's own bomb check never speaks first.
(The memory-capped run over real bombs is tests/reliability/test_data_faults.py.)"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict

import PIL.Image
import pytest

from data_tools import make_shards, validate
from isaac_train.config.schema import ConfigError
from isaac_train.data.decode import SkipSample, parse_sample
from isaac_train.data.loader import LoaderSpec, PackedLoader, SourceSpec
from isaac_train.data.records import DEFAULT_MAX_IMAGE_PIXELS, Skip, check_image, set_max_image_pixels
from isaac_train.data.shards import ShardSet, ShardWriter
from isaac_train.processing.image_processing import MAX_PIXELS
from isaac_train.train.build import loader_spec
from isaac_train.train.cli import compose_config

from .bombs import png_bomb
from .test_make_shards import run_cli as make_shards_cli
from .test_make_shards import save_image, write_jsonl
from .test_validate import call, chat, image_bytes


@pytest.fixture(autouse=True)
def default_limit():
    """The limit is per process (as PIL's is): put both back for the tests that follow."""
    pil = PIL.Image.MAX_IMAGE_PIXELS
    yield
    set_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)
    PIL.Image.MAX_IMAGE_PIXELS = pil


def test_default_is_isaacs_processor_limit_and_the_config_refuses_more():
    assert DEFAULT_MAX_IMAGE_PIXELS == MAX_PIXELS == compose_config([]).data.max_image_pixels
    with pytest.raises(ConfigError, match=r"data\.max_image_pixels: 60,000,001 must be within \[1, 60,000,000\]"):
        compose_config(["data.max_image_pixels=60000001"])
    with pytest.raises(ConfigError, match=r"data\.max_image_pixels"):
        compose_config(["data.max_image_pixels=0"])
    cfg = compose_config(["data.max_image_pixels=1000"])
    assert loader_spec(cfg, "/data", None, train=True).max_image_pixels == 1000


@pytest.mark.parametrize("pil_limit", [None, 60_000_000])
def test_no_pil_warning_fires_before_the_refusal(pil_limit):
    """10000 x 10000 is past PIL's default limit (89 M: it warns at open) and past the limit the loader gives PIL
    (60 M): the refusal is ours alone, whatever PIL's global."""
    if pil_limit is not None:
        set_max_image_pixels(pil_limit)
    bomb = png_bomb(10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would raise here
        with pytest.raises(Skip) as caught:
            check_image(bomb, "rec")
        members = {"json": json.dumps(chat("?", "no")).encode(), "0.png": bomb}
        with pytest.raises(SkipSample) as parsed:
            parse_sample(members)
    assert caught.value.reason == parsed.value.reason == "image_too_large"
    assert str(parsed.value) == ("image 0: image of 10000x10000 = 100,000,000 pixels is over the limit of 60,000,000 "
                                 "pixels (data.max_image_pixels, make-shards --max-image-pixels); not decoded")


def test_the_limit_is_inclusive_and_sets_pils_own():
    set_max_image_pixels(40 * 30)
    assert PIL.Image.MAX_IMAGE_PIXELS == 1200
    assert check_image(image_bytes("PNG", (40, 30)), "rec")[0] == "png"
    with pytest.raises(Skip, match="41x30 = 1,230 pixels is over the limit of 1,200"):
        check_image(image_bytes("PNG", (41, 30)), "rec")
    with pytest.raises(ValueError, match="within"):
        set_max_image_pixels(MAX_PIXELS + 1)


def test_make_shards_skips_and_counts_images_over_its_limit(tmp_path):
    small = save_image(tmp_path / "in" / "small.png", size=(24, 16))
    save_image(tmp_path / "in" / "large.png", size=(40, 30))
    (tmp_path / "in" / "bomb.png").write_bytes(png_bomb(10000, 10000))
    records = [{"image": name, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                 {"from": "gpt", "value": "A shape."}]}
               for name in ("small.png", "large.png", "bomb.png")]
    source = write_jsonl(tmp_path / "in" / "chat.jsonl", records)
    out = tmp_path / "out"
    assert make_shards_cli(["--format", "llava", str(source), str(out), "--workers", "2",
                            "--max-image-pixels", "1000"]) == 0
    report = json.loads((out / make_shards.REPORT_NAME).read_text())
    assert report["samples"] == 1 and report["skipped"] == {"image_too_large": 2}
    assert report["max_image_pixels"] == 1000
    # past twice the limit PIL itself refuses at open (its limit is set alike), before giving the size: pixels only
    assert [e.split(": image of ")[1].split(" is over")[0] for e in report["examples"]["image_too_large"]] == [
        "40x30 = 1,200 pixels", "100,000,000 pixels"]
    shards = ShardSet(out)
    assert shards.counts == [1]
    assert make_shards_cli(["--format", "llava", str(source), str(tmp_path / "default")]) == 0
    report = json.loads((tmp_path / "default" / make_shards.REPORT_NAME).read_text())
    assert report["samples"] == 2 and report["skipped"] == {"image_too_large": 1}  # the bomb, at 60 M
    assert small  # the small image was written as it was read
    assert make_shards_cli(["--format", "llava", str(source), str(tmp_path / "bad"), "--max-image-pixels", "0"]) == 2


def test_validate_and_the_loader_count_images_over_the_limit(tmp_path, tiny_processor, capsys):
    writer = ShardWriter(tmp_path / "shards", max_count=10)
    for i in range(4):
        size = (40, 30) if i < 2 else (41, 30)
        writer.write(f"s{i}", chat(f"What is shape {i}?", f"Shape {i}."), [("0.png", image_bytes("PNG", size))])
    writer.close()
    assert call(validate, [tmp_path / "shards", "--workers", "2", "--max-image-pixels", 1200]) == 1
    out = capsys.readouterr().out
    assert re.search(r"samples ok +2\n", out) and re.search(r"^image_too_large +2 ", out, re.MULTILINE), out
    assert call(validate, [tmp_path / "shards", "--workers", "1"]) == 0  # the default takes them all
    assert call(validate, [tmp_path / "shards", "--max-image-pixels", MAX_PIXELS + 1]) == 2
    assert "--max-image-pixels 60000001: must be within [1, 60,000,000]" in capsys.readouterr().err

    spec = LoaderSpec(sources=[SourceSpec("s", str(tmp_path / "shards"))], seq_len=256, pack_buffer=4, epochs=1,
                      shuffle=False, num_workers=2, max_image_pixels=1200)
    loader = PackedLoader(spec, tiny_processor)
    keys = sorted(k for batch in loader for row in batch.sample_keys for k in row)
    assert keys == ["s/s0", "s/s1"] and loader.skip_counts() == {"image_too_large": 2}
    default = PackedLoader(LoaderSpec(**{**spec.__dict__, "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS}),
                           tiny_processor)
    assert loader.fingerprint != default.fingerprint  # a changed limit changes the stream: resume refuses it
    # At the default the fingerprint is the one the loader computed before the setting existed (its formula at
    # the time, below), so checkpoints written then still resume.
    shard_set = ShardSet(str(tmp_path / "shards"))
    stream = {k: v for k, v in asdict(default.spec).items() if k not in (  # (pairs came later still: objective=dpo,
        "num_workers", "prefetch_factor", "max_error_rate", "min_samples_for_error_rate", "max_image_pixels",
        "pairs", "shared_pair_images", "prompts", "completion_room")}  # and prompts later: objective=grpo)
    stream["sources"] = [(s.name, s.weight, shard_set.fingerprint()) for s in spec.sources]
    assert default.fingerprint == hashlib.sha256(json.dumps(stream, sort_keys=True, default=str).encode()
                                                 ).hexdigest()[:16]
    pairs = PackedLoader(LoaderSpec(**{**default.spec.__dict__, "pairs": True}), tiny_processor)
    assert pairs.fingerprint != default.fingerprint  # the same shards read as preference pairs are another stream
    prompts = PackedLoader(LoaderSpec(**{**default.spec.__dict__, "prompts": True}), tiny_processor)
    assert prompts.fingerprint not in (default.fingerprint, pairs.fingerprint)  # and as prompts, another again


def test_isaac_eval_skips_and_counts_a_bomb(tmp_path):
    from isaac_train.eval.samples import read_eval_samples

    writer = ShardWriter(tmp_path / "shards", max_count=10)
    writer.write("ok", chat("What is it?", "A shape."), [("0.png", image_bytes("PNG"))])
    writer.write("bomb", chat("What is it?", "Nothing."), [("0.png", png_bomb(10000, 10000))])
    writer.close()
    found = read_eval_samples(str(tmp_path / "shards"))
    assert [s.key for s in found.samples] == ["ok"] and found.skipped == {"image_too_large": 1}
    (tmp_path / "bomb.png").write_bytes(png_bomb(10000, 10000))
    write_jsonl(tmp_path / "eval.jsonl", [{"image": "bomb.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing."}]}])
    assert read_eval_samples(str(tmp_path / "eval.jsonl")).skipped == {"image_too_large": 1}
