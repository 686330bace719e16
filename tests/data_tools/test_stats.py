"""`isaac-data stats`: its numbers equal ones computed here directly with the processor, and the PNG is right
(drawn with matplotlib; without it --png says how to install it)."""

from __future__ import annotations

import argparse
import io
import json
import random
import sys

import numpy as np
import pytest
from PIL import Image

from data_tools import stats
from isaac_train.data.shards import ShardWriter
from isaac_train.processing.processor import NoLabelTokensError

WORDS = ["red", "circle", "square", "the", "blue", "is", "a", "small", "green", "triangle"]
SEQ_LEN, BUFFER = 128, 8


def call(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def image_bytes(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 160, 90)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """42 samples in 3 shards (chats with 0-2 images of several sizes, documents, one chat with no answer, one bad
    JSON), plus each usable sample's length/labels/patches/images computed with the processor directly."""
    from isaac_train.model.tiny import tiny_config
    from isaac_train.processing.processor import IsaacProcessor
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config())
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("stats")
    w = ShardWriter(root, max_count=14)
    expected = []  # per usable sample, in data order: (tokens, label_tokens, patches, images, source)
    skipped = {"no_labels": 0, "bad_json": 0}
    for i in range(42):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 70)))
        n_img = rng.choice([0, 1, 1, 2])
        imgs = [(f"{k}.{'png' if k % 2 else 'jpg'}",
                 image_bytes("PNG" if k % 2 else "JPEG", (rng.randint(16, 300), rng.randint(16, 200))))
                for k in range(n_img)]
        if i == 5:
            w.write(f"k{i:03d}", {"messages": [{"role": "user", "content": text}]})
            skipped["no_labels"] += 1
            continue
        if i == 20:
            w.write(f"k{i:03d}", {"messages": []}, [("json", b"not json")])
            skipped["bad_json"] += 1
            continue
        if i % 4 == 3:
            sample = {"source": "docs", "segments": [{"type": "image"}] * n_img + [{"type": "text", "text": text}]}
            enc = processor.encode_document(sample["segments"], [b for _, b in imgs])
        else:
            user = [{"type": "image"}] * n_img + [{"type": "text", "text": "Describe."}]
            sample = {"source": "chat", "messages": [{"role": "user", "content": user},
                                                     {"role": "assistant", "content": text}]}
            enc = processor.encode_chat(sample["messages"], [b for _, b in imgs])
        w.write(f"k{i:03d}", sample, imgs)
        patches = 0 if enc.pixel_values is None else enc.pixel_values.shape[0]
        expected.append((len(enc), enc.num_label_tokens, patches, n_img, sample["source"]))
    w.close()
    with pytest.raises(NoLabelTokensError):  # the skipped chat really has nothing to learn
        processor.encode_chat([{"role": "user", "content": "x"}])
    return {"root": root, "expected": expected, "skipped": skipped}


def reference_packing(lengths: list[int], seq_len: int, buffer: int) -> tuple[int, int, int]:
    """(rows, tokens, too_long): rows start with the oldest waiting sample, then take the longest that fits."""
    waiting: list[int] = []
    stream = iter(lengths)
    rows = tokens = too_long = 0
    while True:
        for n in stream:
            if n > seq_len:
                too_long += 1
                continue
            waiting.append(n)
            if len(waiting) == buffer:
                break
        if not waiting:
            return rows, tokens, too_long
        row = [waiting.pop(0)]
        while fits := [n for n in waiting if n <= seq_len - sum(row)]:
            row.append(waiting.pop(waiting.index(max(fits))))
        rows, tokens = rows + 1, tokens + sum(row)


