"""`isaac-data make-shards` on small real inputs the tests write: every format, exact skip counts, shards that
re-read with ShardSet/read_sample and process with the tiny IsaacProcessor, output bytes independent of workers."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import PIL.Image
import pytest

from data_tools import make_shards
from data_tools.converters import InputError, split_markers
from data_tools.formats import build_converter
from isaac_train.data.decode import encode_members, parse_sample
from isaac_train.data.shards import ShardSet, read_sample


def save_image(path: Path, fmt: str = "PNG", size: tuple[int, int] = (24, 16), colour=(200, 30, 30)) -> bytes:
    """Write a real image file; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.Image.new("RGB", size, colour)
    image.paste((20, 20, 220), (2, 2, size[0] // 2, size[1] // 2))
    image.save(path, format=fmt)
    return path.read_bytes()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    make_shards.add_arguments(parser)
    return make_shards.run(parser.parse_args(argv))


def read_dataset(out_dir: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a shard set by key, read through the manifests' byte ranges."""
    shards = ShardSet(out_dir)
    samples = {}
    for shard, count in enumerate(shards.counts):
        for position in range(count):
            ref = shards.ref(shard, position)
            samples[ref.key] = read_sample(ref)
    return samples


def assert_all_encode(samples: dict[str, dict[str, bytes]], processor) -> None:
    for key, members in samples.items():
        _, _, images, _ = parse_sample(members)
        encoded = encode_members(members, processor, max_length=None)
        assert encoded.num_label_tokens > 0, key
        assert encoded.image_grid_hw.shape[0] == len(images), key


def user(*content) -> dict:
    """A user turn: one string stays a string, items become a content list."""
    plain = len(content) == 1 and isinstance(content[0], str)
    return {"role": "user", "content": content[0] if plain else list(content)}


def answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


@pytest.fixture
def images(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "imgs"
    out = {
        "a.png": save_image(root / "a.png"),
        "b.jpg": save_image(root / "b.jpg", "JPEG", colour=(30, 180, 40)),
        "c.bmp": save_image(root / "c.bmp", "BMP", size=(10, 12)),
        "d.webp": save_image(root / "d.webp", "WEBP"),
    }
    (root / "garbage.jpg").write_bytes(b"this is not an image")
    (root / "cut.jpg").write_bytes(out["b.jpg"][: len(out["b.jpg"]) // 2])
    return out


def chat_records() -> list:
    img = lambda name: {"type": "image", "image": name}  # noqa: E731
    return [
        {"messages": [user(img("a.png"), text("What is this?")), answer("A red image.")]},
        {"id": "second", "messages": [user("<image>\nWhat is it?"), answer("A jpeg.")], "images": ["b.jpg"]},
        {"messages": [user({"type": "image"}, text("and"), {"type": "image"}), answer("Two.")],
         "images": ["a.png", "c.bmp"]},
        {"messages": [{"role": "system", "content": "Be brief."}, user("Hello"), answer("Hi."),
                      user(img("d.webp")), answer("WebP.")]},
        {"messages": [user(img("nope.png")), answer("missing")]},
        {"messages": [user({"type": "image"}), answer("garbage")], "images": ["garbage.jpg"]},
        {"messages": [user({"type": "image"}), answer("truncated")], "images": ["cut.jpg"]},
        '{"messages": [oops',
        {"messages": [user({"type": "image"}), answer("mismatch")], "images": ["a.png", "b.jpg"]},
        {"messages": [user("No answer here")]},
        "[1, 2]",
        "",
    ]


def test_chat_jsonl(tmp_path: Path, images: dict[str, bytes], tiny_processor, capsys) -> None:
    src = write_jsonl(tmp_path / "imgs" / "chat.jsonl", chat_records())
    out = tmp_path / "out"
    assert run_cli(["--format", "chat-jsonl", str(src), str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 samples" in printed and "missing_image" in printed

    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["samples"] == 4 and report["records"] == 11 and report["images"] == 5
    assert report["skipped"] == {"bad_json": 2, "corrupt_image": 2, "image_count_mismatch": 1, "missing_image": 1,
                                 "no_assistant_turn": 1}
    assert "nope.png" in report["examples"]["missing_image"][0]

    samples = read_dataset(out)
    assert sorted(samples) == ["000000000", "000000001", "000000002", "000000003"]
    assert samples["000000000"]["0.png"] == images["a.png"]  # original bytes, not re-encoded
    assert samples["000000001"]["0.jpg"] == images["b.jpg"]
    assert samples["000000003"]["0.webp"] == images["d.webp"]
    assert json.loads(samples["000000001"]["json"]) == {
        "source": "chat", "id": "second",
        "messages": [{"role": "user", "content": [{"type": "image"}, text("What is it?")]},
                     {"role": "assistant", "content": "A jpeg."}],
    }
    two = samples["000000002"]
    assert sorted(two) == ["0.png", "1.png", "json"] and two["0.png"] == images["a.png"]
    bmp = PIL.Image.open(io.BytesIO(two["1.png"]))  # BMP re-encoded as PNG, same pixels
    assert bmp.format == "PNG" and bmp.tobytes() == PIL.Image.open(io.BytesIO(images["c.bmp"])).tobytes()
    assert json.loads(samples["000000003"]["json"])["messages"][0] == {"role": "system", "content": "Be brief."}
    assert_all_encode(samples, tiny_processor)


def test_worker_count_does_not_change_output(tmp_path: Path, images: dict[str, bytes]) -> None:
    records = chat_records() * 6
    src = write_jsonl(tmp_path / "imgs" / "chat.jsonl", records)
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        conv = build_converter("chat-jsonl", src)
        report = make_shards.make_shards(conv, out, workers=workers, shard_size=8 << 10, progress=False)
        assert report["samples"] == 24 and report["skipped_total"] == 6 * 7 and report["shards"] > 2
        outputs[workers] = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "make_shards_report.json"}
    assert outputs[1] == outputs[3]
    limited = make_shards.make_shards(build_converter("chat-jsonl", src), tmp_path / "few", workers=2, max_samples=5,
                                      progress=False)
    assert limited["samples"] == 5 and len(read_dataset(tmp_path / "few")) == 5


def test_llava(tmp_path: Path, images: dict[str, bytes], tiny_processor) -> None:
    entries = [
        {"id": "l0", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "l1", "image": ["a.png", "b.jpg"], "conversations": [
            {"from": "system", "value": "Compare."}, {"from": "human", "value": "First <image> then <image>?"},
            {"from": "gpt", "value": "Different."}]},
        {"id": "l2", "conversations": [{"from": "human", "value": "Text only"}, {"from": "gpt", "value": "Fine."}]},
        {"id": "l3", "image": "b.jpg", "conversations": [
            {"from": "human", "value": "No marker"}, {"from": "gpt", "value": "Image goes first."}]},
        {"id": "l4", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "mismatch"}]},
        {"id": "l5", "image": "gone.jpg", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "missing"}]},
        {"id": "l6", "image": "a.png", "conversations": [{"from": "robot", "value": "<image>"}]},
        {"id": "l7", "image": "https://example.com/x.jpg", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a URL"}]},
        {"id": "l0", "conversations": [{"from": "human", "value": "Same id"}, {"from": "gpt", "value": "Again."}]},
    ]
    src = tmp_path / "llava.json"
    src.write_text(json.dumps(entries))
    out = tmp_path / "out"
    assert run_cli(["--format", "llava", str(src), str(out), "--image-root", str(tmp_path / "imgs"),
                    "--source", "llava-test", "--keys", "id"]) == 0
    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["skipped"] == {"bad_schema": 1, "image_count_mismatch": 1, "missing_image": 2}
    assert any("is a URL" in m for m in report["examples"]["missing_image"])
    samples = read_dataset(out)
    assert sorted(samples) == ["l0", "l0-2", "l1", "l2", "l3"]  # a repeated id gets a suffix
    first = json.loads(samples["l0"]["json"])
    assert first["source"] == "llava-test" and first["id"] == "l0"
    assert first["messages"] == [
        {"role": "user", "content": [{"type": "image"}, text("What colour?")]},
        {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."}]
    second = json.loads(samples["l1"]["json"])["messages"]
    assert second[0] == {"role": "system", "content": "Compare."}
    assert second[1]["content"] == [text("First "), {"type": "image"}, text(" then "), {"type": "image"}, text("?")]
    assert samples["l1"]["0.png"] == images["a.png"] and samples["l1"]["1.jpg"] == images["b.jpg"]
    assert json.loads(samples["l3"]["json"])["messages"][0]["content"] == [{"type": "image"}, text("No marker")]
    assert sorted(samples["l2"]) == ["json"]
    assert_all_encode(samples, tiny_processor)


def test_split_markers() -> None:
    assert split_markers("<image>\nQ") == [{"type": "image"}, text("Q")]
    assert split_markers("A\n<image>") == [text("A"), {"type": "image"}]
    assert split_markers("plain") == [text("plain")]


def test_hf_dataset_saved_to_disk(tmp_path: Path, images: dict[str, bytes], tiny_processor) -> None:
    datasets = pytest.importorskip("datasets")
    red, blue = PIL.Image.open(tmp_path / "imgs" / "a.png"), PIL.Image.open(tmp_path / "imgs" / "b.jpg")
    msgs = lambda q, n: [  # noqa: E731
        {"role": "user", "content": [{"type": "image", "text": None}] * n + [{"type": "text", "text": q}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"answer to {q}"}]}]
    ds = datasets.Dataset.from_dict({
        "messages": [msgs("one", 1), msgs("two", 2), msgs("mismatch", 2), msgs("none", 0)],
        "images": [[red], [red, blue], [red], []],
    })
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "out"
    assert run_cli(["--format", "hf-dataset", str(tmp_path / "saved"), str(out)]) == 0
    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["samples"] == 3 and report["skipped"] == {"image_count_mismatch": 1}
    assert report["source"] == "saved"
    samples = read_dataset(out)
    assert sorted(samples["000000001"]) == ["0.png", "1.jpg", "json"]  # PIL images keep their format
    assert samples["000000001"]["1.jpg"] == images["b.jpg"]
    assert json.loads(samples["000000000"]["json"])["messages"][0]["content"] == [{"type": "image"}, text("one")]
    assert_all_encode(samples, tiny_processor)
    assert run_cli(["--format", "hf-dataset", str(tmp_path / "saved"), str(tmp_path / "t"), "--hf-split",
                    "test"]) == 0
    assert len(read_dataset(tmp_path / "t")) == 1
    assert run_cli(["--format", "hf-dataset", str(tmp_path / "saved"), str(tmp_path / "v"), "--hf-split",
                    "validation"]) == 2


def test_hf_conversations_and_parquet_files(tmp_path: Path, images: dict[str, bytes], tiny_processor) -> None:
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "id": ["x/1", "y.2", "z", "w"],
        "image": [images["b.jpg"], images["a.png"], b"\x00garbage", images["c.bmp"]],
        "caption": ["a green box", "a red box", "broken", "   "],
    }), tmp_path / "captions.parquet")
    out = tmp_path / "out"
    assert run_cli(["--format", "hf-dataset", "parquet", str(out), "--hf-data-files",
                    str(tmp_path / "captions.parquet"), "--hf-cache-dir", str(tmp_path / "cache"), "--keys",
                    "id"]) == 0
    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["skipped"] == {"corrupt_image": 1, "no_caption": 1}
    samples = read_dataset(out)
    assert sorted(samples) == ["x_1", "y_2"]  # sanitised ids: no '.' or '/'
    assert samples["x_1"]["0.jpg"] == images["b.jpg"]
    assert json.loads(samples["y_2"]["json"]) == {
        "source": "captions", "id": "y.2", "segments": [{"type": "image"}, text("a red box")]}
    assert_all_encode(samples, tiny_processor)

    pq.write_table(pa.table({
        "conversations": [[{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A box."}]],
        "image": ["imgs/a.png"],  # a path, relative to the data file's folder
    }), tmp_path / "llava.parquet")
    assert run_cli(["--format", "hf-dataset", str(tmp_path / "llava.parquet"), str(tmp_path / "out2"),
                    "--hf-cache-dir", str(tmp_path / "cache")]) == 0
    (only,) = read_dataset(tmp_path / "out2").values()
    assert only["0.png"] == images["a.png"]
    assert_all_encode({"k": only}, tiny_processor)


def test_image_folder_with_txt_captions(tmp_path: Path, tiny_processor) -> None:
    folder = tmp_path / "folder"
    a = save_image(folder / "a.jpg", "JPEG")
    (folder / "a.txt").write_text("A red picture.\n")
    b = save_image(folder / "sub" / "b.png")
    (folder / "sub" / "b.txt").write_text("A nested picture.")
    save_image(folder / "c.png")  # no caption
    (folder / "d.jpg").write_bytes(b"broken")
    (folder / "d.txt").write_text("Broken.")
    out = tmp_path / "out"
    assert run_cli(["--format", "image-folder", str(folder), str(out), "--workers", "2"]) == 0
    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["samples"] == 2 and report["skipped"] == {"corrupt_image": 1, "no_caption": 1}
    samples = read_dataset(out)
    assert [samples[k].get("0.jpg", samples[k].get("0.png")) for k in sorted(samples)] == [a, b]
    assert json.loads(samples["000000003"]["json"]) == {
        "source": "folder", "id": "sub/b", "segments": [{"type": "image"}, text("A nested picture.")]}
    assert_all_encode(samples, tiny_processor)


def test_image_folder_with_metadata_jsonl(tmp_path: Path, tiny_processor) -> None:
    folder = tmp_path / "folder"
    x = save_image(folder / "x.png")
    save_image(folder / "y.jpg", "JPEG")
    write_jsonl(folder / "metadata.jsonl", [
        {"file_name": "x.png", "text": "The x image."}, {"file_name": "y.jpg", "caption": "The y image."},
        {"file_name": "missing.png", "text": "Gone."}, "{not json", {"text": "no file name"}])
    out = tmp_path / "out"
    assert run_cli(["--format", "image-folder", str(folder), str(out)]) == 0
    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["samples"] == 2
    assert report["skipped"] == {"bad_json": 1, "bad_schema": 1, "missing_image": 1}
    samples = read_dataset(out)
    assert samples["000000000"]["0.png"] == x
    assert json.loads(samples["000000001"]["json"])["segments"][1] == text("The y image.")
    assert_all_encode(samples, tiny_processor)


def test_unusable_input_fails_with_a_clear_message(tmp_path: Path, images, capsys) -> None:
    out = tmp_path / "out"
    assert run_cli(["--format", "chat-jsonl", str(tmp_path / "absent.jsonl"), str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["--format", "csv-of-doom", str(tmp_path), str(out)])
    with pytest.raises(InputError, match="unknown format"):
        build_converter("csv-of-doom", tmp_path)
    (tmp_path / "notjson.json").write_text("hello")
    assert run_cli(["--format", "llava", str(tmp_path / "notjson.json"), str(out)]) == 2
    assert "neither a JSON list" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError):
        make_shards.parse_size("big")
    assert make_shards.parse_size("256MB") == 256 << 20 and make_shards.parse_size("1.5k") == 1536

    everything_bad = write_jsonl(tmp_path / "imgs" / "bad.jsonl", ["{", {"messages": [user("hi")]}])
    assert run_cli(["--format", "chat-jsonl", str(everything_bad), str(out)]) == 1
    assert "no sample was written" in capsys.readouterr().err

    good = write_jsonl(tmp_path / "imgs" / "good.jsonl", chat_records()[:1])
    assert run_cli(["--format", "chat-jsonl", str(good), str(tmp_path / "o2")]) == 0
    assert run_cli(["--format", "chat-jsonl", str(good), str(tmp_path / "o2")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(["--format", "chat-jsonl", str(good), str(tmp_path / "o2"), "--overwrite"]) == 0


def test_hf_dataset_without_usable_columns(tmp_path: Path, capsys) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"foo": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert run_cli(["--format", "hf-dataset", str(tmp_path / "ds"), str(tmp_path / "out")]) == 2
    assert "not supported" in capsys.readouterr().err
