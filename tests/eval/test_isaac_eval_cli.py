"""`isaac-eval` end to end on the tiny model: a model directory, a training run's checkpoint and chat JSONL as
inputs, predictions.jsonl and summary.json as outputs, the same results on 2 processes, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from isaac_train.eval.cli import main
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

from ..data_helpers import encode_image, make_chat_shards
from ..distributed.helpers import _env, _free_port
from .dist_eval_worker import tiny_eval_model

ARGS = ["--max-new-tokens", "6", "--batch-size", "3"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    tiny_eval_model().save_pretrained(out)
    IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config()).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_chat_shards(tmp_path_factory.mktemp("shards"), n=7, per_shard=4, seed=5)


def _read(out):
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def test_model_dir_and_shards(model_dir, shards, tmp_path, capsys):
    assert main([str(model_dir), str(shards), str(tmp_path / "out"), *ARGS]) == 0
    rows, summary = _read(tmp_path / "out")
    assert len(rows) == 7 and len({r["key"] for r in rows}) == 7
    assert set(rows[0]) == {"key", "prompt", "expected", "generated", "metric", "scores", "task", "images"}
    assert summary["samples"] == 7 and summary["exact_match"]["n"] == 7 and summary["processes"] == 1
    assert len(summary["exact_match"]["ci95"]) == 2 and summary["samples_per_s"] > 0
    printed = capsys.readouterr().out
    assert "exact_match:" in printed and "95% CI" in printed and "predictions.jsonl" in printed


def test_two_processes_write_what_one_does(model_dir, shards, tmp_path):
    assert main([str(model_dir), str(shards), str(tmp_path / "one"), *ARGS]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "isaac_train.eval.cli", str(model_dir), str(shards),
           str(tmp_path / "two"), *ARGS]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert out.returncode == 0, out.stderr[-4000:]
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert two[0] == one[0] and two[1]["processes"] == 2
    assert {k: v for k, v in two[1].items() if k not in ("processes", "seconds", "samples_per_s")} == \
           {k: v for k, v in one[1].items() if k not in ("processes", "seconds", "samples_per_s")}


def test_chat_jsonl_with_images(model_dir, tmp_path):
    (tmp_path / "a.png").write_bytes(encode_image(32, 48, 0))
    records = [{"id": "q1", "messages": [{"role": "user", "content": "<image>What colour is it?"},
                                         {"role": "assistant", "content": "red"}], "images": ["a.png"]},
               {"id": "q2", "messages": [{"role": "user", "content": "Which? A) red B) blue"},
                                         {"role": "assistant", "content": "B"}], "meta": {"options": ["red", "blue"]}},
               {"id": "q3", "messages": [{"role": "user", "content": "no answer here"}]}]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main([str(model_dir), str(data), str(tmp_path / "out"), *ARGS]) == 0
    rows, summary = _read(tmp_path / "out")
    assert [(r["key"], r["metric"]) for r in rows] == [("q1", "exact"), ("q2", "choice")]
    assert rows[0]["images"] == ["a.png"] and summary["skipped"] == {"no_assistant_turn": 1}  # make-shards' own reason


def test_a_training_run_is_a_model(train_shards, tmp_path):
    """A run directory (its latest checkpoint, as isaac-export reads it) evaluates without an export."""
    from isaac_train.train import loop
    from isaac_train.train.cli import compose_config

    from ..train.conftest import tiny_overrides

    run = tmp_path / "run"
    loop.train(compose_config(tiny_overrides(train_shards, run, "train.max_steps=3", "optim.warmup_steps=1",
                                             "peft=lora", "model.train_decoder=lora")))
    assert main([str(run), str(train_shards), str(tmp_path / "out"), "--limit", "4", *ARGS]) == 0
    rows, summary = _read(tmp_path / "out")
    assert len(rows) == 4 and summary["model"] == str(run)


def test_errors_name_the_cause(model_dir, shards, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(shards), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main([str(model_dir), str(empty), str(tmp_path / "o")]) == 2
    assert "no usable eval sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(model_dir), str(shards), str(tmp_path / "o"), "--batch-size", "0"])


def test_a_perceptron_checkpoint_evaluates(perceptron_dir, shards, tmp_path):
    """Perceptron's hub layout (remote-code auto_map, nested processor config): our classes, no remote code."""
    assert main([str(perceptron_dir), str(shards), str(tmp_path / "out"), "--limit", "3", *ARGS]) == 0
    rows, summary = _read(tmp_path / "out")
    assert len(rows) == 3 and summary["exact_match"]["n"] == 3
