"""GRPO's rollout and update on a tiny model: the update trains on exactly what generation sampled (the packed
layout's per-token log-probabilities equal generation's own, images included), and with one optimisation pass and
beta=0 its gradient is REINFORCE with the group-mean baseline, computed here by hand from each completion alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isaac_train.data.packing import build_batch, item_from_sample
from isaac_train.data.prompts import encode_prompt
from isaac_train.dist_env import DistEnv
from isaac_train.distributed.strategy import LocalStrategy
from isaac_train.factory import frozen_factory, model_config, model_factory
from isaac_train.objectives import RunData, make_objective
from isaac_train.objectives.rollout import completion_batch, completion_sample, sample_completions
from isaac_train.objectives.rollout_state import batch_from_state, batch_state
from isaac_train.train.cli import compose_config

from ..data_helpers import chat_sample, make_chat_shards
from ..train.conftest import tiny_overrides

G = 3


def prompts(processor, n: int = 3, seed: int = 3):
    """`n` prompts with 0-2 images each (tests/data_helpers.py chat samples)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sample, pictures = chat_sample(i, rng)
        members = {"json": json.dumps(sample).encode(), **dict(pictures)}
        out.append(encode_prompt(members, processor, f"p{i}", (0, 0, i), max_tokens=10_000))
    return out


