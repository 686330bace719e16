"""`isaac-data make-shards --format refcoco`: RefCOCO-family datasets in the two layouts published on the Hugging
Face hub, built here (pyarrow parquet files named as the hub names them, a save_to_disk DatasetDict, tiny images),
-> one grounding sample per expression in --format coco --refs's form, its split in meta, the format inferred; the
boxes round-trip to the source pixels; every unusable record is counted by reason."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools import cli, make_shards
from data_tools.coco import HINT
from data_tools.converters import InputError
from data_tools.formats import build_converter
from data_tools.infer_format import infer_format
from isaac_train.eval.metrics import grounding
from isaac_train.processing.grounding import parse_grounding

from .test_coco import read_samples

QUESTION = "Please carefully observe the area circled in the image and come up with a caption for the area."


def image_bytes(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", size, (90, 140, 200)).save(buf, format=fmt)
    return buf.getvalue()


LMMS_SCHEMA = pa.schema([
    ("question_id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("question", pa.string()), ("answer", pa.list_(pa.string())), ("segmentation", pa.list_(pa.float32())),
    ("bbox", pa.list_(pa.float32())), ("iscrowd", pa.int8()), ("file_name", pa.string())])
LMMS_ROWS = {  # split -> (question_id, image bytes, answer, bbox [x, y, w, h])
    "val": [("q1", image_bytes((16, 3979)), ["thin wire", "the  wire "], [0.01, 1273.55, 0.03, 1050.53]),
            ("q2", image_bytes((64, 48)), ["left cat"], [4.2, 6.0, 20.5, 15.3]),
            ("q3", image_bytes((64, 48)), [], [1, 1, 5, 5])],  # no expression
    "testA": [("q4", b"not an image", ["a cat"], [1, 1, 5, 5]),  # corrupt_image
              ("q5", image_bytes((64, 48)), ["flat cat"], [1, 1, 0, 5])],  # w = 0: bad_box
}


def write_lmms(root: Path) -> Path:
    """A download of lmms-lab/RefCOCO: README.md and data/{split}-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\ndataset_info: ...\n---\n")
    for split, rows in LMMS_ROWS.items():
        table = pa.table({
            "question_id": [r[0] for r in rows], "image": [{"bytes": r[1], "path": None} for r in rows],
            "question": [QUESTION] * len(rows), "answer": [r[2] for r in rows],
            "segmentation": [[0.0, 0.0, 1.0, 1.0] for _ in rows], "bbox": [r[3] for r in rows],
            "iscrowd": [0] * len(rows), "file_name": [f"COCO_train2014_{r[0]}.jpg" for r in rows]},
            schema=LMMS_SCHEMA)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def check_sample(obj: dict, members: dict[str, bytes], corners: tuple[float, ...]) -> None:
    """hint, image, expression; one box whose mention is the expression, within the grid's rounding of the source
    corners, scoring perfectly against itself."""
    messages, meta = obj["messages"], obj["meta"]
    assert messages[0] == {"role": "user", "content": HINT} and messages[1]["content"] == [{"type": "image"}]
    assert meta["task"] == "refexp" and meta["type"] == "grounding"
    (g,) = parse_grounding(messages[3]["content"])
    assert g.mention == messages[2]["content"]
    width, height = meta["width"], meta["height"]
    image = next(v for k, v in members.items() if k.startswith("0."))
    assert PIL.Image.open(io.BytesIO(image)).size == (width, height)
    for v, want, size in zip(g.to_pixels(width, height).box, corners, (width, height, width, height), strict=True):
        assert abs(v - want) <= 0.5 * size / 1000 + 1e-6
    counts = grounding(messages[3]["content"], messages[3]["content"])
    assert counts["true_positives"] == 1 and counts["malformed"] == 0


def xywh(b: list[float]) -> tuple[float, ...]:
    return b[0], b[1], b[0] + b[2], b[1] + b[3]


