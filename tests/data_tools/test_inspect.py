"""`isaac-data inspect`: keys, images and the label spans are shown; --render writes pages and PNGs."""

from __future__ import annotations

import argparse
import io

import pytest
from PIL import Image

from data_tools import inspect_cmd
from isaac_train.data.shards import ShardWriter


def call(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 40, 40) if mode == "RGB" else (0, 200, 200, 0)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    w = ShardWriter(root, max_count=2)
    w.write("twoturns", {"source": "shapes", "id": "q-17", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": "The circle is red."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image"}]},
        {"role": "assistant", "content": "It is cyan."}]},
        [("0.png", image_bytes("PNG", (40, 30))), ("1.jpg", image_bytes("JPEG", (100, 64), "CMYK"))])
    w.write("doc", {"source": "web", "segments": [{"type": "text", "text": "A red square."}, {"type": "image"}]},
            [("0.jpg", image_bytes("JPEG", (64, 64)))])
    w.write("unanswered", {"messages": [{"role": "user", "content": "Is anyone there?"}]})
    w.write("broken", {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                    {"role": "assistant", "content": "No."}]}, [("0.png", b"not a png")])
    w.close()
    return root


def test_prints_keys_images_and_label_spans(dataset, capsys):
    assert call(inspect_cmd, [dataset, "-n", 2]) == 0
    out = capsys.readouterr().out
    assert "=== twoturns" in out and "=== doc" in out and "unanswered" not in out
    assert "source: shapes   id: q-17   kind: chat" in out
    # Loss on both assistant turns (content and the closing <|im_end|>), not on the system or user text.
    assert "[[The circle is red.<|im_end|>]]" in out and "[[It is cyan.<|im_end|>]]" in out
    assert "[[Be brief" not in out and "<|im_start|>user\n    <image>What colour is the circle?<|im_end|>" in out
    assert "And this one?<image><|im_end|>" in out
    # 40x30 upscales to the tiny config's minimum of 16 patches: 4x4 grid, 4 decoder tokens after 2x2 merge.
    assert "image 0 (0.png): 40x30 RGB PNG -> 4x4 patches (16), 4 decoder tokens" in out
    assert "image 1 (1.jpg): 100x64 CMYK JPEG" in out
    assert "[[A red square.]]<image>" in out  # a document: loss on all text
    assert "label tokens:" in out


def test_keys_show_skipped_samples(dataset, capsys):
    assert call(inspect_cmd, [dataset, "--keys", "unanswered,broken"]) == 0
    out = capsys.readouterr().out
    assert out.index("=== unanswered") < out.index("=== broken")
    assert "SKIPPED by the loader: no_labels" in out and "Is anyone there?" in out
    assert "SKIPPED by the loader: corrupt_image" in out and "cannot decode" in out
    assert call(inspect_cmd, [dataset, "--keys", "doc,nosuchkey"]) == 2
    assert "nosuchkey" in capsys.readouterr().err


def test_render_writes_pages_and_pngs(dataset, tmp_path):
    out = tmp_path / "render"
    assert call(inspect_cmd, [dataset, "-n", 4, "--render", out]) == 0
    index = (out / "index.html").read_text()
    assert all(f'href="{k}.html"' in index for k in ("twoturns", "doc", "unanswered", "broken"))
    page = (out / "twoturns.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # each image inline in the text and in the table
    assert "<mark>The circle is red.&lt;|im_end|&gt;</mark>" in page
    with Image.open(out / "twoturns.0.png") as a, Image.open(out / "twoturns.1.png") as b:
        assert (a.size, b.size, b.mode) == ((40, 30), (100, 64), "RGB")  # CMYK saved as RGB PNG
    assert "no_labels" in (out / "unanswered.html").read_text()
    assert not (out / "broken.0.png").exists()  # nothing to save for an image that does not decode
