"""Interleaved documents in (`documents-jsonl`, `obelics`, `mmc4`) and `make-shards` without --format: records the
tests write convert, their text and image order survive into the shards, the loss covers every text token and no
image token, missing images skip or drop per flag with exact counts, the shards train, and every input kind's
format is inferred."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import PIL.Image
import pytest

from data_tools import stats
from data_tools.interleaved import Obelics, url_file
from isaac_train.data.decode import encode_members, parse_sample
from isaac_train.processing.processor import IGNORE_INDEX

from .test_make_shards import read_dataset, run_cli, save_image, write_jsonl

CAT_URL = "https://example.com/pics/cat.jpg?size=large"
DOG_URL = "http://example.org/a/dog%20photo.png"
GONE_URL = "https://example.com/gone.jpg"


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image(name: str | None = None) -> dict:
    return {"type": "image"} if name is None else {"type": "image", "image": name}


@pytest.fixture
def imgs(tmp_path: Path) -> dict[str, bytes]:
    """Distinct small images under tmp_path/imgs (so order shows in the bytes), a broken one, and two downloaded
    URLs: CAT_URL under its SHA-1 name, DOG_URL under its basename."""
    root = tmp_path / "imgs"
    out = {
        "a.png": save_image(root / "a.png", colour=(200, 30, 30)),
        "b.jpg": save_image(root / "b.jpg", "JPEG", colour=(30, 180, 40)),
        "c.webp": save_image(root / "c.webp", "WEBP", colour=(30, 30, 200)),
        "d.png": save_image(root / "d.png", size=(20, 20), colour=(250, 250, 0)),
    }
    (root / "garbage.jpg").write_bytes(b"not an image at all")
    out["cat"] = save_image(root / (hashlib.sha1(CAT_URL.encode()).hexdigest() + ".jpg"), "JPEG", colour=(9, 9, 9))
    out["dog"] = save_image(root / "dog photo.png", colour=(120, 60, 200))
    return out


def report_of(out: Path) -> dict:
    return json.loads((out / "make_shards_report.json").read_text())


def layout(members: dict[str, bytes]) -> tuple[list, list[bytes]]:
    """A shard sample's segments (image items as None, texts as strings) and its image bytes in order."""
    kind, items, images, _ = parse_sample(members)
    assert kind == "document"
    return [None if it["type"] == "image" else it["text"] for it in items], images


def assert_loss_on_text_only(members: dict[str, bytes], processor) -> None:
    """Through the loader's encode: every text token is a label, no image token is."""
    enc = encode_members(members, processor, max_length=None)
    is_image = enc.input_ids == processor.image_token_id
    assert bool(((enc.labels != IGNORE_INDEX) == ~is_image).all())
    assert int(is_image.sum()) > 0 or enc.image_grid_hw.shape[0] == 0
    assert enc.num_label_tokens == int((~is_image).sum()) > 0


# ---- the three layouts ------------------------------------------------------------------------------------


