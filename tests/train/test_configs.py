"""Every shipped config and recipe composes and validates; bad settings name the key to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from isaac_train.config.schema import ConfigError
from isaac_train.train.cli import CONFIG_DIR, compose_config

from ..data_helpers import make_chat_shards, make_checkpoint

RECIPES = sorted(p.stem for p in (CONFIG_DIR.parent / "recipes").glob("*.yaml"))
NEEDS = ["model.pretrained=/ckpt/Isaac-0.1", "data.train_shards=/data/sft"]  # --cfg job prints, checks no path


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint-shaped directory and real shards: composing checks that the paths it names exist."""
    root = tmp_path_factory.mktemp("paths")
    return {"ckpt": make_checkpoint(root / "Isaac-0.1"), "shards": make_chat_shards(root / "sft", n=4, per_shard=2)}


@pytest.fixture(scope="module")
def needs(paths) -> list[str]:
    return [f"model.pretrained={paths['ckpt']}", f"data.train_shards={paths['shards']}"]


def test_the_recipes_we_document_exist():
    assert {"demo_cpu", "sft_lora", "sft_full", "sft_unfreeze_vision", "caption_pretrain",
            "interleaved_pretrain", "dpo_lora", "dpo_full", "grpo_grounding"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_validates(recipe, needs):
    cfg = compose_config([f"recipe={recipe}"] + ([] if recipe == "demo_cpu" else needs))
    assert cfg.recipe == recipe
    header = (CONFIG_DIR.parent / "recipes" / f"{recipe}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_" and header[1].startswith(f"# {recipe}")
    assert any("Hardware" in line for line in header[:8]), "each recipe says what hardware it assumes"


@pytest.mark.parametrize("group", ["model", "data", "strategy", "optim", "peft", "logging"])
def test_every_group_option_composes(group, paths):
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
        extra = {"model": {"isaac": [f"model.pretrained={paths['ckpt']}"]},
                 "peft": {"lora": ["model.train_decoder=lora"]}}
        compose_config([f"{group}={option}", *extra.get(group, {}).get(option, [])])


def test_the_stable_keys_exist(paths, needs):
    cfg = compose_config(["recipe=sft_lora", *needs, f"data.eval_shards={paths['shards']}/index.json",
                          "strategy=single", "peft=lora", "train.max_steps=70", "train.seq_len=2048", "train.seed=3",
                          "run.output_dir=/runs/x"])
    assert (cfg.model.pretrained, cfg.data.train_shards, cfg.data.eval_shards) == (
        str(paths["ckpt"]), str(paths["shards"]), f"{paths['shards']}/index.json")
    assert (cfg.strategy.name, cfg.peft.kind, cfg.train.max_steps, cfg.train.seq_len, cfg.train.seed,
            cfg.run.output_dir) == ("single", "lora", 70, 2048, 3, "/runs/x")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.max_steps=0"], "train.max_steps"),
        (["optim.schedule=linear"], "optim.schedule"),
        (["model.train_decoder=lora"], "peft"),
        (["recipe=sft_full", "model.pretrained=/c", "data.train_shards=null", "data.demo=false"], "data.train_shards"),
        (["model.train_vision=last_n"], "model.vision_last_n"),
        (["train.eval_every=5", "data.demo=false", "data.train_shards=/d"], "data.eval_shards"),
        (["data.train_shards=[/a,/b]", "data.train_weights=[1.0]"], "data.train_weights"),
        (["strategy.name=zero4"], "strategy"),
        (["objective=grpo", "objective.loss_type=sigmoid"], "objective.loss_type"),
        (["objective=grpo", "objective.beta=0.1", "objective.reference=none"], "objective.reference"),
        (["objective=grpo", "objective.rewards=[iou]"], "objective.rewards"),
        (["objective=grpo", "objective.rewards=[exact,format]", "objective.reward_weights=[1.0]"],
         "objective.reward_weights"),
        (["objective=grpo", "objective.max_new_tokens=600", "train.seq_len=512"], "objective.max_new_tokens"),
        (["objective=grpo", "objective.scale_rewards=true"], "objective.scale_rewards"),
    ],
)
def test_bad_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_config(overrides)


def test_cfg_job_prints_the_resolved_config(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "isaac_train.train", "recipe=sft_lora", *NEEDS, "--cfg", "job"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train_decoder: lora" in out.stdout and "pretrained: /ckpt/Isaac-0.1" in out.stdout
    assert not any(Path(tmp_path).iterdir()), "a dry run writes nothing"


def test_dpo_checkpoints_from_before_grpo_keep_their_identity():
    """A resume compares the checkpoint's identity with the run's: objective=dpo's holds the settings dpo reads,
    as checkpoints written before objective=grpo existed do, and grpo's its own (no dpo-only ones)."""
    from isaac_train.train.loop import identity

    dpo = identity(compose_config(["objective=dpo"]))["objective"]
    assert set(dpo) == {"name", "loss_type", "beta", "label_smoothing", "simpo_gamma", "rpo_alpha", "reference",
                        "vision_per_pair", "disable_dropout", "precompute_reference", "reference_logps"}
    grpo = identity(compose_config(["objective=grpo"]))["objective"]
    assert {"num_generations", "rewards", "epsilon"} <= set(grpo) and "rpo_alpha" not in grpo
    assert "rollout_table_rows" not in grpo  # what W&B shows may change on resume
