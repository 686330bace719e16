"""`isaac-data make-shards --format coco`: a tiny COCO fixture the test writes (PNG images, instances JSON, refs)
-> grounding samples whose answers parse back to the source boxes within the grid's rounding, score perfectly
against themselves, and encode through the tiny processor; every left-out record is counted by reason."""

from __future__ import annotations

import io
import json
from pathlib import Path

import PIL.Image
import pytest

from data_tools import cli, make_shards
from data_tools.coco import HINT, coco_box_to_grid, escape_mention, grid_box_to_pixels
from data_tools.converters import InputError
from data_tools.formats import FORMATS, build_converter
from isaac_train.data.decode import encode_members, parse_sample
from isaac_train.data.shards import ShardSet, read_sample
from isaac_train.eval.metrics import grounding
from isaac_train.processing.grounding import parse_grounding

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog"}]
IMAGES = [  # (id, file, declared size, actual size or None when the file is absent)
    (1, "a.png", (64, 48), (64, 48)),
    (2, "b.png", (40, 40), (40, 40)),
    (3, "empty.png", (32, 32), (32, 32)),  # no annotations
    (4, "gone.png", (50, 50), None),  # the file is missing
    (5, "c.png", (60, 40), (30, 20)),  # the JSON's size is not the file's
]
ANNOTATIONS = [  # (id, image_id, category_id, bbox, iscrowd)
    (10, 1, 1, [4.2, 6.0, 20.5, 15.3], 0),
    (11, 1, 1, [30, 2, 10, 10], 0),  # higher up than 10: first in the answer
    (12, 1, 2, [0, 20, 64, 28], 0),  # touches the right and bottom edges: x2 = y2 = 1000
    (13, 1, 1, [40, 30, 20, 10], 1),  # crowd
    (20, 2, 2, [10.5, 10.5, 19.0, 19.0], 0),  # 10.5 px of 40 = 262.5 on the grid: rounds up to 263
    (22, 2, 1, [1, 1, 5, 5], 1),  # the only cat of image 2 is a crowd
    (40, 4, 1, [1, 1, 10, 10], 0),
    (50, 5, 2, [1, 1, 5, 5], 0),
]
REFS = [
    {"ref_id": 100, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
     "sentences": [{"sent": "left cat", "raw": "Left cat"}, {"raw": 'the "small" cat & co'}]},
    {"ref_id": 101, "ann_id": 20, "split": "train", "sentences": ["the  dog "]},
    {"ref_id": 102, "ann_id": 999, "split": "val", "sentences": ["nobody"]},
    {"ref_id": 103, "ann_id": 40, "split": "val", "sentences": ["gone cat"]},
]


def instances() -> dict:
    return {
        "info": {"description": "tiny"},
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, (w, h), _ in IMAGES],
        "annotations": [{"id": a, "image_id": i, "category_id": c, "bbox": b, "iscrowd": crowd, "area": b[2] * b[3],
                         "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0], b[1] + b[3]]]}
                        for a, i, c, b, crowd in ANNOTATIONS],
        "categories": CATEGORIES,
    }


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """images/*.png + annotations/instances.json + annotations/refs.json; returns the instances JSON."""
    for k, (_, name, _, size) in enumerate(IMAGES):
        if size is not None:
            (tmp_path / "images").mkdir(exist_ok=True)
            PIL.Image.new("RGB", size, (40 * k, 100, 200)).save(tmp_path / "images" / name)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "refs.json").write_text(json.dumps(REFS))
    path = tmp_path / "annotations" / "instances.json"
    path.write_text(json.dumps(instances()))
    return path


def convert(coco: Path, out: Path, **options) -> dict:
    conv = build_converter("coco", coco, coco.parent.parent / "images", **options)
    return make_shards.make_shards(conv, out, workers=1, progress=False)


def read_samples(out_dir: Path) -> list[tuple[dict, dict[str, bytes]]]:
    """(JSON object, members) of every sample, in key order."""
    shards, found = ShardSet(out_dir), []
    for shard, count in enumerate(shards.counts):
        for position in range(count):
            members = read_sample(shards.ref(shard, position))
            found.append((json.loads(members["json"]), members))
    return found


