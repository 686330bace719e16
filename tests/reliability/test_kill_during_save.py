"""kill -9 at random points of a checkpoint save (one process, and one rank of two under FSDP; LoRA with dropout,
packed rows), several seeds: the rerun of the same command resumes from the newest complete, verified checkpoint
and ends bit-identical to a run that was never interrupted: weights, optimizer state, schedule, loss series and
the ledger of sample keys per step.

The point of the kill is drawn from the seed among the lines of isaac_train's own code that a save executes
(counted in an uninterrupted run): between writing files, digesting them, the manifest, the marker, the rename,
the `latest` link and retention."""

from __future__ import annotations

import json
import random
import signal

import pytest

from isaac_train.checkpoint.integrity import verify
from isaac_train.checkpoint.manager import CheckpointManager

from ..distributed.helpers import two_rank_overrides
from .conftest import assert_same_checkpoint, ledger, losses, metric_steps, run_injected, tiny_overrides

pytestmark = pytest.mark.timeout(900)
STEPS = 6
LORA = ("peft=lora", "model.train_decoder=lora", "peft.dropout=0.1", "logging.ledger=true",
        f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=2")


def _single(shards, out):
    return tiny_overrides(shards, out, *LORA)


def _fsdp(shards, out):
    return two_rank_overrides(shards, out, "fsdp", *LORA)


def _straight(shards, out, make, nproc):
    counts = out.parent / f"{out.name}_counts"
    done = run_injected(make(shards, out), nproc=nproc, faults={"FAULT_COUNT_SAVES": str(counts)})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, [json.loads(counts.with_name(f"{counts.name}.rank{r}").read_text()) for r in range(max(nproc, 1))]


@pytest.fixture(scope="module")
def straight_single(train_shards, tmp_path_factory):
    return _straight(train_shards, tmp_path_factory.mktemp("single") / "run", _single, 0)


@pytest.fixture(scope="module")
def straight_fsdp(train_shards, tmp_path_factory):
    return _straight(train_shards, tmp_path_factory.mktemp("fsdp") / "run", _fsdp, 2)


def _kill_and_rerun(shards, tmp_path, straight, make, nproc, seed):
    reference, counts = straight
    rng = random.Random(seed)
    rank = rng.randrange(max(nproc, 1))
    save = rng.randrange(len(counts[rank])) + 1
    event = rng.randrange(counts[rank][save - 1]) + 1
    out = tmp_path / "run"
    killed = run_injected(make(shards, out), nproc=nproc, faults={"FAULT_KILL_SAVE": f"{save}:{event}:{rank}"})
    where = f"seed {seed}: rank {rank}, save {save} of {len(counts[rank])}, line {event} of {counts[rank][save - 1]}"
    if nproc:
        assert killed.returncode != 0 and "Signal 9 (SIGKILL) received" in killed.stderr, (where, killed.stderr[-2000:])
    else:
        assert killed.returncode == -signal.SIGKILL, (where, killed.returncode, killed.stderr[-2000:])
    rerun = run_injected(make(shards, out), nproc=nproc)
    assert rerun.returncode == 0, (where, rerun.stderr[-3000:])
    final = out / "checkpoints" / f"step_{STEPS:07d}"
    assert verify(final) is None
    assert_same_checkpoint(final, reference / "checkpoints" / final.name)
    assert losses(out) == losses(reference), where
    assert ledger(out) == ledger(reference), where
    assert metric_steps(out) == list(range(1, STEPS + 1)), where
    assert [p.name for p in CheckpointManager(out / "checkpoints").complete()] == ["step_0000004", final.name]
    assert not list((out / "checkpoints").glob(".tmp*"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kill_9_during_save_single_process(train_shards, tmp_path, straight_single, seed):
    _kill_and_rerun(train_shards, tmp_path, straight_single, _single, 0, seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_during_save_one_rank_of_two_fsdp(train_shards, tmp_path, straight_fsdp, seed):
    _kill_and_rerun(train_shards, tmp_path, straight_fsdp, _fsdp, 2, seed)
