"""A NaN on one rank of two: that step is skipped on both (every shard of the weights, the optimizer state and
the schedule unchanged), counted and logged; K non-finite steps in a row stop the run with its last good
checkpoint intact. Export refuses non-finite weights. Float settings that would make the weights non-finite are
refused before anything starts; an update that still leaves a weight non-finite (set to inf right after the
optimizer step, on one rank of two) stops the run and no checkpoint of those weights is committed."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from isaac_train.checkpoint.integrity import verify
from isaac_train.checkpoint.manager import CheckpointManager
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import WeightsNotFinite, train

from ..distributed.helpers import _env, two_rank_overrides
from ..train.conftest import losses, tiny_overrides
from .conftest import ROOT, checkpoint_tensors, differing_entries, run_injected
from .inject_weights import poison_after_update, weights_fault_cmd
from .test_inputs import refused

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


@pytest.mark.parametrize(("argv", "expected"), [
    (["optim.lr=inf"], "optim.lr: inf must be in (0, 1]"),
    (["optim.lr=1e39"], "optim.lr: 1e+39 must be in (0, 1]"),  # over float32: a traceback inside AdamW before
    (["optim.eps=inf"], "optim.eps: inf must be in [1.2e-38, 1)"),
    (["optim.eps=1e-50"], "optim.eps: 1e-50 must be in [1.2e-38, 1)"),  # 0 in float32: 0/0 gives NaN weights
    (["optim.betas=[0.9,nan]"], "optim.betas: needs two values in [0, 1)"),
    (["optim.weight_decay=inf"], "optim.weight_decay: inf must be >= 0 and finite"),
])
def test_float_settings_that_break_the_weights_are_refused_in_one_line(argv, expected, capsys, monkeypatch):
    assert expected in refused(argv, capsys, monkeypatch)


def _complete_steps(run_dir) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in CheckpointManager(run_dir / "checkpoints").complete())


def _all_finite(step_dir) -> bool:
    return all(torch.isfinite(t).all() for t in checkpoint_tensors(step_dir).values()
               if torch.is_tensor(t) and t.is_floating_point())


@pytest.mark.parametrize(("update", "save_every", "committed"), [(2, 1, [1]), (1, 3, [])])
def test_an_update_that_leaves_an_inf_weight_commits_no_checkpoint(train_shards, tmp_path, update, save_every,
                                                                   committed):
    """Update 2 on a save step: the check before the save refuses it. Update 1 off a save step: the flag folded
    into step 2's one read stops the run there (step 2 is not logged), before the save of step 3."""
    out = tmp_path / "run"
    cfg = compose_config(tiny_overrides(train_shards, out, "train.max_steps=4", f"train.save_every={save_every}"))
    hook = poison_after_update(update)
    try:
        with pytest.raises(WeightsNotFinite, match=f"the update of step {update} left non-finite") as err:
            train(cfg)
    finally:
        hook.remove()
    assert _complete_steps(out) == committed and not list((out / "checkpoints").glob(".tmp*"))
    if committed:
        last = CheckpointManager(out / "checkpoints").latest()
        assert f"The last checkpoint, {last}, holds the last good weights" in str(err.value)
        assert _all_finite(last)
    else:
        assert "No checkpoint was committed before it" in str(err.value)
    assert max(losses(out)) == update, "stopped at the first read after the update"


@pytest.mark.parametrize("strategy", ["fsdp", "zero2"])
def test_an_inf_weight_on_one_rank_stops_both_without_a_checkpoint(train_shards, tmp_path, strategy):
    """FSDP2: the weight is in rank 1's DTensor shard; ZeRO-2: in rank 1's fp32 master partition."""
    out = tmp_path / "run"
    run = subprocess.run(weights_fault_cmd(two_rank_overrides(train_shards, out, strategy, "train.max_steps=4",
                                                              "train.save_every=1"), nproc=2),
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**_env(), "FAULT_INF_WEIGHT": "1:2"})
    assert run.returncode != 0
    assert "FAULT: rank 1: weight set to inf after update 2" in run.stderr, run.stderr[-3000:]
    # rank 0's own shard stayed finite: it stops too, from the flag summed over both ranks
    assert "rank 0: the update of step 2 left non-finite" in run.stderr, run.stderr[-3000:]
    assert _complete_steps(out) == [1]
    if strategy == "fsdp":  # (checkpoint_tensors reads the full and dcp formats)
        assert _all_finite(out / "checkpoints" / "step_0000001")
