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