def test_segments_jsonl(tmp_path: Path, imgs, tiny_processor) -> None:
    records = [
        {"id": "d0", "segments": [text("Intro. "), image("a.png"), text(" Middle. "), image(), text(" End.")],
         "images": ["b.jpg"]},
        {"segments": [text("See <image> here.")], "images": ["c.webp"]},  # a marker, as in chat records
        {"segments": [text("A document without images.")]},
        {"segments": [image("a.png")]},
        {"segments": []},
        {"segments": [text("x"), image("nope.png")]},
        {"segments": [text("x"), {"type": "video"}]},
        {"segments": [text("x"), image()], "images": ["a.png", "b.jpg"]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    src = write_jsonl(tmp_path / "imgs" / "docs.jsonl", records)
    out = tmp_path / "out"
    assert run_cli(["--format", "documents-jsonl", str(src), str(out), "--keys", "id"]) == 0
    report = report_of(out)
    assert report["format"] == "documents-jsonl" and report["samples"] == 3 and report["images"] == 3
    assert report["skipped"] == {"bad_schema": 2, "empty_document": 1, "image_count_mismatch": 1,
                                 "missing_image": 1, "no_text": 1}
    assert any("chat-jsonl" in m for m in report["examples"]["bad_schema"])
    samples = read_dataset(out)
    segments, images = layout(samples["d0"])
    assert segments == ["Intro. ", None, " Middle. ", None, " End."] and images == [imgs["a.png"], imgs["b.jpg"]]
    assert json.loads(samples["d0"]["json"])["source"] == "docs"
    assert layout(samples["000000001"]) == (["See ", None, " here."], [imgs["c.webp"]])
    assert layout(samples["000000002"]) == (["A document without images."], [])
    for members in samples.values():
        assert_loss_on_text_only(members, tiny_processor)

    # chat-jsonl no longer refuses segments lines: a file mixing both kinds converts
    mixed = write_jsonl(tmp_path / "imgs" / "mixed.jsonl", [records[0], records[-1]])
    assert run_cli(["--format", "chat-jsonl", str(mixed), str(tmp_path / "mixed")]) == 0
    kinds = sorted(parse_sample(m)[0] for m in read_dataset(tmp_path / "mixed").values())
    assert kinds == ["chat", "document"]


def obelics_records() -> list:
    return [
        {"texts": ["First paragraph.", None, "Second paragraph.", "Third paragraph.", None],
         "images": [None, "a.png", None, None, CAT_URL], "id": 7},
        {"texts": [None, "Caption-like text after two images.", None],
         "images": ["b.jpg", None, "d.png"]},
        {"texts": ["only text"], "images": [None]},
        {"texts": [None, None], "images": ["a.png", None]},
        {"texts": [], "images": []},
        {"texts": ["a", None], "images": ["a.png"]},
        {"texts": ["both", None], "images": ["a.png", None]},
        {"texts": ["x", None], "images": [None, GONE_URL]},
        {"texts": ["y", None], "images": [None, "garbage.jpg"]},
        {"texts": ["has <image> inside"], "images": [None]},
    ]


def test_obelics_jsonl(tmp_path: Path, imgs, tiny_processor) -> None:
    records = obelics_records()
    records[6] = {"texts": ["both"], "images": ["a.png"]}  # position 0 holds a text and an image
    src = write_jsonl(tmp_path / "obelics.jsonl", records)
    out = tmp_path / "out"
    assert run_cli(["--format", "obelics", str(src), str(out), "--image-root", str(tmp_path / "imgs"),
                    "--workers", "2"]) == 0
    report = report_of(out)
    assert report["samples"] == 3 and report["images"] == 4 and report["dropped_images"] == 0
    assert report["skipped"] == {"bad_schema": 2, "corrupt_image": 1, "empty_document": 1,
                                 "image_count_mismatch": 1, "missing_image": 1, "no_text": 1}
    assert any(hashlib.sha1(GONE_URL.encode()).hexdigest() in m for m in report["examples"]["missing_image"])
    samples = read_dataset(out)
    first = samples["000000000"]
    assert json.loads(first["json"])["id"] == 7
    # consecutive texts joined with a blank line; images where their positions are
    assert layout(first) == (["First paragraph.", None, "Second paragraph.\n\nThird paragraph.", None],
                             [imgs["a.png"], imgs["cat"]])
    assert layout(samples["000000001"]) == ([None, "Caption-like text after two images.", None],
                                            [imgs["b.jpg"], imgs["d.png"]])
    assert layout(samples["000000002"]) == (["only text"], [])
    for members in samples.values():
        assert_loss_on_text_only(members, tiny_processor)


def test_obelics_hf_dataset_and_embedded_images(tmp_path: Path, imgs, tiny_processor) -> None:
    datasets = pytest.importorskip("datasets")
    red, green = PIL.Image.open(tmp_path / "imgs" / "a.png"), PIL.Image.open(tmp_path / "imgs" / "b.jpg")
    features = datasets.Features({"texts": datasets.Sequence(datasets.Value("string")),
                                  "images": datasets.Sequence(datasets.Image())})
    ds = datasets.Dataset.from_dict({
        "texts": [["Before the picture.", None, "After it."], [None, "Green, then red.", None], ["No image."]],
        "images": [[None, red, None], [green, None, {"bytes": imgs["a.png"], "path": None}], [None]],
    }, features=features)
    ds.save_to_disk(str(tmp_path / "obelics_ds"))
    out = tmp_path / "out"
    assert run_cli(["--format", "obelics", str(tmp_path / "obelics_ds"), str(out)]) == 0
    report = report_of(out)
    assert report["samples"] == 3 and report["skipped_total"] == 0 and report["source"] == "obelics_ds"
    samples = read_dataset(out)
    assert layout(samples["000000000"]) == (["Before the picture.", None, "After it."], [imgs["a.png"]])
    assert layout(samples["000000001"]) == ([None, "Green, then red.", None], [imgs["b.jpg"], imgs["a.png"]])
    for members in samples.values():
        assert_loss_on_text_only(members, tiny_processor)

    # a record holding PIL images (what a dataset gives when read with decoding on)
    converter = Obelics(tmp_path / "obelics_ds", None)
    converted = converter.convert_record({"texts": ["t", None], "images": [None, red]}, "row x")
    assert converted.sample["segments"] == [text("t"), image()] and converted.images[0][0] == "0.png"

    # hf-dataset refuses these columns and names the format that takes them
    assert run_cli(["--format", "hf-dataset", str(tmp_path / "obelics_ds"), str(tmp_path / "o2")]) == 2


def mmc4_records(imgs: dict[str, bytes]) -> list:
    return [
        {"text_list": ["Sentence zero.", "Sentence one.", "Sentence two."],
         "image_info": [{"image_name": "a.png", "matched_text_index": 2, "matched_sim": 0.3},
                        {"image_name": "b.jpg", "matched_text_index": 0, "matched_sim": 0.2},
                        {"raw_url": CAT_URL, "matched_text_index": 2, "matched_sim": 0.25}],
         "url": "http://example.com/doc"},
        {"text_list": ["Only sentence."], "image_info": [
            {"image_base64": base64.b64encode(imgs["d.png"]).decode(), "matched_text_index": 0}]},
        {"text_list": ["No images here.", "Still none."], "image_info": []},
        {"text_list": ["x"], "image_info": [{"image_name": "a.png", "matched_text_index": 3}]},
        {"text_list": [], "image_info": []},
        {"text_list": ["  "], "image_info": [{"image_name": "a.png", "matched_text_index": 0}]},
        {"text_list": ["y"], "image_info": [{"image_name": "nope.jpg", "matched_text_index": 0}]},
    ]


@pytest.mark.parametrize("position", ["before", "after"])
def test_mmc4_jsonl(tmp_path: Path, imgs, tiny_processor, position: str) -> None:
    src = write_jsonl(tmp_path / "imgs" / "mmc4.jsonl", mmc4_records(imgs))
    out = tmp_path / "out"
    argv = ["--format", "mmc4", str(src), str(out)] + (["--mmc4-image-position", position] * (position == "after"))
    assert run_cli(argv) == 0
    report = report_of(out)
    assert report["samples"] == 3 and report["images"] == 4
    assert report["skipped"] == {"bad_schema": 1, "empty_document": 1, "missing_image": 1, "no_text": 1}
    samples = read_dataset(out)
    if position == "before":  # each image just before its matched sentence, same-sentence images in list order
        expected = [None, "Sentence zero. Sentence one.", None, None, "Sentence two."]
        only = [None, "Only sentence."]
    else:
        expected = ["Sentence zero.", None, "Sentence one. Sentence two.", None, None]
        only = ["Only sentence.", None]
    assert layout(samples["000000000"]) == (expected, [imgs["b.jpg"], imgs["a.png"], imgs["cat"]])
    assert layout(samples["000000001"]) == (only, [imgs["d.png"]])
    assert layout(samples["000000002"]) == (["No images here. Still none."], [])
    for members in samples.values():
        assert_loss_on_text_only(members, tiny_processor)


# ---- missing images: skip (default) or drop -------------------------------------------------------------


def test_missing_images_skip_or_drop(tmp_path: Path, imgs, capsys) -> None:
    records = [
        {"texts": ["keeps all", None], "images": [None, "a.png"]},
        {"texts": ["one gone", None, "two", None], "images": [None, "nope.png", None, "b.jpg"]},
        {"texts": ["broken and gone", None, None], "images": [None, "garbage.jpg", GONE_URL]},
    ]
    src = write_jsonl(tmp_path / "imgs" / "web.jsonl", records)
    assert run_cli(["--format", "obelics", str(src), str(tmp_path / "skip")]) == 0
    report = report_of(tmp_path / "skip")
    assert report["samples"] == 1 and report["skipped"] == {"corrupt_image": 1, "missing_image": 1}
    assert report["dropped_images"] == 0

    capsys.readouterr()
    assert run_cli(["--format", "obelics", str(src), str(tmp_path / "drop"), "--drop-missing-images"]) == 0
    report = report_of(tmp_path / "drop")
    assert report["samples"] == 3 and report["skipped_total"] == 0 and report["images"] == 2
    assert report["dropped_images"] == 3
    assert report["dropped_images_by_reason"] == {"corrupt_image": 1, "missing_image": 2}
    assert "nope.png" in " ".join(report["dropped_examples"]["missing_image"])
    assert "dropped 3 image(s)" in capsys.readouterr().out
    samples = read_dataset(tmp_path / "drop")
    assert layout(samples["000000001"]) == (["one gone\n\ntwo", None], [imgs["b.jpg"]])  # the texts now meet
    assert layout(samples["000000002"]) == (["broken and gone"], [])  # text kept, no image left

    # the flags belong to the document formats
    chat = write_jsonl(tmp_path / "imgs" / "chat.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                                        {"role": "assistant", "content": "a"}]}])
    assert run_cli(["--format", "chat-jsonl", str(chat), str(tmp_path / "c"), "--drop-missing-images"]) == 2
    assert "--drop-missing-images apply to --format documents-jsonl, obelics, mmc4" in capsys.readouterr().err
    assert run_cli(["--format", "obelics", str(src), str(tmp_path / "o"), "--mmc4-image-position", "after"]) == 2


def test_url_names(tmp_path: Path, imgs) -> None:
    root = tmp_path / "imgs"
    assert url_file(CAT_URL, root, "sha1", "w") == hashlib.sha1(CAT_URL.encode()).hexdigest() + ".jpg"
    assert url_file(DOG_URL, root, "basename", "w") == "dog photo.png"
    records = [{"texts": ["dog", None], "images": [None, DOG_URL]}, {"texts": ["cat", None], "images": [None, CAT_URL]}]
    src = write_jsonl(root / "urls.jsonl", records)
    assert run_cli(["--format", "obelics", str(src), str(tmp_path / "b"), "--url-names", "basename"]) == 0
    report = report_of(tmp_path / "b")
    assert report["samples"] == 1 and report["skipped"] == {"missing_image": 1}  # the cat is saved by its sha1
    assert layout(read_dataset(tmp_path / "b")["000000000"])[1] == [imgs["dog"]]


# ---- stats and training on converted documents ------------------------------------------------------------


def test_stats_reports_the_document_layout(tmp_path: Path, imgs, tiny_processor) -> None:
    src = write_jsonl(tmp_path / "imgs" / "o.jsonl", obelics_records()[:3])
    assert run_cli(["--format", "obelics", str(src), str(tmp_path / "out")]) == 0
    out_json = tmp_path / "stats.json"
    assert stats.run(_stats_args([str(tmp_path / "out"), "--workers", "1", "--json", str(out_json)])) == 0
    docs = json.loads(out_json.read_text())["documents"]
    assert docs["samples"] == 3 and docs["without_images"] == 1
    assert docs["images_per_document"]["total"] == 4 and docs["images_per_document"]["max"] == 2

    def tokens(t: str) -> int:
        return len(tiny_processor.tokenizer(t, add_special_tokens=False)["input_ids"])

    gaps = [tokens("Second paragraph.\n\nThird paragraph."), tokens("Caption-like text after two images.")]
    between = docs["text_tokens_between_images"]
    assert between["gaps"] == 2 and between["total"] == sum(gaps) and between["max"] == max(gaps)


def _stats_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    stats.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_tiny_run_trains_on_converted_documents(tmp_path: Path, imgs) -> None:
    from isaac_train.train.cli import compose_config
    from isaac_train.train.loop import train

    from ..train.conftest import losses, tiny_overrides

    records = [{"texts": [f"Document {i} says hello.", None, "More words follow the picture here.", None],
                "images": [None, ("a.png", "b.jpg", "d.png")[i % 3], None, "c.webp"]} for i in range(8)]
    src = write_jsonl(tmp_path / "imgs" / "train.jsonl", records)
    shards = tmp_path / "shards"
    assert run_cli(["--format", "obelics", str(src), str(shards)]) == 0
    overrides = tiny_overrides(shards, tmp_path / "run", "train.max_steps=2", "optim.warmup_steps=1")
    result = train(compose_config(overrides))
    got = losses(result.run_dir)
    assert sorted(got) == [1, 2] and all(0 < v < 100 for v in got.values())


# ---- format inference -------------------------------------------------------------------------------------


def _inferred(capsys, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    code = run_cli([str(src), str(out), *extra])
    captured = capsys.readouterr()
    line = next((ln for ln in captured.out.splitlines() if ln.startswith("make-shards: inferred")), "")
    return code, line or captured.err


def test_format_inference_for_every_input_kind(tmp_path: Path, imgs, capsys) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "imgs"
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    llava = {"id": "l", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    inputs = {
        "chat-jsonl": write_jsonl(root / "chat.jsonl", ["", "{broken", chat]),  # first parseable record decides
        "documents-jsonl": write_jsonl(root / "docs.jsonl", [{"segments": [text("t")]}]),
        "obelics": write_jsonl(root / "obelics.jsonl", obelics_records()[:1]),
        "mmc4": write_jsonl(root / "mmc4.jsonl", mmc4_records(imgs)[:1]),
        "llava": root / "llava.json",
        "coco": root / "instances.json",
        "hf-dataset": tmp_path / "chat_ds",
        "image-folder": tmp_path / "folder",
    }
    inputs["llava"].write_text(json.dumps([llava], indent=1))
    inputs["coco"].write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 24, "height": 16}],
                                          "annotations": [], "categories": [{"id": 1, "name": "box"}]}, indent=2))
    datasets.Dataset.from_dict({"messages": [chat["messages"]]}).save_to_disk(str(inputs["hf-dataset"]))
    save_image(inputs["image-folder"] / "x.png")
    (inputs["image-folder"] / "x.txt").write_text("a caption")
    for fmt, src in inputs.items():
        code, line = _inferred(capsys, src, tmp_path / f"out-{fmt}")
        assert line.startswith(f"make-shards: inferred --format {fmt} ("), (fmt, line)
        assert code in (0, 1), (fmt, code)  # converted (coco's image has no box: nothing written, exit 1)
        assert report_of(tmp_path / f"out-{fmt}")["format"] == fmt

    more = {  # datasets with OBELICS / MMC4 columns, a parquet file, LLaVA as JSONL, captions as JSONL
        "obelics": tmp_path / "obelics_ds",
        "mmc4": root / "mmc4.parquet",
        "llava": write_jsonl(root / "llava.jsonl", [llava]),
        "hf-dataset": write_jsonl(root / "captions.jsonl", [{"image": "a.png", "caption": "red"}]),
    }
    datasets.Dataset.from_dict({"texts": [["t", None]], "images": [[None, "a.png"]]}).save_to_disk(
        str(more["obelics"]))
    pq.write_table(pa.table({"text_list": [["s"]], "image_info": [[{"image_name": "a.png", "matched_text_index": 0}]]}),
                   more["mmc4"])
    for fmt, src in more.items():
        code, line = _inferred(capsys, src, tmp_path / f"more-{fmt}", "--image-root", str(root), "--hf-cache-dir",
                               str(tmp_path / "cache"))
        assert line.startswith(f"make-shards: inferred --format {fmt} (") and code == 0, (fmt, line)

    # --format overrides: a segments file read as chat-jsonl (which takes documents too), no inference line
    code, line = _inferred(capsys, inputs["documents-jsonl"], tmp_path / "override", "--format", "chat-jsonl")
    assert code == 0 and not line.startswith("make-shards: inferred")
    assert report_of(tmp_path / "override")["format"] == "chat-jsonl"

    # what cannot be placed is refused, naming the formats
    (tmp_path / "notes.txt").write_text("just some notes\n")
    (tmp_path / "empty").mkdir()
    unplaceable = [tmp_path / "notes.txt", tmp_path / "empty", write_jsonl(root / "odd.jsonl", [{"foo": 1}]),
                   root / "list.json"]
    (root / "list.json").write_text(json.dumps([{"question": "q"}]))
    for src in unplaceable:
        code, err = _inferred(capsys, src, tmp_path / "refused")
        assert code == 2 and "cannot tell the format" in err and "obelics, mmc4" in err and "--format" in err, err