def test_lmms_lab_layout_every_split(tmp_path: Path) -> None:
    repo = write_lmms(tmp_path / "RefCOCO")
    fmt, why = infer_format(repo)
    assert fmt == "refcoco" and "answer" in why
    assert infer_format(repo / "data" / "val-00000-of-00001.parquet")[0] == "refcoco"
    report = make_shards.make_shards(build_converter("refcoco", repo), tmp_path / "out", workers=2, progress=False)
    assert report["records"] == 6 and report["samples"] == 3 and report["source"] == "RefCOCO"
    assert report["skipped"] == {"bad_box": 1, "corrupt_image": 1, "no_sentences": 1}
    samples = read_samples(tmp_path / "out")
    assert [o["messages"][2]["content"] for o, _ in samples] == ["thin wire", "the wire", "left cat"]
    # float32 read as its shortest decimal: x2 = 0.01 + 0.03 = 0.04 px of 16 -> 2.5 -> 3 (the float32 values as
    # doubles sum to 0.0399999991 -> 2); y1 = 1273550 / 3979 = 320.07 -> 320, y2 = 2324080 / 3979 = 584.09 -> 584
    assert samples[0][0]["messages"][3]["content"] == '<point_box mention="thin wire"> (1,320) (3,584) </point_box>'
    f32 = [float(np.float32(v)) for v in (0.01, 0.03)]
    assert math.floor((f32[0] + f32[1]) * 1000 / 16 + 0.5) == 2
    assert samples[2][0]["messages"][3]["content"] == '<point_box mention="left cat"> (66,125) (386,444) </point_box>'
    assert samples[2][0]["meta"] == {"task": "refexp", "type": "grounding", "question_id": "q2",
                                     "file_name": "COCO_train2014_q2.jpg", "width": 64, "height": 48,
                                     "split": "val", "sentence": 0}
    assert [o["id"] for o, _ in samples] == ["q1_0", "q1_1", "q2_0"]
    for (obj, members), row in zip(samples, [LMMS_ROWS["val"][0]] * 2 + [LMMS_ROWS["val"][1]], strict=True):
        check_sample(obj, members, xywh([float(np.float32(v)) for v in row[3]]))


