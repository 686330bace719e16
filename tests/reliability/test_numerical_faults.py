"""A NaN on one rank of two: that step is skipped on both (every shard of the weights, the optimizer state and
the schedule unchanged), counted and logged; K non-finite steps in a row stop the run with its last good
checkpoint intact. Export refuses non-finite weights."""

from __future__ import annotations

import json

import pytest
import torch

from isaac_train.checkpoint.integrity import verify
from isaac_train.checkpoint.manager import CheckpointManager

from ..distributed.helpers import two_rank_overrides
from .conftest import differing_entries, run_injected

pytestmark = pytest.mark.timeout(600)


def test_nan_on_one_rank_skips_the_step_everywhere_then_stops(train_shards, tmp_path):
    out = tmp_path / "run"
    run = run_injected(two_rank_overrides(train_shards, out, "fsdp", "train.max_steps=10", "train.save_every=1",
                                          "train.keep_last=20", "train.max_skipped_steps=2"),
                       nproc=2, faults={"FAULT_NAN": "1:3,6,7"})
    assert run.returncode != 0
    assert "2 steps in a row (up to step 7) had a non-finite loss or gradient norm (train.max_skipped_steps=2)" \
        in run.stderr, run.stderr[-3000:]
    checkpoints = CheckpointManager(out / "checkpoints")
    step = {int(p.name.split("_")[1]): p for p in checkpoints.complete()}
    assert sorted(step) == [1, 2, 3, 4, 5, 6], "no checkpoint after the run stopped"
    assert f"The last checkpoint, {step[6]}, holds the last good weights" in run.stderr
    assert all(verify(p) is None for p in step.values()) and not list((out / "checkpoints").glob(".tmp*"))
    # step 3 and steps 6-7 were skipped on both ranks: both shards, Adam's moments and step counts, the schedule
    assert differing_entries(step[2], step[3]) == []
    assert differing_entries(step[5], step[6]) == []
    assert differing_entries(step[3], step[4]), "training went on after the skipped step"
    records = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert records[3]["loss"] == "nan" and records[3]["skipped_steps"] == 1
    assert records[4]["skipped_steps"] == 1 and records[6]["skipped_steps"] == 2 and records[7]["skipped_steps"] == 3
    state = json.loads((step[6] / "trainer_state.json").read_text())["train_state"]
    assert state["skipped_steps"] == 2 and state["skips_in_a_row"] == 1
    assert "step 3: loss nan" in run.stdout + run.stderr and "step skipped, nothing updated" in run.stdout + run.stderr


def test_export_refuses_non_finite_weights(tiny_model, tiny_processor, tmp_path):
    from isaac_train.export import ExportVerificationError, export_model

    with torch.no_grad():
        tiny_model.model.layers[0].mlp.up_proj.weight[0, :3] = float("nan")
    with pytest.raises(ExportVerificationError, match=r"non-finite weights: 1 tensors .*layers\.0\.mlp\.up_proj"):
        export_model(tiny_model, tiny_processor, tmp_path / "hf", log=lambda *_: None)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.tmp").exists()
