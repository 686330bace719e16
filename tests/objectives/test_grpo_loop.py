"""objective=grpo through the loop: grounding prompts made by `isaac-data make-shards --format coco`, the
grpo_grounding recipe's rewards (hits at IoU 0.5, IoU, format) under LoRA with its adapters disabled as the KL term's
reference, bf16 frozen weights, periodic evaluation, an offline W&B run with the rollouts table, the export and
isaac-eval afterwards; and a step in which every group tied (drop_equal_groups) updates nothing."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from data_tools import cli
from isaac_train.eval.cli import main as isaac_eval
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from ..data_helpers import make_chat_shards
from ..eval.test_coco_end_to_end import _coco
from ..train.conftest import tiny_overrides

GRPO = ["objective=grpo", "objective.num_generations=4", "objective.max_new_tokens=12", "objective.prompts_per_batch=2"]


def test_grpo_grounding_from_coco_to_an_evaluated_export(tmp_path, monkeypatch):
    for key, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path / "wandb")),
                       ("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache")), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(key, value)
    (tmp_path / "coco").mkdir()
    shards = tmp_path / "shards"
    assert cli.main(["make-shards", "--format", "coco", str(_coco(tmp_path / "coco")), str(shards),
                     "--workers", "1"]) == 0
    run = tmp_path / "run"
    train(compose_config(tiny_overrides(
        shards, run, *GRPO, "objective.rewards=[grounding_f1,grounding,format]",
        "objective.reward_weights=[1.0,0.2,0.1]",
        "objective.beta=0.04", "peft=lora", "model.train_projector=false", "train.precision=bf16",
        "train.max_steps=3", "train.eval_every=3", f"data.eval_shards={shards}", "train.eval_batches=1",
        "train.eval_samples=4", "train.eval_max_new_tokens=12", "logging.wandb=offline", "run.export=true")))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("loss", "reward", "reward_std", "frac_reward_zero_std", "rewards/grounding_f1/mean",
                "rewards/grounding/mean",
                "rewards/format/mean", "rewards/failures", "kl", "completions/mean_length",
                "completions/clipped_ratio", "clip_ratio/region_mean", "time/generation_s", "time/scoring_s",
                "time/logps_s", "time/update_s"):
        assert key in steps[-1], key
    assert steps[0]["kl"] == 0.0  # the adapters-disabled reference is the policy at the start (LoRA's B is zero)
    for s in steps:
        total = s["rewards/grounding_f1/mean"] + 0.2 * s["rewards/grounding/mean"] + 0.1 * s["rewards/format/mean"]
        assert abs(s["reward"] - total) < 1e-6  # the weighted sum of the recipe's rewards
    assert any("eval/recall@0.5" in r for r in records)  # periodic evaluation with the grounding metrics
    rows = [json.loads(line) for line in (run / "rollouts" / "step_0000003.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["completions"]) == 4 and r["task"] == "detection" for r in rows)
    assert all(set(r["reward_parts"]) == {"grounding_f1", "grounding", "format"} for r in rows)
    for plot in ("reward.png", "step_time.png", "completions.png"):
        assert (run / "plots" / plot).is_file(), plot
    assert any((run / "wandb").rglob("*.wandb")), "an offline W&B run was written"
    drawn = list((run / "wandb").rglob("rollouts_images_*.png"))  # each completion's boxes drawn on its image
    assert len(drawn) >= 4, "the rollouts table's images went to W&B"
    assert isaac_eval([str(run / "hf"), str(shards), str(tmp_path / "eval"), "--max-new-tokens", "12"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["grounding"]["recall@0.5"]["n"] == 15


def constant_reward(prompt, completion, expected, meta) -> float:
    return 0.5


def test_a_step_whose_groups_all_tie_updates_nothing(tmp_path):
    shards = make_chat_shards(tmp_path / "prompts", 12)
    run = tmp_path / "run"
    train(compose_config(tiny_overrides(
        shards, run, *GRPO, "objective.rewards=[tests.objectives.test_grpo_loop:constant_reward]",
        "objective.drop_equal_groups=true", "train.max_steps=2", "optim.warmup_steps=0", "train.save_every=1")))
    first = load_file(run / "checkpoints" / "step_0000001" / "model.safetensors")
    last = load_file(run / "checkpoints" / "step_0000002" / "model.safetensors")
    assert all(torch.equal(first[k], last[k]) for k in first)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert [r["frac_reward_zero_std"] for r in steps] == [1.0, 1.0] and all(r["skipped_steps"] == 0 for r in steps)
