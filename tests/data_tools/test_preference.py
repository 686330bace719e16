"""Preference (DPO) pairs through `isaac-data make-shards`: every input form (TRL explicit / implicit / strings,
LLaMA-Factory sharegpt / messages, RLAIF-V as JSONL, parquet and save_to_disk) converts, with its format inferred,
into the stored form ({"messages": prompt, "chosen": [...], "rejected": [...]} + the prompt's images), every bad
pair is counted under its reason, and validate / stats / inspect read the pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import PIL.Image
import pytest

from data_tools import inspect_cmd, make_shards, stats, validate
from data_tools.formats import build_converter
from data_tools.infer_format import infer_format

from .test_make_shards import read_dataset, run_cli, save_image, write_jsonl


def user(content) -> dict:
    return {"role": "user", "content": content}


def said(text) -> dict:
    return {"role": "assistant", "content": text}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


IMAGE = {"type": "image"}


@pytest.fixture
def imgs(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "data"
    return {"a.png": save_image(root / "a.png"), "b.jpg": save_image(root / "b.jpg", "JPEG", colour=(30, 180, 40)),
            "c.png": save_image(root / "c.png", size=(12, 20), colour=(10, 10, 200))}


def convert(src: Path | str, out: Path, **options) -> tuple[str, dict, list[tuple[dict, dict[str, bytes]]]]:
    """make-shards in this process, the format inferred -> (format, report, [(json without source, members)])."""
    fmt, _ = infer_format(src, options.get("data_files"))
    report = make_shards.make_shards(build_converter(fmt, src, None, **options), out, workers=1, progress=False)
    samples = read_dataset(out) if report["samples"] else {}
    rows = []
    for key in sorted(samples):
        obj = json.loads(samples[key]["json"])
        obj.pop("source")
        rows.append((obj, samples[key]))
    return fmt, report, rows


def images_of(members: dict[str, bytes]) -> list[bytes]:
    return [members[k] for k in sorted((k for k in members if k != "json"), key=lambda k: int(k.split(".")[0]))]


def test_trl_conversational_explicit_prompt(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    question = user([IMAGE, text("What colour?")])
    records = [
        {"id": "p0", "prompt": [{"role": "system", "content": "Be brief."}, question],
         "chosen": [said("Red.")], "rejected": [said("Blue.")], "images": ["a.png"]},
        {"prompt": [user([text("Compare"), IMAGE, IMAGE])], "chosen": [said([text("Two.")])],
         "rejected": [said([text("One.")])], "images": [{"bytes": None, "path": "b.jpg"}, "c.png"]},
        {"prompt": [question], "chosen": [said("Red.")], "images": ["a.png"]},  # no rejected
        {"prompt": [question], "chosen": [said("Red.")], "rejected": [], "images": ["a.png"]},
        {"prompt": [question], "chosen": [said("Red.")], "rejected": [said(" Red. ")], "images": ["a.png"]},
        {"prompt": [user([IMAGE, IMAGE, text("?")])], "chosen": [said("a")], "rejected": [said("b")],
         "images": ["a.png"]},
        {"prompt": [question], "chosen": [said("a")], "rejected": [said("b")], "images": ["nope.png"]},
        {"prompt": [question, said("Hm.")], "chosen": [said("a")], "rejected": [said("b")], "images": ["a.png"]},
        {"prompt": [user("Draw it")], "chosen": [said([IMAGE])], "rejected": [said("No.")], "images": ["a.png"]},
    ]
    fmt, report, rows = convert(write_jsonl(tmp_path / "data" / "trl.jsonl", records), tmp_path / "out")
    assert fmt == "trl-preference"
    assert report["records"] == 9 and report["samples"] == 2
    assert report["skipped"] == {"bad_schema": 1, "identical_pair": 1, "image_count_mismatch": 2,
                                 "missing_image": 1, "missing_side": 2}
    (first, m0), (second, m1) = rows
    assert first == {"id": "p0", "messages": [{"role": "system", "content": "Be brief."}, question],
                     "chosen": [said("Red.")], "rejected": [said("Blue.")]}
    assert sorted(m0) == ["0.png", "json"] and m0["0.png"] == imgs["a.png"]
    assert second == {"messages": [user([text("Compare"), IMAGE, IMAGE])], "chosen": [said([text("Two.")])],
                      "rejected": [said([text("One.")])]}
    assert images_of(m1) == [imgs["b.jpg"], imgs["c.png"]]


def test_trl_conversational_as_a_saved_dataset(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    """TRL's vision preference datasets (HuggingFaceH4/rlaif-v_formatted's layout): content items as arrow structs,
    images a list of PIL images."""
    datasets = pytest.importorskip("datasets")
    red = PIL.Image.open(tmp_path / "data" / "a.png")
    item = lambda kind, t=None: {"type": kind, "text": t}  # noqa: E731  (arrow structs: every key in every item)
    ds = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": [item("image"), item("text", "What colour?")]}]] * 2,
        "chosen": [[{"role": "assistant", "content": [item("text", "Red.")]}]] * 2,
        "rejected": [[{"role": "assistant", "content": [item("text", "Blue.")]}],
                     [{"role": "assistant", "content": [item("text", "Red.")]}]],
        "images": [[red], [red]],
    })
    ds.save_to_disk(str(tmp_path / "saved"))
    fmt, report, rows = convert(tmp_path / "saved", tmp_path / "out")
    assert fmt == "trl-preference" and report["skipped"] == {"identical_pair": 1}
    ((obj, members),) = rows
    assert obj == {"messages": [user([IMAGE, text("What colour?")])], "chosen": [said([text("Red.")])],
                   "rejected": [said([text("Blue.")])]}
    assert images_of(members) == [imgs["a.png"]]


def test_trl_implicit_prompt(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    question = user([IMAGE, text("What colour?")])
    records = [
        {"chosen": [question, said("Red.")], "rejected": [question, said("Blue.")], "images": ["a.png"]},
        {"chosen": [user("Hi"), said("Hello"), user("Colour?"), said("Red")],
         "rejected": [user("Hi"), said("Hello"), user("Colour?"), said("Blue")]},
        # the shared prefix ends with an assistant turn: the prompt stops at the last user turn
        {"chosen": [user("Q"), said("Well,"), said("red")], "rejected": [user("Q"), said("Well,"), said("blue")]},
        {"chosen": [user("Q1"), said("a")], "rejected": [user("Q2"), said("b")]},  # differ in the user turn
        {"chosen": [user("Q"), said("a")], "rejected": [user("Q"), said("a")]},
        {"chosen": [user("Q"), said("a")], "rejected": [user("Q")]},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},  # TRL's standard implicit: no prompt
    ]
    fmt, report, rows = convert(write_jsonl(tmp_path / "data" / "implicit.jsonl", records), tmp_path / "out")
    assert fmt == "trl-preference"
    assert report["samples"] == 3
    assert report["skipped"] == {"bad_schema": 2, "identical_pair": 1, "missing_side": 1}
    assert [obj for obj, _ in rows] == [
        {"messages": [question], "chosen": [said("Red.")], "rejected": [said("Blue.")]},
        {"messages": [user("Hi"), said("Hello"), user("Colour?")], "chosen": [said("Red")],
         "rejected": [said("Blue")]},
        {"messages": [user("Q")], "chosen": [said("Well,"), said("red")], "rejected": [said("Well,"), said("blue")]},
    ]
    assert images_of(rows[0][1]) == [imgs["a.png"]] and images_of(rows[1][1]) == []


def test_trl_standard_strings(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    records = [
        {"prompt": "<image>\nWhat colour?", "chosen": "Red.", "rejected": "Blue.", "images": ["a.png"]},
        {"prompt": "Plain?", "chosen": " yes", "rejected": " no"},
        {"prompt": "Describe.", "chosen": "Green.", "rejected": "Red.", "images": ["b.jpg"]},  # no marker
        {"prompt": "Q", "chosen": "a", "rejected": ""},
        {"prompt": "<image><image> both", "chosen": "a", "rejected": "b", "images": ["a.png"]},
    ]
    fmt, report, rows = convert(write_jsonl(tmp_path / "data" / "std.jsonl", records), tmp_path / "out")
    assert fmt == "trl-preference"
    assert report["skipped"] == {"image_count_mismatch": 1, "missing_side": 1}
    assert [obj for obj, _ in rows] == [
        {"messages": [user([IMAGE, text("What colour?")])], "chosen": [said("Red.")], "rejected": [said("Blue.")]},
        {"messages": [user("Plain?")], "chosen": [said(" yes")], "rejected": [said(" no")]},
        {"messages": [user([IMAGE, text("Describe.")])], "chosen": [said("Green.")], "rejected": [said("Red.")]},
    ]
    assert [images_of(m) for _, m in rows] == [[imgs["a.png"]], [], [imgs["b.jpg"]]]


def test_llamafactory_sharegpt_json_list(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    gpt = lambda v: {"from": "gpt", "value": v}  # noqa: E731
    entries = [
        {"conversations": [{"from": "human", "value": "<image>What colour?"}], "chosen": gpt("Red."),
         "rejected": gpt("Blue."), "images": ["a.png"], "system": "Be brief."},
        {"conversations": [{"from": "human", "value": "Hi"}, gpt("Hello"), {"from": "human", "value": "Again?"}],
         "chosen": gpt("Hello again."), "rejected": gpt("Go away.")},
        {"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "human", "value": "a"},
         "rejected": gpt("b")},
        {"conversations": [{"from": "human", "value": "Q"}], "rejected": gpt("b")},
        {"conversations": [{"from": "human", "value": "<image>Q"}], "chosen": gpt("a"), "rejected": gpt("b"),
         "images": ["a.png", "b.jpg"]},
    ]
    src = tmp_path / "data" / "dpo.json"
    src.write_text(json.dumps(entries, indent=1))
    fmt, report, rows = convert(src, tmp_path / "out")
    assert fmt == "llamafactory-preference"  # a JSON list with `conversations`, not llava: it has chosen/rejected
    assert report["skipped"] == {"bad_schema": 1, "image_count_mismatch": 1, "missing_side": 1}
    assert [obj for obj, _ in rows] == [
        {"messages": [{"role": "system", "content": "Be brief."}, user([IMAGE, text("What colour?")])],
         "chosen": [said("Red.")], "rejected": [said("Blue.")]},
        {"messages": [user("Hi"), said("Hello"), user("Again?")], "chosen": [said("Hello again.")],
         "rejected": [said("Go away.")]},
    ]
    assert images_of(rows[0][1]) == [imgs["a.png"]]


def test_llamafactory_messages(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    records = [
        {"messages": [user("<image>Colour?")], "chosen": said("Green."), "rejected": said("Red."),
         "images": ["b.jpg"]},
        {"instruction": "Translate to French", "input": "cat", "chosen": "chat", "rejected": "chien"},  # alpaca
        {"messages": [user("Q")], "chosen": said(""), "rejected": said("b")},
    ]
    fmt, report, rows = convert(write_jsonl(tmp_path / "data" / "lf.jsonl", records), tmp_path / "out")
    assert fmt == "llamafactory-preference"  # `messages` + chosen/rejected: not chat-jsonl
    assert report["skipped"] == {"missing_side": 1}
    assert [obj for obj, _ in rows] == [
        {"messages": [user([IMAGE, text("Colour?")])], "chosen": [said("Green.")], "rejected": [said("Red.")]},
        {"messages": [user("Translate to French\ncat")], "chosen": [said("chat")], "rejected": [said("chien")]},
    ]
    assert images_of(rows[0][1]) == [imgs["b.jpg"]]


def test_rlaif_v_jsonl(tmp_path: Path, imgs: dict[str, bytes]) -> None:
    records = [
        {"idx": "r0", "image": "a.png", "question": "What colour?", "chosen": "Red.", "rejected": "Blue."},
        {"idx": "r1", "image_path": "b.jpg", "question": "And this?", "chosen": "Green.", "rejected": "Red."},
        {"idx": "r2", "image": "a.png", "question": "Q", "chosen": "Same.", "rejected": "Same."},
        {"idx": "r3", "image": "gone.png", "question": "Q", "chosen": "a", "rejected": "b"},
        {"idx": "r4", "image": "a.png", "question": "Q", "chosen": "a"},
    ]
    fmt, report, rows = convert(write_jsonl(tmp_path / "data" / "rlaif.jsonl", records), tmp_path / "out")
    assert fmt == "rlaif-v"
    assert report["skipped"] == {"identical_pair": 1, "missing_image": 1, "missing_side": 1}
    assert [obj for obj, _ in rows] == [
        {"id": "r0", "messages": [user([IMAGE, text("What colour?")])], "chosen": [said("Red.")],
         "rejected": [said("Blue.")]},
        {"id": "r1", "messages": [user([IMAGE, text("And this?")])], "chosen": [said("Green.")],
         "rejected": [said("Red.")]},
    ]
    assert [images_of(m) for _, m in rows] == [[imgs["a.png"]], [imgs["b.jpg"]]]


def test_rlaif_v_parquet_and_saved_dataset(tmp_path: Path, imgs: dict[str, bytes], capsys) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "ds_name": ["RLAIF-V"] * 3, "idx": ["0", "1", "2"], "question": ["What colour?", "And this?", "Q"],
        "chosen": ["Red.", "Green.", "a"], "rejected": ["Blue.", "Red.", None],
    }
    pq.write_table(pa.table({**columns, "image": [{"bytes": imgs["a.png"], "path": "a.png"},
                                                  {"bytes": imgs["b.jpg"], "path": "b.jpg"},
                                                  {"bytes": imgs["a.png"], "path": "a.png"}]}),
                   tmp_path / "rlaif.parquet")
    out = tmp_path / "out"
    assert run_cli([str(tmp_path / "rlaif.parquet"), str(out), "--workers", "1"]) == 0  # the command line, once
    assert "inferred --format rlaif-v" in capsys.readouterr().out
    report = json.loads((out / "make_shards_report.json").read_text())
    assert report["samples"] == 2 and report["skipped"] == {"missing_side": 1}
    samples = read_dataset(out)
    first = json.loads(samples["000000000"]["json"])
    assert first == {"source": "rlaif", "id": "0", "messages": [user([IMAGE, text("What colour?")])],
                     "chosen": [said("Red.")], "rejected": [said("Blue.")]}
    assert images_of(samples["000000001"]) == [imgs["b.jpg"]]

    pictures = [PIL.Image.open(tmp_path / "data" / name) for name in ("a.png", "b.jpg", "a.png")]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({**columns, "image": pictures})}).save_to_disk(
        str(tmp_path / "saved"))
    fmt, report, rows = convert(tmp_path / "saved", tmp_path / "out2")
    assert fmt == "rlaif-v" and report["skipped"] == {"missing_side": 1}
    stored = [json.loads(samples[k]["json"]) for k in sorted(samples)]
    assert [obj for obj, _ in rows] == [{k: v for k, v in obj.items() if k != "source"} for obj in stored]
    assert [images_of(m) for _, m in rows] == [[imgs["a.png"]], [imgs["b.jpg"]]]  # PIL images keep their format


# ---- validate / stats / inspect on pairs ------------------------------------------------------------------


def call(module, argv: list) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def test_tools_read_pairs(tmp_path: Path, imgs: dict[str, bytes], tiny_processor, capsys) -> None:
    from isaac_train.data.decode import encode_pair, parse_sample  # a pair's kind "preference" and its encoding

    records = [
        {"prompt": "<image>\nWhat colour is the square?", "chosen": "It is red.", "rejected": "It is blue, surely.",
         "images": ["a.png"]},
        {"prompt": [user("Hi"), said("Hello"), user("Count to three.")], "chosen": [said("1 2 3")],
         "rejected": [said("1 2")]},
    ]
    out = tmp_path / "out"
    _, report, rows = convert(write_jsonl(tmp_path / "data" / "pairs.jsonl", records), out)
    assert report["samples"] == 2
    expected = []
    for obj, members in rows:
        kind, prompt, images, raw = parse_sample(members)
        assert kind == "preference" and prompt == obj["messages"] and images == images_of(members)
        assert raw["chosen"] == obj["chosen"] and raw["rejected"] == obj["rejected"]
        expected.append(encode_pair(members, tiny_processor, 1 << 20))
    capsys.readouterr()

    assert call(validate, [out, "--workers", 1]) == 0
    assert "samples ok                   2" in capsys.readouterr().out

    numbers = tmp_path / "stats.json"
    assert call(stats, [out, "--workers", 1, "--seq-len", 1024, "--json", numbers]) == 0
    printed = capsys.readouterr().out
    assert "preference pairs: 2 of 2" in printed
    got = json.loads(numbers.read_text())
    assert got["tokens"]["total"] == sum(len(c) + len(r) for c, r in expected)  # both documents of each pair
    assert got["pairs"]["samples"] == 2
    assert got["pairs"]["chosen_tokens"]["total"] == sum(len(c) for c, _ in expected)
    assert got["pairs"]["rejected_label_tokens"]["total"] == sum(r.num_label_tokens for _, r in expected)
    assert got["images"]["total"] == 1  # the prompt's image, once per pair

    assert call(inspect_cmd, [out, "-n", 2, "--color", "never", "--render", tmp_path / "pages"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("prompt + chosen") == 2 and printed.count("prompt + rejected") == 2
    assert "[[It is red." in printed and "[[It is blue, surely." in printed and "[[1 2<" in printed
    page = (tmp_path / "pages" / "000000000.html").read_text()
    assert "prompt + rejected" in page and "<mark>It is blue, surely." in page
