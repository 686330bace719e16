"""`isaac-data demo`: deterministic shapes data whose answers follow from the drawn pixels."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from data_tools import demo as demo_cli
from isaac_train.data import demo
from isaac_train.data.decode import encode_members
from isaac_train.data.demo import make_demo_dataset
from isaac_train.data.shards import ShardSet, read_sample
from isaac_train.processing.grounding import parse_grounding

NUMBERS = {1: "There is one shape.", 2: "There are two shapes.", 3: "There are three shapes."}
CELLS = {(0, 0): "top left", (0, 2): "top right", (1, 1): "center", (2, 0): "bottom left", (2, 2): "bottom right"}


def samples(split_dir: Path) -> list[tuple[str, dict, np.ndarray, dict[str, bytes]]]:
    """(key, sample JSON, RGB pixels, members) for every sample of a split."""
    shards, out = ShardSet(split_dir), []
    for shard, count in enumerate(shards.counts):
        for position in range(count):
            ref = shards.ref(shard, position)
            members = read_sample(ref)
            pixels = np.array(PIL.Image.open(io.BytesIO(members["0.png"])).convert("RGB"))
            out.append((ref.key, json.loads(members["json"]), pixels, members))
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, train=150, eval=60, seed=3)
    return out


def test_deterministic_for_a_seed(small: Path, tmp_path: Path) -> None:
    make_demo_dataset(tmp_path / "same", train=150, eval=60, seed=3)
    assert files(tmp_path / "same") == files(small)
    make_demo_dataset(tmp_path / "other", train=150, eval=60, seed=4)
    assert files(tmp_path / "other")["train/shapes-000000.tar"] != files(small)["train/shapes-000000.tar"]


def test_answers_follow_from_the_pixels(small: Path) -> None:
    seen_types = set()
    for _, sample, pixels, _ in samples(small / "train") + samples(small / "eval"):
        meta, (question, answer) = sample["meta"], (sample["messages"][0]["content"][1]["text"],
                                                   sample["messages"][1]["content"])
        h, w, _ = pixels.shape
        assert (w, h) == (meta["width"], meta["height"]) == (64, 64)
        covered = np.zeros((h, w), bool)
        for shape in meta["shapes"]:  # each shape is drawn where its box says, in its colour
            x0, y0, x1, y1 = shape["box"]
            rgb = demo.COLOURS[shape["colour"]]
            mask = np.all(pixels[y0:y1, x0:x1] == rgb, axis=-1)
            rows, cols = np.nonzero(mask)
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, y1 - y0 - 1, 0, x1 - x0 - 1), shape
            assert tuple(pixels[(y0 + y1) // 2 + (y1 - y0) // 6, (x0 + x1) // 2]) == rgb
            cell = ((y0 + y1) / 2 // (h / 3), (x0 + x1) / 2 // (w / 3))
            assert CELLS[cell] == shape["region"]
            covered[y0:y1, x0:x1] = True
        assert np.all(pixels[~covered] == meta["background"])  # nothing drawn outside the shapes
        assert len({s["shape"] for s in meta["shapes"]}) == len(meta["shapes"])  # "the circle" is one circle

        target = meta["shapes"][meta["target"]]
        name, colour = target["shape"], target["colour"]
        expected = {
            "colour": (f"What colour is the {name}?", f"The {name} is {colour}."),
            "count": ("How many shapes are in the image?", NUMBERS[len(meta["shapes"])]),
            "location": (f"Where is the {name}?", f"The {name} is in the {target['region']}."),
        }
        if meta["type"] == "grounding":
            assert question == f"Draw a box around the {colour} {name}."
            (box,) = parse_grounding(answer)
            assert box.kind == "box" and box.mention == f"{colour} {name}"
            assert all(float(v).is_integer() for v in box.box)
            assert np.allclose(box.to_pixels(w, h).box, target["box"], atol=w / 1000)
        else:
            assert (question, answer) == expected[meta["type"]]
        seen_types.add(meta["type"])
    assert seen_types == set(demo.QUESTION_TYPES)


def test_eval_answers_file(small: Path) -> None:
    lines = [json.loads(line) for line in (small / "eval_answers.jsonl").read_text().splitlines()]
    evals = samples(small / "eval")
    assert [line["key"] for line in lines] == [key for key, *_ in evals]
    for line, (_, sample, _, _) in zip(lines, evals, strict=True):
        assert line["type"] == sample["meta"]["type"]
        assert line["answer"] == sample["messages"][1]["content"]
        if line["type"] == "grounding":
            assert line["box"] == [round(v) for v in parse_grounding(line["answer"])[0].box]


def test_samples_encode_with_the_tiny_processor(small: Path, tiny_processor) -> None:
    for key, sample, _, members in samples(small / "eval"):
        encoded = encode_members(members, tiny_processor, max_length=None)
        assert encoded.image_grid_hw.tolist() == [[4, 4]], key  # 64x64 -> 4x4 patches
        answer_ids = tiny_processor.tokenizer(sample["messages"][1]["content"], add_special_tokens=False)["input_ids"]
        assert encoded.num_label_tokens == len(answer_ids) + 1  # the answer and <|im_end|>
        if sample["meta"]["type"] != "grounding":
            assert len(answer_ids) <= 12, sample["messages"][1]["content"]  # corpus words: few tokens


def test_default_size_is_fast_and_reused(tmp_path: Path, capsys) -> None:
    start = time.time()
    info = make_demo_dataset(tmp_path)
    elapsed = time.time() - start
    assert not info["reused"] and elapsed < 30
    assert len(ShardSet(tmp_path / "train")) == 2000 and len(ShardSet(tmp_path / "eval")) == 200
    assert sum(info["types"]["train"].values()) == 2000
    train_files = files(tmp_path / "train")
    again = make_demo_dataset(tmp_path)
    assert again["reused"] and again["seconds"] < 1

    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    assert demo_cli.run(parser.parse_args([str(tmp_path), "--eval", "20"])) == 0  # other params: remade
    assert "20 eval samples" in capsys.readouterr().out
    assert len(ShardSet(tmp_path / "eval")) == 20
    assert files(tmp_path / "train") == train_files  # train has its own random stream
    assert demo_cli.run(parser.parse_args([str(tmp_path / "x"), "--image-size", "16"])) == 2
    assert "too small" in capsys.readouterr().err
