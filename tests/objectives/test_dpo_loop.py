"""objective=dpo through the loop on pair shards the test makes: the first step's loss is log 2."""

from __future__ import annotations

import json
import math

import pytest

from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from ..data_helpers import make_pair_shards
from ..train.conftest import tiny_overrides


@pytest.mark.parametrize("extra", [[], ["peft=lora", "model.train_projector=false", "data.rows_per_batch=2",
                                                "train.grad_accum=2"]],
                         ids=["copy", "adapters"])
def test_first_step_loss_is_log_2(tmp_path, extra):
    shards = make_pair_shards(tmp_path / "pairs", 24)
    out = tmp_path / "run"
    cfg = compose_config(tiny_overrides(shards, out, "objective=dpo", "train.max_steps=3", *extra))
    train(cfg)
    first = json.loads(next(line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line))
    assert abs(first["loss"] - math.log(2)) < 1e-6
    assert first["rewards/accuracies"] == 0.0 and abs(first["rewards/margins"]) < 1e-6
    for plot in ("rewards.png", "reward_accuracy.png", "logps.png"):  # drawn at the end of the run
        assert (out / "plots" / plot).is_file(), plot


def test_bf16_holds_the_frozen_copy_in_bf16(tmp_path):
    """train.precision=bf16: the reference copy's weights are bf16 (half the memory of fp32), the policy's
    trainable ones fp32; the first loss is log 2 up to bf16 rounding (the policy's trainable weights stay fp32)."""
    import torch

    from isaac_train.dist_env import DistEnv
    from isaac_train.distributed.strategy import LocalStrategy
    from isaac_train.factory import frozen_factory, model_config, model_factory
    from isaac_train.objectives import make_objective

    shards = make_pair_shards(tmp_path / "pairs", 24)
    out = tmp_path / "run"
    cfg = compose_config(tiny_overrides(shards, out, "objective=dpo", "train.max_steps=3", "train.precision=bf16"))
    train(cfg)
    first = json.loads(next(line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line))
    assert abs(first["loss"] - math.log(2)) < 2e-2
    strategy = LocalStrategy(DistEnv(), "bf16", "single")
    config = model_config(cfg)
    strategy.setup(model_factory(cfg, config), lambda m: torch.optim.SGD(m.parameters(), lr=0.1), lambda o: None)
    objective = make_objective(cfg)
    objective.setup(strategy, frozen_factory(cfg, config))
    frozen = {p.dtype for n, p in objective.reference.model.named_parameters() if "norm" not in n}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in strategy.model.parameters() if p.requires_grad} == {torch.float32}
