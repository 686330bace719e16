"""Evaluation split over 2 processes answers every sample exactly once and gives the one-process answers: plain
weights (ddp) and FSDP2-sharded weights (each rank's share topped up to equal length, the vision tower run on
every rank although one rank's batch may hold no image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from isaac_train.eval.generate import generate_answers
from isaac_train.eval.samples import read_eval_samples
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

from ..distributed.helpers import _env, _free_port, make_split_modality_shards
from .dist_eval_worker import tiny_eval_model

N = 7  # odd: rank 0 answers 4, rank 1 answers 3 (and, with sharded weights, one filler)
WORKER = Path(__file__).with_name("dist_eval_worker.py")


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory):
    """Even samples text-only, odd ones with images: rank 0's batches (0, 2, 4, 6) hold no image at all."""
    return make_split_modality_shards(tmp_path_factory.mktemp("split"), n=20)


@pytest.fixture(scope="module")
def one_process(split_shards):
    processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config())
    samples = read_eval_samples(split_shards, N).samples
    return generate_answers(tiny_eval_model(), processor, samples, batch_size=1, max_new_tokens=6)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_answer_each_sample_once_as_one_process_does(mode, split_shards, one_process, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), mode, str(split_shards), str(tmp_path), str(N)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["share"] == [0, 2, 4, 6] and ranks[1]["share"] == [1, 3, 5]  # disjoint, complete, once each
    assert ranks[0]["answers"] == ranks[1]["answers"] == one_process


@pytest.mark.timeout(600)
def test_ddp_training_evaluation_splits_the_samples_and_matches_one_process(train_shards, tmp_path):
    """Periodic evaluation under ddp on 2 processes: every rank answers its share, rank 0 writes all 5 rows once
    each, with the answers of the single-process run on the same global batch."""
    from ..distributed.helpers import run_train, single_overrides, two_rank_overrides

    extra = ("train.max_steps=4", f"data.eval_shards={train_shards}", "train.eval_every=4", "train.eval_batches=1",
             "train.eval_samples=5", "train.eval_batch_size=2", "train.eval_max_new_tokens=6")
    run_train(single_overrides(train_shards, tmp_path / "one", *extra))
    run_train(two_rank_overrides(train_shards, tmp_path / "two", "ddp", *extra), nproc=2)
    rows = {}
    for name in ("one", "two"):
        path = tmp_path / name / "eval" / "step_0000004.jsonl"
        rows[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows["two"]) == 5 and len({r["key"] for r in rows["two"]}) == 5
    assert [(r["key"], r["generated"]) for r in rows["two"]] == [(r["key"], r["generated"]) for r in rows["one"]]
