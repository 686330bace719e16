"""`isaac-data validate`: every injected fault is found with its key and reason, and the counts are exact."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from data_tools import validate
from isaac_train.data.shards import ShardWriter, manifest_path

MAX_LENGTH = 120  # every good sample below is far shorter; "too_long" is far longer


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def chat(question: str, answer: str | None, images: int = 1) -> dict:
    user = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"source": "test", "messages": messages}


def call(module, argv: list[str]) -> int:
    """Run one isaac-data command module as the CLI would."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def write_good(writer: ShardWriter, key: str, i: int) -> None:
    fmt, suffix = ("PNG", "0.png") if i % 2 else ("JPEG", "0.jpg")
    writer.write(key, chat(f"What colour is shape {i}?", f"It is red, number {i}."), [(suffix, image_bytes(fmt))])


# key -> (reason, how it is written).
FAULTS = {
    "corruptjpeg": "corrupt_image",
    "notimage": "corrupt_image",
    "badjson": "bad_json",
    "noschema": "bad_schema",
    "mismatch": "image_count_mismatch",
    "toolong": "too_long",
    "nolabels": "no_labels",
    "badrole": "bad_schema",
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> dict:
    """Three shards of 10: shard 0 holds one sample per fault and 2 good ones; shard 1 is cut in the middle of
    its 5th sample on disk; shard 2 is good but one byte of its end-of-archive padding is changed (sha only)."""
    root = tmp_path_factory.mktemp("faulty")
    w = ShardWriter(root, max_count=10)
    jpeg = image_bytes("JPEG", (64, 48))
    w.write("corruptjpeg", chat("What is it?", "A shape."), [("0.jpg", jpeg[: len(jpeg) // 2])])
    w.write("notimage", chat("What is it?", "A shape."), [("0.png", b"this is not an image at all")])
    w.write("badjson", chat("x", "y"), [("json", b'{"messages": [ this is not json'), ("0.png", image_bytes("PNG"))])
    w.write("noschema", {"source": "test", "text": "neither messages nor segments"})
    w.write("mismatch", chat("Compare them.", "They match.", images=2), [("0.png", image_bytes("PNG"))])
    w.write("toolong", chat("Describe it at length.", "red circle blue square " * 60), [("0.png", image_bytes("PNG"))])
    w.write("nolabels", chat("Nobody answers this.", None), [("0.png", image_bytes("PNG"))])
    w.write("badrole", {"messages": [{"role": 5, "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    write_good(w, "good0", 0)
    write_good(w, "good1", 1)
    for i in range(20):
        write_good(w, f"s{i:03d}", i)
    w.close()
    tars = sorted(root.glob("*.tar"))
    assert len(tars) == 3
    # Cut shard 1 in the middle of its 5th sample: it and every later sample are lost.
    m1 = json.loads(manifest_path(tars[1]).read_text())
    cut = m1["samples"][4]["offset"] + m1["samples"][4]["length"] // 2
    data = tars[1].read_bytes()
    tars[1].write_bytes(data[:cut])
    truncated = [s["key"] for s in m1["samples"] if s["offset"] + s["length"] > cut]
    # Change a byte of shard 2's end-of-archive blocks: same size, other sha256, samples untouched.
    data2 = bytearray(tars[2].read_bytes())
    data2[-10] ^= 0xFF
    tars[2].write_bytes(bytes(data2))
    return {"root": root, "tars": tars, "truncated": truncated}


def expected_sample_problems(faulty: dict) -> list[tuple[str, str, str]]:
    shard0, shard1 = (t.name for t in faulty["tars"][:2])
    return [(shard0, k, r) for k, r in FAULTS.items()] + [(shard1, k, "truncated_shard") for k in faulty["truncated"]]


def read_report(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def triples(rows: list[dict]) -> list[tuple[str, str | None, str]]:
    return [(Path(r["shard"]).name, r["key"], r["reason"]) for r in rows]


def test_each_fault_found_with_key_and_reason(faulty, tmp_path, capsys):
    report = tmp_path / "problems.jsonl"
    code = call(validate, [faulty["root"], "--workers", "1", "--max-length", MAX_LENGTH, "--length-policy", "drop",
                           "--report", report])
    assert code == 1
    rows = read_report(report)
    assert triples(rows) == expected_sample_problems(faulty)  # exact: no other problem, data order
    assert len(faulty["truncated"]) == 6  # samples 4..9 of shard 1
    assert all(r["message"] for r in rows)
    out = capsys.readouterr()
    n_ok = 30 - len(FAULTS) - len(faulty["truncated"])
    assert f"samples ok            {n_ok:>8}" in out.out
    assert f"samples with problems {len(FAULTS) + len(faulty['truncated']):>8}" in out.out
    assert "validated 30 samples in 3 shards" in out.out
    assert "truncated_shard              6" in out.out and "corrupt_image                2" in out.out
    assert "tiny test tokenizer" in out.err


def test_check_sha_with_a_pool_same_order_plus_shard_problems(faulty, tmp_path, capsys):
    report = tmp_path / "sha.jsonl"
    code = call(validate, [faulty["root"] / "index.json", "--workers", "2", "--max-length", MAX_LENGTH,
                           "--length-policy", "drop", "--check-sha", "--report", report])
    assert code == 1
    rows = read_report(report)
    shard_rows = [r for r in rows if r["key"] is None]
    assert [(Path(r["shard"]).name, r["reason"]) for r in shard_rows] == [
        (faulty["tars"][1].name, "shard_size_mismatch"), (faulty["tars"][2].name, "shard_sha256_mismatch")]
    assert all(r["position"] is None for r in shard_rows)
    # The sample problems are the same, in the same order, as with one worker.
    assert triples([r for r in rows if r["key"] is not None]) == expected_sample_problems(faulty)
    assert "shard file problems          2" in capsys.readouterr().out


def test_truncate_policy_keeps_the_long_sample(faulty, tmp_path):
    report = tmp_path / "truncate.jsonl"
    call(validate, [faulty["root"], "--workers", "1", "--max-length", MAX_LENGTH, "--report", report])
    keys = {r["key"] for r in read_report(report)}
    assert "toolong" not in keys and "nolabels" in keys


def test_patterns_and_clean_data_exit_zero(faulty, tmp_path, capsys):
    root = faulty["root"]
    assert call(validate, [root / "shard-00000[2].tar", "--workers", "1"]) == 0  # glob: the sha-only shard is clean
    assert "samples with problems        0" in capsys.readouterr().out
    report = tmp_path / "brace.jsonl"
    assert call(validate, [root / "shard-{000001..000002}.tar", "--workers", "1", "--report", report]) == 1
    assert {r["reason"] for r in read_report(report)} == {"truncated_shard"}


def test_processor_directory(faulty, tmp_path, capsys, tiny_processor):
    tiny_processor.save_pretrained(tmp_path / "proc")
    code = call(validate, [faulty["root"] / "shard-000002.tar", "--workers", "1", "--processor", tmp_path / "proc"])
    assert code == 0
    assert "tiny test tokenizer" not in capsys.readouterr().err


def test_unusable_inputs_name_the_fix(faulty, tmp_path, capsys):
    (tmp_path / "lonely.tar").write_bytes(b"")
    assert call(validate, [tmp_path / "lonely.tar", "--workers", "1"]) == 2
    assert "isaac-data index" in capsys.readouterr().err
    assert call(validate, [tmp_path / "nothing-*.tar"]) == 2
    assert "glob" in capsys.readouterr().err
    assert call(validate, [faulty["tars"][2], "--processor", tmp_path / "absent"]) == 2
    assert "processor_config.json" in capsys.readouterr().err
