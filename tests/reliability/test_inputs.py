"""Wrong inputs end `isaac-train` before anything starts, with one line naming the key and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from isaac_train.config.schema import ConfigError
from isaac_train.data.shards import ShardSet
from isaac_train.train import cli

from ..data_helpers import make_chat_shards, make_checkpoint

FAST = ["model=tiny", "data.demo=false", "train.eval_every=0"]  # valid apart from what a test breaks


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_chat_shards(tmp_path_factory.mktemp("shards"), n=4, per_shard=2)


def _must_not_start() -> None:
    raise AssertionError("the checks passed and Hydra would start the run")


def refused(argv: list[str], capsys, monkeypatch) -> str:
    """Run `isaac-train ARGV` in this process; it must exit with 2 and one short line on stderr."""
    monkeypatch.setattr(sys, "argv", ["isaac-train", *argv])
    monkeypatch.setattr(cli, "_main", _must_not_start)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("isaac-train: "), err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train.foo=1"], "train.foo: unknown key"),
        (["+train.foo=1"], "train.foo: unknown key"),
        (["+foo=1"], "foo: unknown key"),
        (["++train.max_stepz=3"], "did you mean train.max_steps?"),
        (["strategy.zero.overlap_com=true"], "+strategy.zero.overlap_com"),
        (["train.max_steps=abc"], "train.max_steps: "),
        (["strategy=zero9"], "strategy: no option 'zero9'; choose one of ddp, fsdp"),
        (["recipe=nope"], "recipe: no option 'nope'"),
        (["train.max_steps=="], "train.max_steps: cannot parse"),
        (["train.save_every=-1"], "train.save_every: must be >= 0"),
        (["train.eval_every=-1"], "train.eval_every: must be >= 0"),
        (["peft.alpha=0"], "peft.alpha: must be > 0"),
        (["optim.betas=[0.9]"], "optim.betas: "),
        # float settings: finite and in range (tests/reliability/test_numerical_faults.py has lr, eps, betas)
        (["optim.lr_vision=inf"], "optim.lr_vision: inf must be in (0, 1]"),
        (["optim.lr_projector=nan"], "optim.lr_projector: nan must be in (0, 1]"),
        (["optim.weight_decay=2e4"], "optim.weight_decay: 20000.0 x the largest learning rate"),
        (["train.clip_grad_norm=inf"], "train.clip_grad_norm: must be > 0 and finite, or null"),
        (["optim.min_lr_ratio=nan"], "optim.min_lr_ratio: must be in [0, 1]"),
        (["optim.decay_fraction=inf"], "optim.decay_fraction: must be in (0, 1]"),
        (["peft.dropout=nan"], "peft.dropout: must be in [0, 1)"),
        (["data.max_error_rate=inf"], "data.max_error_rate: must be within [0, 1]"),
        (["data.train_weights=[inf]"], "data.train_weights: needs 1 positive, finite weight(s)"),
    ],
)
def test_bad_settings_get_one_line_naming_the_key(argv, expected, capsys, monkeypatch):
    assert expected in refused(argv, capsys, monkeypatch)


def test_unknown_key_lists_its_section_when_nothing_is_close(capsys, monkeypatch):
    err = refused(["+train.zzz=1"], capsys, monkeypatch)
    assert "valid keys in train:" in err and "max_steps" in err and "save_every" in err


def test_a_recipe_that_fine_tunes_needs_model_pretrained(shards, capsys, monkeypatch):
    """model=isaac used to merge `pretrained: ???` over null and quietly train a small model from scratch."""
    err = refused(["recipe=sft_lora", f"data.train_shards={shards}"], capsys, monkeypatch)
    assert "model.pretrained: must be set" in err


def _broken_shards(tmp_path: Path, shards: Path) -> dict[str, str]:
    (tmp_path / "plain").mkdir()
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(shards / "shard-000000.tar", lone / "shard-000000.tar")  # its manifest left behind
    return {
        "missing": (str(tmp_path / "nope"), "does not exist"),
        "dir without index": (str(tmp_path / "plain"), "has no index.json"),
        "brace matching nothing": (f"{shards}/shard-{{000007..000009}}.tar", "matches no file"),
        "brace partly missing": (f"{shards}/shard-{{000000..000003}}.tar", "shard-000002.tar does not exist"),
        "glob matching nothing": (f"{tmp_path}/*.tar", "matches no file"),
        "tar without manifest": (str(lone / "shard-000000.tar"), "has no manifest"),
    }


@pytest.mark.parametrize("case", ["missing", "dir without index", "brace matching nothing", "brace partly missing",
                                  "glob matching nothing", "tar without manifest"])
@pytest.mark.parametrize("key", ["data.train_shards", "data.eval_shards"])
def test_shards_that_match_nothing_name_the_setting(case, key, shards, tmp_path, capsys, monkeypatch):
    spec, problem = _broken_shards(tmp_path, shards)[case]
    argv = [*FAST, f"data.train_shards={shards}", f"{key}={spec}"]
    err = refused(argv, capsys, monkeypatch)
    assert f"isaac-train: {key}: " in err and problem in err


def test_data_processor_must_be_a_directory_with_a_tokenizer(shards, tmp_path, capsys, monkeypatch):
    base = [*FAST, f"data.train_shards={shards}"]
    assert f"data.processor: {tmp_path / 'nope'} does not exist" in refused(
        [*base, f"data.processor={tmp_path / 'nope'}"], capsys, monkeypatch)
    assert "data.processor: " in refused([*base, f"data.processor={tmp_path}"], capsys, monkeypatch)


QWEN3 = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 2}
BERT = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 2}
TEXT_KEYS = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight")


@pytest.mark.parametrize(
    ("config", "keys", "expected"),
    [
        (QWEN3, TEXT_KEYS, "model_type 'qwen3'"),
        (BERT, ("bert.embeddings.word_embeddings.weight",), "model_type 'bert'"),
        (None, TEXT_KEYS, "no vision tower weights"),  # an Isaac config.json, but only the text weights
    ],
)
def test_a_checkpoint_that_is_not_isaac_is_refused_before_building(config, keys, expected, shards, tmp_path,
                                                                   capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "ckpt", config=config, keys=keys)
    err = refused([*FAST, f"data.train_shards={shards}", f"model.pretrained={ckpt}"], capsys, monkeypatch)
    assert f"model.pretrained: {ckpt}" in err and expected in err


def test_model_pretrained_must_be_a_checkpoint_directory(shards, tmp_path, capsys, monkeypatch):
    base = [*FAST, f"data.train_shards={shards}"]
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"x")
    assert f"model.pretrained: {file} is not a directory" in refused(
        [*base, f"model.pretrained={file}"], capsys, monkeypatch)
    assert f"model.pretrained: {tmp_path / 'nope'} does not exist" in refused(
        [*base, f"model.pretrained={tmp_path / 'nope'}"], capsys, monkeypatch)
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in refused([*base, f"model.pretrained={tmp_path / 'empty'}"], capsys, monkeypatch)


def test_a_sharded_isaac_checkpoint_is_read_from_its_index(shards, tmp_path):
    """Perceptron publishes sharded weights: the index's weight_map decides, and its files must exist."""
    ckpt = make_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    weight_map = {"model.vision_embedding.0.embeddings.patch_embedding.weight": "model-00001-of-00001.safetensors",
                  "model.text_model.embed_tokens.weight": "model-00001-of-00001.safetensors"}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = cli.compose_config([*FAST, f"data.train_shards={shards}", f"model.pretrained={ckpt}"])
    assert cfg.model.pretrained == str(ckpt)
    (ckpt / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(ConfigError, match="model-00001-of-00001.safetensors .*does not exist"):
        cli.compose_config([*FAST, f"data.train_shards={shards}", f"model.pretrained={ckpt}"])


def test_demo_data_needs_no_shards():
    assert cli.compose_config(["data.demo=true", "data.train_shards=null"]).data.train_shards is None


def test_the_readme_brace_pattern_resolves(tmp_path, monkeypatch):
    """`data.train_shards='/data/sft-{000000..000127}.tar'`: the shell drops the quotes, Hydra would read a dict."""
    root = make_chat_shards(tmp_path / "data", n=8, per_shard=2, prefix="sft")
    pattern = f"{root}/sft-{{000000..000002}}.tar"  # 3 of the 4 shards
    argv = [*FAST, f"data.train_shards={pattern}", f"data.eval_shards={root}/sft-000003.tar"]
    cli.check_command_line(cli.quote_shard_patterns(argv))  # what main() does before Hydra runs: no exit
    cfg = cli.compose_config(argv)
    assert cfg.data.train_shards == pattern
    tars = ShardSet(cfg.data.train_shards).tars
    assert [t.name for t in tars] == [f"sft-00000{i}.tar" for i in range(3)]
    assert len(ShardSet(cfg.data.train_shards)) == 6


def test_hydra_full_error_shows_the_trace(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["isaac-train", "train.save_every=-1"])
    monkeypatch.setattr(cli, "_main", _must_not_start)
    with pytest.raises(ConfigError, match="train.save_every"):
        cli.main()


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "isaac_train.train", *overrides], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)


def test_end_to_end_unknown_key_exits_2_without_a_traceback(tmp_path):
    out = _run(tmp_path, "+train.foo=1")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "isaac-train: train.foo: unknown key" in out.stderr
    assert not any(tmp_path.iterdir()), "nothing was started or written"


def test_end_to_end_readme_command_names_the_missing_shards(tmp_path):
    """The README's sft_lora command as the shell passes it, on a machine without /data: one line, exit 2."""
    ckpt = make_checkpoint(tmp_path / "Isaac-0.1")
    out = _run(tmp_path, "recipe=sft_lora", f"model.pretrained={ckpt}",
               f"data.train_shards={tmp_path}/data/sft-{{000000..000127}}.tar", f"run.output_dir={tmp_path}/runs")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"isaac-train: data.train_shards: {tmp_path}/data/sft-{{000000..000127}}.tar matches no file" in out.stderr
