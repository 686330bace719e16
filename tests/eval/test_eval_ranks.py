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