def test_numbers_equal_direct_computation(dataset, tmp_path, capsys):
    out_json = tmp_path / "stats.json"
    code = call(stats, [dataset["root"], "--workers", "1", "--seq-len", SEQ_LEN, "--buffer", BUFFER,
                        "--json", out_json])
    assert code == 0
    got = json.loads(out_json.read_text())
    exp = dataset["expected"]
    lengths = [e[0] for e in exp]
    assert got["samples"] == {"scanned": 42, "ok": 40, "skipped": 2}
    assert got["skipped_by_reason"] == dataset["skipped"]
    for name, column in (("tokens", 0), ("label_tokens", 1), ("patches", 2), ("images", 3)):
        values = np.array([e[column] for e in exp])
        assert got[name]["total"] == int(values.sum()), name
        assert got[name]["max"] == int(values.max()), name
        assert got[name]["mean"] == pytest.approx(values.mean()), name
        assert got[name]["median"] == pytest.approx(np.median(values)), name
        assert got[name]["p95"] == pytest.approx(np.percentile(values, 95)), name
    assert got["samples_with_images"] == sum(e[3] > 0 for e in exp)
    assert got["by_source"]["docs"]["samples"] == sum(e[4] == "docs" for e in exp)
    assert got["by_source"]["chat"]["tokens"] == sum(e[0] for e in exp if e[4] == "chat")
    docs = [e for e in exp if e[4] == "docs"]  # documents: their images, then one text
    assert got["documents"]["samples"] == len(docs)
    assert got["documents"]["without_images"] == sum(e[3] == 0 for e in docs)
    assert got["documents"]["images_per_document"]["total"] == sum(e[3] for e in docs)
    between = got["documents"]["text_tokens_between_images"]  # two images in a row: a gap of no text
    assert between["gaps"] == sum(e[3] == 2 for e in docs) and between["total"] == 0  # (real gaps: test_interleaved)

    rows, tokens, too_long = reference_packing(lengths, SEQ_LEN, BUFFER)
    packed, padded = got["packing"]["packed"], got["packing"]["padded"]
    assert too_long > 0 and rows > 0  # the data exercises both
    assert (packed["rows"], packed["tokens"], packed["too_long"]) == (rows, tokens, too_long)
    assert packed["fill"] == pytest.approx(tokens / (rows * SEQ_LEN))
    fits = [n for n in lengths if n <= SEQ_LEN]
    batch = max(1, round(len(fits) / rows))
    batches = [fits[i : i + batch] for i in range(0, len(fits), batch)]
    pad_fill = sum(fits) / sum(len(b) * max(b) for b in batches)
    assert padded["batch"] == batch and padded["fill"] == pytest.approx(pad_fill)
    assert got["packing"]["packed_over_padded"] == pytest.approx(packed["fill"] / pad_fill)

    printed = capsys.readouterr().out
    assert f"fill {packed['fill']:.3f}" in printed and f"fill {pad_fill:.3f}" in printed
    assert f"{packed['fill'] / pad_fill:.2f}x" in printed
    assert "skipped no_labels" in printed
    assert f"documents: {len(docs)} of 40 usable samples" in printed and "text tokens between images" in printed


def test_png_through_the_command(dataset, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sub" / "hist.png"
    code = call(stats, [dataset["root"], "--workers", "1", "--seq-len", SEQ_LEN, "--png", png, "--png-size",
                        "640x400"])
    assert code == 0 and f"wrote the length histogram to {png}" in capsys.readouterr().out
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (640, 400)
        img.load()


def test_png_without_matplotlib_says_how_to_install(dataset, tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of these now raises ImportError
    code = call(stats, [dataset["root"], "--workers", "1", "--png", tmp_path / "h.png"])
    assert code == 2 and "pip install -e '.[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()


def test_max_samples_with_a_pool(dataset, tmp_path):
    out_json = tmp_path / "first.json"
    code = call(stats, [dataset["root"], "--workers", "2", "--max-samples", 25, "--seq-len", SEQ_LEN,
                        "--buffer", BUFFER, "--json", out_json, "--pad-batch", 3, "--max-patches", 200])
    assert code == 0
    got = json.loads(out_json.read_text())
    first = dataset["expected"][:23]  # the first 25 samples hold both skipped ones (positions 5 and 20)
    assert got["samples"] == {"scanned": 25, "ok": 23, "skipped": 2}
    assert got["tokens"]["total"] == sum(e[0] for e in first)
    assert got["patches"]["total"] == sum(e[2] for e in first)
    assert got["packing"]["padded"]["batch"] == 3
    over = sum(e[0] > SEQ_LEN or e[2] > 200 for e in first)
    assert over > 0 and got["packing"]["packed"]["too_long"] == over
    assert got["packing"]["packed"]["samples"] == 23 - over


def test_histogram_drawing(tmp_path):
    pytest.importorskip("matplotlib")
    path = stats.draw_histogram([5, 7, 7, 30, 120], tmp_path / "h.png", (300, 200), 10, "t", marker=100)
    with Image.open(path) as img:
        assert img.size == (300, 200)
        assert len(img.convert("RGB").getcolors(maxcolors=4096)) > 3  # bars, axes, text and the marker drawn
    assert stats.padded_fill([4, 2, 3], 2)["fill"] == pytest.approx(9 / (2 * 4 + 1 * 3))