def test_lmms_lab_one_split_and_the_cli(tmp_path: Path, capsys) -> None:
    repo = write_lmms(tmp_path / "RefCOCO")
    conv = build_converter("refcoco", repo, split="testA")
    assert conv.total() == 2
    with pytest.raises(InputError, match="its splits are testA, val"):
        build_converter("refcoco", repo, split="train")
    assert cli.main(["make-shards", str(repo), str(tmp_path / "val"), "--hf-split", "val", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "inferred --format refcoco" in out and "wrote 3 samples" in out
    files = str(repo / "data" / "*.parquet")
    assert cli.main(["make-shards", "parquet", str(tmp_path / "all"), "--hf-data-files", files]) == 0
    assert "inferred --format refcoco" in capsys.readouterr().out
    assert {o["meta"]["split"] for o, _ in read_samples(tmp_path / "all")} == {"val"}  # testA's rows were skipped
    assert json.loads((tmp_path / "all" / "make_shards_report.json").read_text())["records"] == 6


REFER_IMAGES = {1: (64, 48), 2: (16, 3979)}
REFER_ROWS = [  # (split, ref_id, ann_id, image_id, sentences, captions, raw_anns bbox [x,y,w,h], declared size)
    ("train", 100, 10, 1, ["left cat", "cat on the left"], [], [4.2, 6.0, 20.5, 15.3], None),
    ("val", 101, 20, 2, ["the wire"], [], [0.19, 1273.55, 0.49, 1050.53], None),
    ("val", 102, 21, 1, ["wrong size"], [], [1, 1, 5, 5], (100, 100)),  # size_mismatch
    ("val", 103, 22, 1, [], ["the dog"], [30, 2, 10, 10], None),  # no sentences: the captions
    ("testB", 104, 23, 3, ["gone"], [], [1, 1, 5, 5], None),  # image 3 has no file: missing_image
]


def refer_row(split, ref_id, ann_id, image_id, sentences, captions, raw, declared) -> dict:
    """One row as jxu124/refcoco has it (bbox [x1, y1, x2, y2] summed in floating point; raw_anns and
    raw_image_info as JSON strings)."""
    w, h = declared or REFER_IMAGES.get(image_id, (10, 10))
    name = f"COCO_train2014_{image_id:012d}.jpg"
    return {
        "sent_ids": list(range(len(sentences))), "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": split,
        "sentences": [{"raw": s, "sent": s, "sent_id": k, "tokens": s.split()} for k, s in enumerate(sentences)],
        "category_id": 1, "raw_anns": json.dumps({"iscrowd": 0, "image_id": image_id, "bbox": raw, "category_id": 1,
                                                  "id": ann_id}),
        "raw_image_info": json.dumps({"file_name": name, "height": h, "width": w, "id": image_id}),
        "raw_sentences": json.dumps(sentences), "image_path": f"coco/train2014/{name}",
        "bbox": [raw[0], raw[1], raw[0] + raw[2], raw[1] + raw[3]], "captions": captions or sentences,
        "global_image_id": f"coco.{image_id}", "anns_id": f"refcoco.{ann_id}"}


def write_refer(tmp_path: Path) -> tuple[Path, Path]:
    """A save_to_disk DatasetDict of jxu124/refcoco's layout and its COCO images (JPEG) -> (dataset, image root)."""
    import datasets

    images = tmp_path / "coco_root" / "coco" / "train2014"
    images.mkdir(parents=True)
    for image_id, size in REFER_IMAGES.items():
        (images / f"COCO_train2014_{image_id:012d}.jpg").write_bytes(image_bytes(size, "JPEG"))
    splits = {"train": [0], "validation": [1, 2, 3], "test": [4]}
    dd = datasets.DatasetDict({name: datasets.Dataset.from_list([refer_row(*REFER_ROWS[i]) for i in rows])
                               for name, rows in splits.items()})
    dd.save_to_disk(str(tmp_path / "refcoco"))
    return tmp_path / "refcoco", tmp_path / "coco_root"


def test_refer_layout_from_save_to_disk(tmp_path: Path) -> None:
    dataset, root = write_refer(tmp_path)
    assert infer_format(dataset)[0] == "refcoco"
    report = make_shards.make_shards(build_converter("refcoco", dataset, root), tmp_path / "out", workers=1,
                                     progress=False)
    assert report["records"] == 6 and report["samples"] == 4
    assert report["skipped"] == {"missing_image": 1, "size_mismatch": 1}
    assert "100x100" in report["examples"]["size_mismatch"][0]
    samples = read_samples(tmp_path / "out")
    assert [(o["id"], o["messages"][2]["content"], o["meta"]["split"]) for o, _ in samples] == [
        ("ref100_0", "left cat", "train"), ("ref100_1", "cat on the left", "train"), ("ref101_0", "the wire", "val"),
        ("ref103_0", "the dog", "val")]
    # raw_anns' [x, y, w, h] summed exactly: x2 = 0.68 px of 16 -> 42.5 -> 43 (the bbox column's
    # 0.6799999999999999 gives 42)
    assert samples[2][0]["messages"][3]["content"] == '<point_box mention="the wire"> (12,320) (43,584) </point_box>'
    assert samples[0][0]["meta"] == {"task": "refexp", "type": "grounding", "coco_image_id": 1, "category_id": 1,
                                     "file_name": "COCO_train2014_000000000001.jpg", "ann_ids": [10],
                                     "ref_id": 100, "width": 64, "height": 48, "split": "train", "sentence": 0}
    for obj, members in samples:
        row = next(r for r in REFER_ROWS if r[1] == obj["meta"]["ref_id"])
        check_sample(obj, members, xywh(row[6]))
    # --image-root the train2014 folder itself: image_path's file name is found there; one split by refer's name
    conv = build_converter("refcoco", dataset, root / "coco" / "train2014", split="val")
    report = make_shards.make_shards(conv, tmp_path / "val", workers=1, progress=False)
    assert report["samples"] == 2 and report["skipped"] == {"size_mismatch": 1}


def test_refer_layout_parquet_falls_back_to_the_bbox_column(tmp_path: Path) -> None:
    """Without a usable raw_anns the xyxy `bbox` column is used as it is (its floating-point sums included)."""
    import datasets

    _, root = write_refer(tmp_path)
    row = refer_row(*REFER_ROWS[0])
    rows = [row, {**row, "ref_id": 200, "raw_anns": "{}", "bbox": [30.0, 2.0, 40.0, 12.0]},
            {**row, "ref_id": 201, "raw_anns": "not json", "bbox": [30.0, 2.0, 20.0, 12.0]}]  # x2 < x1: bad_box
    path = tmp_path / "train-00000-of-00001-abc123.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert infer_format(path)[0] == "refcoco"
    report = make_shards.make_shards(build_converter("refcoco", path, root), tmp_path / "out", workers=1,
                                     progress=False)
    assert report["samples"] == 4 and report["skipped"] == {"bad_box": 2}  # two sentences a row
    answers = [o["messages"][3]["content"] for o, _ in read_samples(tmp_path / "out")]
    # 30 px of 64 = 468.75 -> 469, 2 / 48 = 41.67 -> 42, 40 / 64 = 625, 12 / 48 = 250
    assert answers[2] == '<point_box mention="left cat"> (469,42) (625,250) </point_box>'


def test_columns_that_are_no_refcoco_layout_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "val-00000-of-00001.parquet"
    pq.write_table(pa.table({"image": [{"bytes": image_bytes((8, 8)), "path": None}], "caption": ["x"]}), path)
    with pytest.raises(InputError, match="not a RefCOCO layout"):
        build_converter("refcoco", path)
    assert infer_format(path)[0] == "hf-dataset"
