"""The sharded formats read nothing that runs code: a pickle payload planted as DCP's `.metadata` (fsdp) or as a
DeepSpeed state file (zero2), with the manifest rewritten to match, is refused by resume and by export, naming
the file, and never runs. And DeepSpeed's ZeRO skips a NaN step like the other strategies (one process)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from isaac_train.checkpoint import integrity
from isaac_train.checkpoint.manager import CheckpointManager
from isaac_train.checkpoint.safe_load import UnsafeCheckpointError

from .conftest import run_injected, tiny_overrides

pytestmark = pytest.mark.timeout(600)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _run(shards, out, strategy, *extra, faults=None):
    done = run_injected(tiny_overrides(shards, out, f"strategy={strategy}", "train.max_steps=3", "train.save_every=1",
                                       "train.keep_last=5", *extra), faults=faults)
    return done


@pytest.fixture(scope="module")
def fsdp_run(train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    assert _run(train_shards, out, "fsdp").returncode == 0
    return out


@pytest.fixture(scope="module")
def zero_run(train_shards, tmp_path_factory):
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("zero2") / "run"
    done = _run(train_shards, out, "zero2", "train.max_steps=4", "optim.warmup_steps=3", faults={"FAULT_NAN": "0:2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _plant(run: Path, tmp_path: Path, relative: str, raw_pickle: bool) -> tuple[Path, Path]:
    copy = shutil.copytree(run, tmp_path / "run", symlinks=True)
    newest = CheckpointManager(copy / "checkpoints").complete()[-1]
    victim = next(newest.glob(relative))
    marker = tmp_path / "marker"
    if raw_pickle:
        victim.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"state": _Payload(marker)}, victim)
    integrity.write_manifest(newest, integrity.digest_share(newest, 0, 1))
    assert integrity.verify(newest) is None
    return copy, victim


def _refused(train_shards, run: Path, victim: Path, strategy: str, tmp_path: Path) -> None:
    done = _run(train_shards, run, strategy, "train.max_steps=6")
    assert done.returncode == 1
    assert "refusing to load" in done.stderr and victim.name in done.stderr, done.stderr[-3000:]
    from isaac_train.export import export_checkpoint

    with pytest.raises(UnsafeCheckpointError, match=victim.name):
        export_checkpoint(run, tmp_path / "hf", log=lambda *_: None)
    assert not (tmp_path / "marker").exists(), "the payload ran"


def test_planted_dcp_metadata_is_refused(train_shards, fsdp_run, tmp_path):
    run, victim = _plant(fsdp_run, tmp_path, "dcp/.metadata", raw_pickle=True)
    _refused(train_shards, run, victim, "fsdp", tmp_path)
    pickle.loads(victim.read_bytes())  # the payload is real: plain pickle runs it
    assert (tmp_path / "marker").exists()


def test_planted_deepspeed_state_file_is_refused(train_shards, zero_run, tmp_path):
    run, victim = _plant(zero_run, tmp_path, "deepspeed/*optim_states.pt", raw_pickle=False)
    _refused(train_shards, run, victim, "zero2", tmp_path)


def test_zero_skips_a_nan_step_like_the_others(zero_run):
    from isaac_train.trained import load_trained

    records = {r["step"]: r for r in map(json.loads, (zero_run / "metrics.jsonl").read_text().splitlines())}
    assert records[2]["loss"] == "nan" and records[2]["skipped_steps"] == 1 and records[3]["skipped_steps"] == 1
    assert records[2]["lr"] == records[1]["lr"] < records[3]["lr"], "warmup: the schedule did not move on the skip"
    before, skipped, after = (load_trained(zero_run / "checkpoints" / f"step_{s:07d}").model.state_dict()
                              for s in (1, 2, 3))
    assert all(torch.equal(before[k], skipped[k]) for k in before)
    assert any(not torch.equal(skipped[k], after[k]) for k in before)
