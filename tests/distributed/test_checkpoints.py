"""Sharded checkpoints resume exactly: FSDP2 (DCP) on 2 and on 1 process, DeepSpeed ZeRO-3 on 2; and batches
where one rank has images and the other none run through every strategy."""

from __future__ import annotations

import json

import pytest

from ..train.conftest import losses
from .helpers import keep_only_checkpoint, make_split_modality_shards, run_train, single_overrides, two_rank_overrides

pytestmark = pytest.mark.timeout(900)

STEPS, SAVE_AT = 12, 6


def _straight(train_shards, tmp_path_factory, strategy: str):
    out = tmp_path_factory.mktemp(f"straight_{strategy}")
    # evaluation runs on every rank when weights are sharded: the loss on all, the 3 answered samples split (2 + 1
    # and a filler), the vision tower run on both ranks although one rank's batch may hold no image
    run_train(two_rank_overrides(train_shards, out, strategy, f"train.max_steps={STEPS}", f"train.save_every={SAVE_AT}",
                                 "train.keep_last=5", f"data.eval_shards={train_shards}", f"train.eval_every={SAVE_AT}",
                                 "train.eval_batches=2", "train.eval_samples=3", "train.eval_batch_size=2"), nproc=2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [SAVE_AT, STEPS]
    assert not any("eval_failures" in r for r in records)
    for step in (SAVE_AT, STEPS):
        rows = [json.loads(line) for line in (out / "eval" / f"step_{step:07d}.jsonl").read_text().splitlines()]
        assert [r["key"] for r in rows] == [r["key"] for r in _first_eval_rows(train_shards)]
    meta = json.loads((out / "checkpoints" / f"step_{SAVE_AT:07d}" / "trainer_state.json").read_text())
    return out, losses(out), meta


def _first_eval_rows(shards):
    from isaac_train.eval.samples import read_eval_samples

    return [{"key": s.key} for s in read_eval_samples(shards, 3).samples]


@pytest.fixture(scope="module")
def fsdp_run(train_shards, tmp_path_factory):
    return _straight(train_shards, tmp_path_factory, "fsdp")


def test_fsdp_checkpoint_is_sharded_dcp(fsdp_run):
    out, _, meta = fsdp_run
    step = out / "checkpoints" / f"step_{SAVE_AT:07d}"
    assert meta["format"] == "dcp" and meta["world_size"] == 2 and meta["strategy"] == "fsdp"
    assert (step / "dcp" / ".metadata").is_file() and len(list((step / "dcp").glob("*.distcp"))) == 2
    assert not (step / "model.safetensors").exists()


def _resume_on_two_is_bit_identical(train_shards, tmp_path, run, strategy: str) -> None:
    out, straight, _ = run
    resumed = keep_only_checkpoint(out, SAVE_AT, tmp_path / "resumed")
    run_train(two_rank_overrides(train_shards, resumed, strategy, f"train.max_steps={STEPS}",
                                 f"train.save_every={SAVE_AT}", "train.keep_last=5"), nproc=2)
    got = losses(resumed)
    assert set(got) == set(range(SAVE_AT + 1, STEPS + 1))
    for step in got:
        assert got[step] == straight[step], (strategy, step, got[step], straight[step])


def test_fsdp_checkpoint_resumes_on_two_processes(train_shards, tmp_path, fsdp_run):
    _resume_on_two_is_bit_identical(train_shards, tmp_path, fsdp_run, "fsdp")


@pytest.mark.parametrize("strategy", ["fsdp", "single"])
def test_fsdp_checkpoint_resumes_on_one_process(train_shards, tmp_path, fsdp_run, strategy):
    """2 ranks x 1 worker x grad_accum 1 -> 1 process x 2 workers x grad_accum 2: the same data per step."""
    out, straight, _ = fsdp_run
    resumed = keep_only_checkpoint(out, SAVE_AT, tmp_path / "resumed")
    run_train(single_overrides(train_shards, resumed, f"strategy={strategy}", f"train.max_steps={STEPS}",
                               f"train.save_every={SAVE_AT}", "train.keep_last=5"))
    got = losses(resumed)
    assert set(got) == set(range(SAVE_AT + 1, STEPS + 1))
    for step in got:
        assert abs(got[step] - straight[step]) < 1e-5, (step, got[step], straight[step])


@pytest.fixture(scope="module")
def zero3_run(train_shards, tmp_path_factory):
    pytest.importorskip("deepspeed")
    return _straight(train_shards, tmp_path_factory, "zero3")


def test_zero3_checkpoint_resumes_on_two_processes(train_shards, tmp_path, zero3_run):
    out, _, meta = zero3_run
    assert meta["format"] == "deepspeed" and meta["world_size"] == 2
    assert (out / "checkpoints" / f"step_{SAVE_AT:07d}" / "deepspeed").is_dir()
    _resume_on_two_is_bit_identical(train_shards, tmp_path, zero3_run, "zero3")


@pytest.mark.parametrize(("strategy", "message"), [
    ("zero3", "written by 2 processes with DeepSpeed"),
    ("fsdp", "in the 'deepspeed' format, which strategy=fsdp cannot resume"),
])
def test_deepspeed_checkpoint_elsewhere_is_refused_with_the_reason(train_shards, tmp_path, zero3_run, strategy,
                                                                   message):
    out, _, _ = zero3_run
    resumed = keep_only_checkpoint(out, SAVE_AT, tmp_path / "resumed")
    run = run_train(single_overrides(train_shards, resumed, f"strategy={strategy}", f"train.max_steps={STEPS}"),
                    check=False)
    assert run.returncode != 0
    assert message in run.stderr, run.stderr[-3000:]


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory):
    return make_split_modality_shards(tmp_path_factory.mktemp("split_modality"))


@pytest.fixture(scope="module")
def split_single(split_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("split_single")
    run_train(single_overrides(split_shards, out, "train.max_steps=6", "model.train_vision=all"))
    return losses(out)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_rank_without_images_does_not_hang(split_shards, split_single, tmp_path, strategy):
    """Rank 0 reads only text-only samples, rank 1 only samples with images; the vision tower trains."""
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    run_train(two_rank_overrides(split_shards, tmp_path, strategy, "train.max_steps=6", "model.train_vision=all",
                                 "strategy.timeout_s=120"), nproc=2, timeout=400)
    got = losses(tmp_path)
    for step, expected in split_single.items():
        assert abs(got[step] - expected) < 1e-5, (strategy, step, got[step], expected)


def test_single_process_checkpoint_resumes_under_fsdp_on_two(train_shards, tmp_path):
    """A workstation run continued on 2 processes with FSDP: 1 x 2 workers x grad_accum 2 -> 2 x 1 x 1."""
    straight = tmp_path / "straight"
    run_train(single_overrides(train_shards, straight, f"train.max_steps={STEPS}", f"train.save_every={SAVE_AT}",
                               "train.keep_last=5"))
    resumed = keep_only_checkpoint(straight, SAVE_AT, tmp_path / "resumed")
    run_train(two_rank_overrides(train_shards, resumed, "fsdp", f"train.max_steps={STEPS}",
                                 f"train.save_every={SAVE_AT}", "train.keep_last=5"), nproc=2)
    expected, got = losses(straight), losses(resumed)
    assert set(got) == set(range(SAVE_AT + 1, STEPS + 1))
    for step in got:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])