def source_boxes(ann_ids: list[int]) -> list[tuple[float, float, float, float]]:
    """The COCO boxes of `ann_ids` as pixel corners (x1, y1, x2, y2)."""
    by_id = {a: b for a, _, _, b, _ in ANNOTATIONS}
    return [(by_id[a][0], by_id[a][1], by_id[a][0] + by_id[a][2], by_id[a][1] + by_id[a][3]) for a in ann_ids]


def check_grounding(obj: dict, members: dict[str, bytes], processor) -> None:
    """The prompt is hint, image, question; the answer parses back to the source boxes within the grid's rounding
    and scores perfectly against itself; the sample encodes through the processor."""
    messages, meta = obj["messages"], obj["meta"]
    assert messages[0] == {"role": "user", "content": HINT}
    assert messages[1] == {"role": "user", "content": [{"type": "image"}]}
    assert messages[2]["role"] == "user" and isinstance(messages[2]["content"], str)
    assert messages[3]["role"] == "assistant" and len(messages) == 4
    answer = messages[3]["content"]
    parsed = parse_grounding(answer)
    assert [g.kind for g in parsed] == ["box"] * len(meta["ann_ids"])
    width, height = meta["width"], meta["height"]
    assert PIL.Image.open(io.BytesIO(members["0.png"])).size == (width, height)
    for g, want in zip(parsed, source_boxes(meta["ann_ids"]), strict=True):
        got = g.to_pixels(width, height).box
        for v, w, size in zip(got, want, (width, height, width, height), strict=True):
            assert abs(v - w) <= 0.5 * size / 1000 + 1e-9, (answer, want)
    counts = grounding(answer, answer)
    assert counts["true_positives"] == counts["expected_boxes"] == len(meta["ann_ids"])
    assert counts["malformed"] == 0
    encoded = encode_members(members, processor, max_length=None)
    assert encoded.num_label_tokens > 0 and encoded.image_grid_hw.shape[0] == 1
    assert len(parse_sample(members)[2]) == 1


def test_grid_convention() -> None:
    assert coco_box_to_grid([4.2, 6.0, 20.5, 15.3], 64, 48) == (66, 125, 386, 444)  # the doc's worked example
    assert coco_box_to_grid([10.5, 10.5, 19.0, 19.0], 40, 40) == (263, 263, 738, 738)  # halves round up
    assert coco_box_to_grid([-3, 40, 70, 10], 64, 48) == (0, 833, 1000, 1000)  # clamped to the grid
    x, y, w, h = grid_box_to_pixels((66, 125, 386, 444), 64, 48)
    assert (x, y, w, h) == pytest.approx((4.224, 6.0, 20.48, 15.312))
    with pytest.raises(ValueError):
        coco_box_to_grid([0, 0, 1, 1], 0, 10)
    assert escape_mention('the "big" cat & <co>\'s') == "the &quot;big&quot; cat &amp; &lt;co&gt;'s"
    assert "coco" in FORMATS


def test_detection_by_category(coco: Path, tmp_path: Path, tiny_processor) -> None:
    report = convert(coco, tmp_path / "out")
    assert report["records"] == 7 and report["samples"] == 3 and report["images"] == 3
    assert report["skipped"] == {"crowd_only": 1, "missing_image": 1, "no_objects": 1, "size_mismatch": 1}
    assert "gone.png" in report["examples"]["missing_image"][0]
    assert "60x40" in report["examples"]["size_mismatch"][0] and "30x20" in report["examples"]["size_mismatch"][0]
    assert report["source"] == "instances"
    samples = read_samples(tmp_path / "out")
    assert [(o["id"], o["messages"][2]["content"]) for o, _ in samples] == [
        ("1_1", "Find every cat."), ("1_2", "Find every dog."), ("2_2", "Find every dog.")]
    cats = samples[0][0]
    assert cats["messages"][3]["content"] == ('<point_box mention="cat"> (469,42) (625,250) </point_box> '
                                              '<point_box mention="cat"> (66,125) (386,444) </point_box>')
    assert cats["meta"] == {"task": "detection", "type": "grounding", "category": "cat", "coco_image_id": 1,
                            "file_name": "a.png", "width": 64, "height": 48, "ann_ids": [11, 10],
                            "crowd_ann_ids": [13]}
    assert samples[1][0]["messages"][3]["content"] == '<point_box mention="dog"> (0,417) (1000,1000) </point_box>'
    assert samples[2][0]["messages"][3]["content"] == '<point_box mention="dog"> (263,263) (738,738) </point_box>'
    for obj, members in samples:
        assert obj["source"] == "instances"
        check_grounding(obj, members, tiny_processor)


