"""Manifests of 2-rank checkpoints that leave out what the format needs are refused, and resume verifies the
checksums on every rank, each its share: fsdp's DCP checkpoints with one damaged in each way fall back to the
newest good one and end bit-identical; each strategy's real files are what verification asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from isaac_train.checkpoint import integrity

from ..distributed.helpers import _env, _free_port, run_train, two_rank_overrides
from .conftest import ROOT, assert_same_checkpoint, copy_run, losses

pytestmark = pytest.mark.timeout(900)
STEPS = 6


def _step(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def _sizes(directory: Path) -> dict[str, int]:
    return {rel: e["bytes"] for rel, e in json.loads((directory / "manifest.json").read_text())["files"].items()}


def _unlist(directory: Path, name: str) -> None:
    """Remove a file and its manifest entry; the entries left are the save's own."""
    (directory / name).unlink()
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["files"][name]
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def fsdp_straight(train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_straight")
    run_train(two_rank_overrides(train_shards, out, "fsdp", f"train.max_steps={STEPS}", "train.save_every=1",
                                 "train.keep_last=10"), nproc=2)
    return out


def test_two_ranks_split_the_checksums_and_refuse_incomplete_manifests(train_shards, fsdp_straight, tmp_path):
    """step 6: a byte flipped in the biggest file of rank 1's share; step 5: rank 1's state removed with its
    manifest entry; step 4: a DCP data file that .metadata names removed with its entry. The restart on 2 ranks
    refuses each (naming the file and, for the checksum, the rank that found it), resumes from step 3, digests
    every file of step 6 and step 3 exactly once over the two ranks, each its share, and ends bit-identical."""
    run = copy_run(fsdp_straight, tmp_path / "run")
    sizes6 = _sizes(_step(run, 6))
    share1 = integrity.share(sizes6, 1, 2)
    victim = max(share1, key=lambda rel: sizes6[rel])
    data = bytearray((_step(run, 6) / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (_step(run, 6) / victim).write_bytes(bytes(data))
    _unlist(_step(run, 5), "rank_00001.pt")
    shard = integrity.dcp_data_files(_step(run, 4) / "dcp")[-1]
    _unlist(_step(run, 4), f"dcp/{shard}")

    log = tmp_path / "digests"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "tests.reliability.record_digests",
           *two_rank_overrides(train_shards, run, "fsdp", f"train.max_steps={STEPS}", "train.save_every=1",
                               "train.keep_last=10")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**_env(), "DIGEST_LOG": str(log)})
    assert done.returncode == 0, done.stderr[-4000:]
    err = done.stdout + done.stderr  # Hydra's log handler writes to stdout
    assert (f"checkpoint step_0000006 does not verify: {victim} does not match its sha256 in the manifest "
            "(changed after it was written) (found by rank 1)") in err, err[-4000:]
    assert ("checkpoint step_0000005 does not verify: rank_00001.pt is not in manifest.json, but a dcp "
            "checkpoint of 2 ranks holds it") in err
    assert (f"checkpoint step_0000004 does not verify: dcp/{shard} is not in manifest.json, but a dcp checkpoint "
            "of 2 ranks holds it") in err
    assert f"resumed from {_step(run, 3)} at step 3" in err
    for step in (4, 5, 6):
        rejected = _step(run, step).with_name(f"step_{step:07d}.rejected")
        assert (rejected / "REJECTED.txt").is_file()

    read = {rank: (log.parent / f"digests.rank{rank}").read_text().splitlines() for rank in (0, 1)}
    for step, sizes in ((6, sizes6), (3, _sizes(_step(run, 3)))):
        prefix = f"{_step(run, step)}/"
        by_rank = [sorted(p[len(prefix):] for p in read[rank] if p.startswith(prefix)) for rank in (0, 1)]
        assert by_rank[0] and by_rank[1], f"step {step}: both ranks digest at resume"
        assert not set(by_rank[0]) & set(by_rank[1]), f"step {step}: a file digested by both ranks"
        assert sorted(by_rank[0] + by_rank[1]) == sorted(sizes), f"step {step}: every file once"
        assert by_rank == [integrity.share(sizes, rank, 2) for rank in (0, 1)]
    for step in (4, 5):  # refused from the manifest alone: nothing of theirs was read
        assert not any(p.startswith(f"{_step(run, step)}/") for rank in (0, 1) for p in read[rank])

    assert_same_checkpoint(_step(run, STEPS), _step(fsdp_straight, STEPS))
    assert losses(run) == losses(fsdp_straight)


def _files_of(strategy: str, train_shards, tmp_path_factory, fsdp_straight) -> Path:
    if strategy == "fsdp":
        return _step(fsdp_straight, STEPS)
    out = tmp_path_factory.mktemp(f"files_{strategy}")
    run_train(two_rank_overrides(train_shards, out, strategy, "train.max_steps=1", "optim.warmup_steps=0"), nproc=2)
    return _step(out, 1)


@pytest.mark.parametrize("strategy", ["fsdp", "zero1", "zero2", "zero3"])
def test_required_files_are_what_each_strategy_writes(strategy, train_shards, tmp_path_factory, fsdp_straight,
                                                      tmp_path):
    """A real 2-rank checkpoint of each sharded strategy: verification asks for every file it wrote (DeepSpeed's
    recovery scripts aside), and each one removed together with its manifest entry is refused, naming it."""
    checkpoint = _files_of(strategy, train_shards, tmp_path_factory, fsdp_straight)
    assert integrity.verify(checkpoint) is None
    meta = json.loads((checkpoint / "trainer_state.json").read_text())
    required, what = integrity.required_files(checkpoint, meta)
    listed = integrity.listed_files(checkpoint)
    assert set(required) <= set(listed)
    extra = sorted(set(listed) - set(required))
    assert all("/" not in rel and rel.endswith(".py") for rel in extra), extra  # zero_to_fp32.py and the like
    assert sum(rel.startswith("rank_") for rel in required) == meta["world_size"] == 2
    for rel in required:
        copy = copy_run(checkpoint, tmp_path / rel.replace("/", "_"))
        _unlist(copy, rel)
        reason = integrity.verify(copy, checksums=False)
        assert reason == (f"{rel} is not in manifest.json, but {what} holds it" if rel != "trainer_state.json" else
                          "trainer_state.json is not in manifest.json (every checkpoint has one)"), reason
