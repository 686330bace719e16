"""The reference model of objective=dpo is the starting model: under LoRA the policy with its adapters disabled
gives the log-probabilities of the base model loaded alone; under full fine-tuning the frozen copy does, and keeps
doing so while the policy trains."""

from __future__ import annotations

import torch

from isaac_train.data.packing import build_batch, item_from_pair
from isaac_train.dist_env import DistEnv
from isaac_train.distributed.strategy import LocalStrategy
from isaac_train.factory import frozen_factory, model_config, model_factory
from isaac_train.model import IsaacForConditionalGeneration
from isaac_train.model.tiny import tiny_config
from isaac_train.objectives import make_objective
from isaac_train.train.cli import compose_config

from ..conftest import randomize_
from ..data_helpers import make_pair_shards
from ..train.conftest import tiny_overrides
from .test_pair_packing import PAD, encoded_pairs


def setup(tmp_path, tiny_processor, *extra):
    shards = make_pair_shards(tmp_path / "pairs", 4)
    base_dir = tmp_path / "base"
    randomize_(IsaacForConditionalGeneration(tiny_config(attn_backend="sdpa")), seed=5).save_pretrained(base_dir)
    tiny_processor.tokenizer.save_pretrained(base_dir)
    cfg = compose_config(tiny_overrides(shards, tmp_path / "run", "objective=dpo",
                                        f"model.pretrained={base_dir}", *extra))
    config = model_config(cfg)
    strategy = LocalStrategy(DistEnv(), "fp32", "single")
    strategy.setup(model_factory(cfg, config), lambda m: torch.optim.SGD([p for p in m.parameters()
                                                                          if p.requires_grad], lr=0.5),
                   lambda o: None)
    objective = make_objective(cfg)
    objective.setup(strategy, frozen_factory(cfg, config))
    pairs = encoded_pairs(tiny_processor)
    batch = build_batch([[item_from_pair(c, r, None, f"p{i}") for i, (c, r) in enumerate(pairs)]], 512, PAD)
    base = IsaacForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = base(**batch.model_inputs()).group_logps
    return strategy, objective, batch, expected


def test_adapters_disabled_give_the_base_model_alone(tmp_path, tiny_processor):
    strategy, objective, batch, expected = setup(tmp_path, tiny_processor, "peft=lora", "model.train_projector=false")
    inputs = batch.model_inputs()
    assert objective.reference.kind == "adapters" and objective.reference.model is None  # no second copy
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in strategy.eval_model.named_parameters():
            if "lora_B" in name:  # adapters that change the answer (peft starts B at zero)
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    policy = strategy.forward_frozen(strategy.eval_model, inputs).group_logps
    assert (policy - expected).abs().max() > 1e-2  # the adapters are on outside the reference
    torch.testing.assert_close(objective.reference.logps(strategy, inputs), expected, atol=1e-6, rtol=0)
    # and back on afterwards
    torch.testing.assert_close(strategy.forward_frozen(strategy.eval_model, inputs).group_logps, policy)


def test_auto_takes_a_copy_when_more_than_the_adapters_trains(tmp_path):
    """A trained projector (or vision tower) is not undone by disabling the adapters: auto takes a frozen copy, and
    adapters is refused naming what to set."""
    import pytest

    from isaac_train.config.schema import ConfigError

    shards = make_pair_shards(tmp_path / "pairs", 2)
    base = tiny_overrides(shards, tmp_path / "run", "objective=dpo", "peft=lora")
    assert make_objective(compose_config(base)).reference.kind == "copy"  # the projector trains by default
    assert make_objective(compose_config([*base, "model.train_projector=false"])).reference.kind == "adapters"
    assert make_objective(compose_config([*base, "model.train_projector=false", "model.train_vision=all"])
                          ).reference.kind == "copy"
    with pytest.raises(ConfigError, match="model.train_projector=false"):
        compose_config([*base, "objective.reference=adapters"])


def test_frozen_copy_is_the_starting_model_while_the_policy_trains(tmp_path, tiny_processor):
    strategy, objective, batch, expected = setup(tmp_path, tiny_processor)
    inputs = batch.model_inputs()
    assert objective.reference.kind == "copy"
    assert not any(p.requires_grad for p in objective.reference.model.parameters())
    torch.testing.assert_close(objective.reference.logps(strategy, inputs), expected, atol=1e-6, rtol=0)
    for _ in range(2):
        objective.micro_step(strategy, batch, torch.tensor(1.0))
        strategy.optimizer.step()
        strategy.optimizer.zero_grad()
    policy = strategy.forward_frozen(strategy.eval_model, inputs).group_logps
    assert (policy - expected).abs().max() > 1e-2  # the policy moved
    torch.testing.assert_close(objective.reference.logps(strategy, inputs), expected, atol=1e-6, rtol=0)