def test_detection_by_image_and_crowd(coco: Path, tmp_path: Path, tiny_processor) -> None:
    report = convert(coco, tmp_path / "img", group="image")
    assert report["records"] == 5 and report["samples"] == 2
    assert report["skipped"] == {"missing_image": 1, "no_objects": 1, "size_mismatch": 1}
    (first, members), (second, _) = read_samples(tmp_path / "img")
    assert first["messages"][2]["content"] == "Find every cat and dog."
    assert first["meta"]["categories"] == ["cat", "dog"] and first["meta"]["ann_ids"] == [11, 10, 12]
    assert second["meta"]["crowd_ann_ids"] == [22] and second["messages"][2]["content"] == "Find every dog."
    check_grounding(first, members, tiny_processor)
    assert grounding(first["messages"][3]["content"], first["messages"][3]["content"])["true_positives"] == 3

    report = convert(coco, tmp_path / "crowd", include_crowd=True)
    assert report["samples"] == 4 and "crowd_only" not in report["skipped"]
    crowd = read_samples(tmp_path / "crowd")
    assert crowd[0][0]["meta"]["ann_ids"] == [11, 10, 13] and "crowd_ann_ids" not in crowd[0][0]["meta"]
    for obj, members in crowd:
        check_grounding(obj, members, tiny_processor)


def test_refs(coco: Path, tmp_path: Path, tiny_processor) -> None:
    refs = coco.parent / "refs.json"
    report = convert(coco, tmp_path / "refs", refs=refs)
    assert report["records"] == 5 and report["samples"] == 3 and report["source"] == "refs"
    assert report["skipped"] == {"missing_image": 1, "unknown_annotation": 1}
    samples = read_samples(tmp_path / "refs")
    assert [o["messages"][2]["content"] for o, _ in samples] == ["left cat", 'the "small" cat & co', "the dog"]
    assert [o["messages"][3]["content"] for o, _ in samples] == [
        '<point_box mention="left cat"> (66,125) (386,444) </point_box>',
        '<point_box mention="the &quot;small&quot; cat &amp; co"> (66,125) (386,444) </point_box>',
        '<point_box mention="the dog"> (263,263) (738,738) </point_box>']
    assert parse_grounding(samples[1][0]["messages"][3]["content"])[0].mention == 'the "small" cat & co'
    assert samples[0][0]["meta"] == {"task": "refexp", "type": "grounding", "category": "cat", "coco_image_id": 1,
                                     "file_name": "a.png", "width": 64, "height": 48, "ann_ids": [10],
                                     "ref_id": 100, "split": "val", "sentence": 0}
    assert [o["id"] for o, _ in samples] == ["ref100_0", "ref100_1", "ref101_0"]
    for obj, members in samples:
        check_grounding(obj, members, tiny_processor)

    jsonl = coco.parent / "refs.jsonl"  # the same refs as JSON lines, one split
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in REFS) + "{broken\n")
    report = convert(coco, tmp_path / "train", refs=jsonl, refs_split="train")
    assert report["samples"] == 1 and report["skipped"] == {"bad_json": 1}  # a broken line counts in any split
    with pytest.raises(InputError, match="its splits are train, val"):
        build_converter("coco", coco, refs=refs, refs_split="testB")