def test_packed_logps_equal_the_generations_own(tiny_model, tiny_processor):
    """Sampled completions (temperature 1) re-scored by the packed training forward: every completion token's
    log-probability equals log_softmax of the logits generation sampled it from (KV cache, left padding)."""
    items = prompts(tiny_processor)
    assert any(p.sample.images for p in items) and any(not p.sample.images for p in items)
    torch.manual_seed(11)
    completions = sample_completions(tiny_model, tiny_processor, items, G, max_new_tokens=12, temperature=1.0)
    torch.manual_seed(11)  # the same draw again, with generation's logits kept
    batch = tiny_processor.batch_events([p.events for p in items for _ in range(G)])
    tok = tiny_processor.tokenizer
    out = tiny_model.generate(**batch, max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, output_logits=True,
                              return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (rows, steps, vocab), before any processor
    prompt_len = batch["input_ids"].shape[1]
    assert len(set(map(tuple, completions.ids))) > 1  # sampled, not all alike
    packed = completion_batch(items, completions, [True] * len(completions.ids), 512, tok.pad_token_id,
                              tiny_processor.image_token_id)
    with torch.no_grad():
        logps = tiny_model(**packed.model_inputs(), return_logits=False).token_logps
    groups = packed.layout.label_groups
    for k, ids in enumerate(completions.ids):
        assert out.sequences[k, prompt_len:prompt_len + len(ids)].tolist() == ids
        expected = steps[k, torch.arange(len(ids)), torch.tensor(ids)]
        torch.testing.assert_close(logps[groups == k], expected, atol=2e-5, rtol=0)
    assert packed.layout.group_tokens == completions.lengths


def test_completion_sample_labels_only_the_completion(tiny_processor):
    item = prompts(tiny_processor, 1)[0]
    sample = completion_sample(item, [5, 6, 7], tiny_processor.image_token_id)
    assert sample.input_ids[-3:].tolist() == [5, 6, 7] and sample.num_label_tokens == 3
    assert len(sample) == item.length + 3


def grpo_setup(tmp_path, *extra):
    shards = make_chat_shards(tmp_path / "prompts", 8)
    cfg = compose_config(tiny_overrides(shards, tmp_path / "run", "objective=grpo", f"objective.num_generations={G}",
                                        "objective.max_new_tokens=10", *extra))
    config = model_config(cfg)
    strategy = LocalStrategy(DistEnv(), "fp32", "single")
    strategy.setup(model_factory(cfg, config), lambda m: torch.optim.SGD(
        [p for p in m.parameters() if p.requires_grad], lr=0.1), lambda o: None)
    from isaac_train.factory import build_processor

    processor = build_processor(cfg, config)
    objective = make_objective(cfg)
    objective.setup(strategy, frozen_factory(cfg, config), RunData(lambda split: None, processor=processor))
    return strategy, objective, processor


def rewards_of(completions) -> list[float]:
    """A reward that tells completions apart: the share of even token ids (a verifiable rule, no model)."""
    return [sum(i % 2 == 0 for i in ids) / len(ids) for ids in completions.ids]


def test_one_pass_without_kl_is_reinforce_with_the_group_mean_baseline(tmp_path):
    """objective.beta=0, num_iterations=1, scale_rewards=none, loss_type=dapo: the loss's gradient is
    -(1 / N) sum_i (r_i - mean of its group) grad log pi(completion_i), N the completion tokens; each log pi from
    a forward of that completion alone."""
    strategy, objective, processor = grpo_setup(tmp_path, "objective.scale_rewards=none", "objective.loss_type=dapo")
    model = strategy.model
    items = prompts(processor, 2)
    torch.manual_seed(3)
    completions = sample_completions(model, processor, items, G, max_new_tokens=10, temperature=1.0)
    rewards = rewards_of(completions)
    assert len(set(rewards)) > 1
    from types import SimpleNamespace

    parts = [list(rewards)]
    batch, _ = objective._micro_batch(strategy, SimpleNamespace(prompts=items), completions, rewards, parts, None)
    count = objective.count(batch)
    assert count == sum(completions.lengths)
    model.zero_grad(set_to_none=True)
    objective.micro_step(strategy, batch, torch.tensor(1.0 / count))
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad(set_to_none=True)
    total = 0.0
    for k, ids in enumerate(completions.ids):
        group = rewards[(k // G) * G:(k // G + 1) * G]
        baseline = sum(group) / G
        one = build_batch([[item_from_sample(completion_sample(items[k // G], ids, processor.image_token_id), None,
                                             "c")]], 512, processor.tokenizer.pad_token_id)
        log_pi = -model(**one.model_inputs(), return_logits=False).loss_sum  # the SFT loss path, another route
        total = total - (rewards[k] - baseline) * log_pi
    (total / count).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and got
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-4, msg=name)
    assert max(g.abs().max() for g in expected.values()) > 1e-4  # a gradient that says something


def test_rollout_batch_survives_a_checkpoint(tmp_path):
    """num_iterations > 1 keeps the rollout in the checkpoint: its state (plain containers and tensors, loaded
    weights-only) rebuilds a batch that trains identically."""
    strategy, objective, processor = grpo_setup(tmp_path, "objective.num_iterations=2", "objective.beta=0.1")
    items = prompts(processor, 2)
    torch.manual_seed(5)
    completions = sample_completions(strategy.model, processor, items, G, max_new_tokens=10, temperature=1.0)
    from types import SimpleNamespace

    rewards = rewards_of(completions)
    batch, _ = objective._micro_batch(strategy, SimpleNamespace(prompts=items), completions, rewards, [rewards], None)
    assert batch.meta["grpo"]["old"] is not None and batch.meta["grpo"]["ref"] is not None
    path = tmp_path / "state.pt"
    torch.save(batch_state(batch), path)
    rebuilt = batch_from_state(torch.load(path, weights_only=True))
    losses = []
    for b in (batch, rebuilt):
        strategy.model.zero_grad(set_to_none=True)
        loss, stats = objective.micro_step(strategy, b, torch.tensor(1.0))
        losses.append((loss, stats, [p.grad.clone() for p in strategy.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0][0], losses[1][0], atol=0, rtol=0)
    torch.testing.assert_close(losses[0][1], losses[1][1], atol=0, rtol=0)
    for a, b in zip(losses[0][2], losses[1][2], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_raising_user_reward_is_counted_not_fatal(tmp_path):
    strategy, objective, processor = grpo_setup(
        tmp_path, "objective.rewards=[exact,tests.objectives.test_grpo_rollout:broken_reward]")
    items = prompts(processor, 2)
    from types import SimpleNamespace

    micro = objective.rollout(strategy, [SimpleNamespace(prompts=items)])
    names = objective.stat_names
    stats = dict(zip(names, micro[0].meta["grpo"]["stats"].tolist(), strict=False))
    assert stats["reward_failures"] == 2 * G  # every completion, counted
    assert stats["broken_reward_n"] == 0 and stats["exact_n"] == 2 * G
    rows = objective.step_rows()
    assert all(v is None for row in rows for v in row["reward_parts"]["broken_reward"])


def broken_reward(prompt, completion, expected, meta) -> float:
    raise RuntimeError("a bug in a user's reward")


@pytest.mark.parametrize("kept", [[False] * (2 * G)], ids=["all_dropped"])
def test_a_micro_batch_with_nothing_kept_still_runs_one_forward(tmp_path, kept):
    """drop_equal_groups with every group tied: the micro-batch packs one completion with weight 0 (every rank
    still runs its forward and backward), and counts nothing."""
    strategy, objective, processor = grpo_setup(tmp_path, "objective.drop_equal_groups=true")
    items = prompts(processor, 2)
    completions = sample_completions(strategy.model, processor, items, G, max_new_tokens=6, temperature=1.0)
    from types import SimpleNamespace

    tied = [0.5] * (2 * G)
    batch, rows = objective._micro_batch(strategy, SimpleNamespace(prompts=items), completions, tied, [tied], None)
    assert objective.count(batch) == 0 and batch.layout.num_groups == 1
    assert float(batch.meta["grpo"]["coef"].abs().sum()) == 0
    assert all(not k for row in rows for k in row["kept"])
    loss, _ = objective.micro_step(strategy, batch, torch.tensor(1.0))
    assert float(loss) == 0.0
