"""objective.precompute_reference: the reference's log-probabilities computed once and stored equal the live frozen
copy's, a run reading them trains as a run with the live copy, and the table is reused or recomputed as its
fingerprint says."""

from __future__ import annotations

import json
import math

import torch

from isaac_train.dist_env import DistEnv
from isaac_train.distributed.strategy import LocalStrategy
from isaac_train.factory import frozen_factory, model_config, model_factory
from isaac_train.objectives import RunData, make_objective
from isaac_train.train import build
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from ..data_helpers import make_pair_shards
from ..train.conftest import losses, tiny_overrides


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_stored_log_probs_equal_the_live_copys(tmp_path, tiny_processor):
    """The same batches: bit-identical. (The training runs below pack them otherwise: within 1e-5.)"""
    shards = make_pair_shards(tmp_path / "pairs", 12, per_shard=6)
    cfg = compose_config(tiny_overrides(shards, tmp_path / "run", "objective=dpo",
                                        "objective.precompute_reference=true"))
    config = model_config(cfg)
    strategy = LocalStrategy(DistEnv(), "fp32", "single")
    strategy.setup(model_factory(cfg, config), lambda m: torch.optim.SGD(m.parameters(), lr=0.1), lambda o: None)
    stored = make_objective(cfg)
    batches = lambda split: build.build_loader(cfg, tiny_processor, shards, None, train=False)  # noqa: E731
    stored.setup(strategy, frozen_factory(cfg, config), RunData(batches, {"train": str(shards)}))
    assert stored.reference.model is None  # the copy is freed after the pass
    assert len(stored.table.splits["train"]) == 12
    live = make_objective(compose_config(tiny_overrides(shards, tmp_path / "run", "objective=dpo")))
    live.setup(strategy, frozen_factory(cfg, config))
    keys = []
    table = stored.table.splits["train"]
    loader_batches = list(batches("train"))
    for batch in loader_batches:
        inputs = batch.model_inputs()
        got = stored.reference_logps(strategy, batch, inputs, "train")
        torch.testing.assert_close(got, live.reference_logps(strategy, batch, inputs, "train"), atol=0, rtol=0)
        keys += [k for row in batch.sample_keys for k in row]
    assert sorted(keys) == sorted(table)  # every pair once


def test_a_run_reading_the_table_trains_as_with_the_live_copy(tmp_path):
    shards = make_pair_shards(tmp_path / "pairs", 24, per_shard=8)
    eval_shards = make_pair_shards(tmp_path / "eval", 6, per_shard=6, seed=9, prefix="heldout")
    common = ["objective=dpo", "train.max_steps=4", f"data.eval_shards={eval_shards}", "train.eval_every=4",
              "train.eval_samples=0", "train.eval_batches=2"]
    train(compose_config(tiny_overrides(shards, tmp_path / "live", *common)))
    table = tmp_path / "table.json"
    pre = [*common, "objective.precompute_reference=true", f"objective.reference_logps={table}"]
    train(compose_config(tiny_overrides(shards, tmp_path / "stored", *pre)))
    live, stored = metrics(tmp_path / "live"), metrics(tmp_path / "stored")
    assert abs(stored[0]["loss"] - math.log(2)) < 1e-6
    for a, b in zip(live, stored, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["rewards/margins"] - b["rewards/margins"]) < 1e-6
    evals = [json.loads(line) for run in ("live", "stored")
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if '"eval_loss"' in line]
    assert len(evals) == 2 and abs(evals[0]["eval_loss"] - evals[1]["eval_loss"]) < 1e-5
    saved = json.loads(table.read_text())
    assert set(saved["splits"]) == {"train", "eval"} and len(saved["splits"]["eval"]) == 6

    # another run with the same reference and data reads the table; another seq_len computes it again
    before = table.stat().st_mtime_ns
    train(compose_config(tiny_overrides(shards, tmp_path / "again", *pre)))
    assert table.stat().st_mtime_ns == before
    assert losses(tmp_path / "again") == losses(tmp_path / "stored")
    train(compose_config(tiny_overrides(shards, tmp_path / "other", *pre, "train.seq_len=320")))
    assert table.stat().st_mtime_ns != before
    assert json.loads(table.read_text())["fingerprint"]["seq_len"] == 320