def test_cli_and_unusable_input(coco: Path, tmp_path: Path, capsys) -> None:
    images = str(coco.parent.parent / "images")
    out = tmp_path / "cli"
    assert cli.main(["make-shards", "--format", "coco", str(coco), str(out), "--image-root", images,
                     "--refs", str(coco.parent / "refs.json"), "--refs-split", "val", "--workers", "2"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    assert [o["messages"][2]["content"] for o, _ in read_samples(out)] == ["left cat", 'the "small" cat & co']
    assert cli.main(["make-shards", "--format", "coco", str(coco), str(tmp_path / "g"), "--image-root", images,
                     "--coco-group", "image"]) == 0
    assert len(read_samples(tmp_path / "g")) == 2
    # the JSON's folder is the default image root: no image there, so every record with objects is missing_image
    assert cli.main(["make-shards", "--format", "coco", str(coco), str(tmp_path / "noroot")]) == 1
    assert "missing_image" in capsys.readouterr().out

    broken = instances()
    del broken["annotations"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match="no 'annotations' key"):
        build_converter("coco", tmp_path / "broken.json")
    assert cli.main(["make-shards", "--format", "coco", str(tmp_path / "broken.json"), str(tmp_path / "b")]) == 2
    assert "no 'annotations' key" in capsys.readouterr().err
    (tmp_path / "garbage.json").write_text("{not json")
    assert cli.main(["make-shards", "--format", "coco", str(tmp_path / "garbage.json"), str(tmp_path / "b")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert cli.main(["make-shards", "--format", "chat-jsonl", str(coco), str(tmp_path / "b"), "--refs",
                     str(coco.parent / "refs.json")]) == 2
    assert "apply to --format coco only" in capsys.readouterr().err
    assert cli.main(["make-shards", "--format", "coco", str(coco), str(tmp_path / "b"), "--refs-split", "val"]) == 2
    assert "--refs REFS" in capsys.readouterr().err


def test_malformed_entries_are_counted(coco: Path, tmp_path: Path) -> None:
    data = instances()
    data["images"].append({"id": 6, "width": 10})  # no file_name
    data["annotations"] += [
        {"id": 60, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2]},  # a category 'categories' lacks
        {"id": 61, "image_id": 1, "category_id": 2, "bbox": [1, 1, 0, 5]},  # zero width: the dog sample goes
        {"id": 62, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},  # an image 'images' lacks
        {"id": 63, "category_id": 1, "bbox": [1, 1, 2, 2]},  # no image_id
    ]
    path = coco.parent / "odd.json"
    path.write_text(json.dumps(data))
    report = convert(path, tmp_path / "odd")
    assert report["samples"] == 2  # image 1's cats and image 2's dog
    assert report["skipped"] == {"bad_box": 1, "bad_schema": 2, "crowd_only": 1, "missing_image": 1,
                                 "no_objects": 1, "size_mismatch": 1, "unknown_category": 1, "unknown_image": 1}
    assert "annotation 61" in report["examples"]["bad_box"][0]
    with pytest.raises(InputError, match="categories\\[0\\]"):
        (coco.parent / "cats.json").write_text(json.dumps({**instances(), "categories": [{"id": 1}]}))
        build_converter("coco", coco.parent / "cats.json")


def test_thin_boxes_and_exact_halves_convert_to_boxes_that_score(tmp_path: Path) -> None:
    """The issue's two boxes through the converter: a box 0.4 px wide on 640 x 480 keeps one grid unit (it was
    (16,21) (16,63), zero area, never matched); an exact half of 0.19 + 0.49 on a 16 px wide image rounds up to 43
    (floating point gave 42); a box wholly outside its image is skipped as bad_box."""
    (tmp_path / "img").mkdir()
    PIL.Image.new("RGB", (640, 480), "white").save(tmp_path / "img" / "wide.png")
    PIL.Image.new("RGB", (16, 3979), "white").save(tmp_path / "img" / "tall.png")
    data = {"images": [{"id": 1, "file_name": "wide.png", "width": 640, "height": 480},
                       {"id": 2, "file_name": "tall.png", "width": 16, "height": 3979}],
            "categories": [{"id": 1, "name": "pole"}, {"id": 2, "name": "wire"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0.4, 20]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0.19, 1273.55, 0.49, 1050.53]},
                            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [650, 10, 5, 5]}]}
    (tmp_path / "thin.json").write_text(json.dumps(data))
    conv = build_converter("coco", tmp_path / "thin.json", tmp_path / "img")
    report = make_shards.make_shards(conv, tmp_path / "out", workers=1, progress=False)
    assert report["samples"] == 2 and report["skipped"] == {"bad_box": 1}
    assert "wholly outside the 640x480 image" in report["examples"]["bad_box"][0]
    answers = [o["messages"][3]["content"] for o, _ in read_samples(tmp_path / "out")]
    # worked in tests/unit/test_grid.py: (15,21) (16,63) and (12,320) (43,584)
    assert answers == ['<point_box mention="pole"> (15,21) (16,63) </point_box>',
                       '<point_box mention="pole"> (12,320) (43,584) </point_box>']
    for answer in answers:
        (g,) = parse_grounding(answer)
        x1, y1, x2, y2 = g.box
        assert x2 >= x1 + 1 and y2 >= y1 + 1
        assert grounding(answer, answer)["true_positives"] == 1
