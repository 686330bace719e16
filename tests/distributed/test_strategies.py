"""Every strategy trains like one process: 2 gloo processes (torchrun) on the same global batch as one process.

One process with 2 loader workers and grad_accum=2 reads exactly what 2 ranks with 1 worker each read in one step
(readers are numbered rank * workers + worker), so the losses must agree (fp32, 1e-5) for 20 steps.
"""

from __future__ import annotations

import pytest

from ..train.conftest import losses
from .helpers import run_train, single_overrides, two_rank_overrides

pytestmark = pytest.mark.timeout(900)

STEPS = 20
# dropout 0: dropout masks depend on how samples are spread over processes
LORA = ["peft=lora", "model.train_decoder=lora", "model.train_vision=all", "peft.dropout=0"]
MODES = {"full": [], "lora": LORA}


@pytest.fixture(scope="module")
def single_losses(train_shards, tmp_path_factory):
    """Losses of the one-process runs, per mode (computed once for all strategies)."""
    cache: dict[str, dict[int, float]] = {}

    def get(mode: str) -> dict[int, float]:
        if mode not in cache:
            out = tmp_path_factory.mktemp(f"single_{mode}")
            run_train(single_overrides(train_shards, out, f"train.max_steps={STEPS}", *MODES[mode]))
            cache[mode] = losses(out)
        return cache[mode]

    return get


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero1", "zero2", "zero3"])
def test_two_processes_match_one(train_shards, tmp_path, single_losses, strategy, mode):
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    run_train(two_rank_overrides(train_shards, tmp_path, strategy, f"train.max_steps={STEPS}", *MODES[mode]),
              nproc=2)
    expected, got = single_losses(mode), losses(tmp_path)
    assert expected.keys() == got.keys() == set(range(1, STEPS + 1))
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-5, (strategy, mode, step, expected[step], got[step])
    assert got[STEPS] < got[1] - 0.2, "the run must actually train"
