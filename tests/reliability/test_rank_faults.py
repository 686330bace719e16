"""A rank that raises or stalls (2 processes): every rank exits non-zero within the configured timeout, and the
error names the rank that caused it, with what it raised or where it stopped."""

from __future__ import annotations

import time

import pytest

from ..distributed.helpers import two_rank_overrides
from .conftest import run_injected

pytestmark = pytest.mark.timeout(300)
TIMEOUT_S = 8


def _run(shards, out, fault):
    start = time.time()
    done = run_injected(two_rank_overrides(shards, out, "ddp", "train.max_steps=20", f"strategy.timeout_s={TIMEOUT_S}"),
                        nproc=2, faults=fault, timeout=240)
    return done, time.time() - start


def test_a_rank_that_raises_is_named_by_the_others(train_shards, tmp_path):
    done, took = _run(train_shards, tmp_path / "run", {"FAULT_RAISE": "1:3"})
    assert done.returncode != 0
    assert "isaac-train: rank 0: a collective failed (Connection closed by peer" in done.stderr, done.stderr[-3000:]
    assert "rank 1 failed: RuntimeError: FAULT: rank 1 fails at step 3" in done.stderr
    assert took < 60, took  # within seconds: the peer's socket closes when it exits, no timeout needed


def test_a_rank_that_stalls_is_named_and_the_job_ends(train_shards, tmp_path):
    done, took = _run(train_shards, tmp_path / "run", {"FAULT_STALL": "1:3"})
    assert done.returncode != 0
    assert "isaac-train: rank 0: a collective failed (Timed out waiting" in done.stderr, done.stderr[-3000:]
    assert "rank 1 reported no error: stalled or killed (last started step 3" in done.stderr
    assert f"strategy.timeout_s={TIMEOUT_S}" in done.stderr
    # rank 0's collective times out; the stalled rank's own watchdog ends it 15 s after that (torchrun would
    # kill it after 30 s), dumping where it was stuck
    assert "Timeout (0:00:23)!" in done.stderr and "in faulty_forward" in done.stderr
    assert took < TIMEOUT_S + 15 + 30, took
