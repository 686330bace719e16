"""DDP with 2 gloo processes (torchrun) gives the losses of one process on the same global batch.

One process with 2 loader workers and grad_accum=2 reads exactly what 2 ranks with 1 worker each read in one
step (readers are numbered rank * workers + worker), so both runs see the same samples per step.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from ..train.conftest import losses, tiny_overrides

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(overrides: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "isaac_train.train", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ddp_matches_single_process(train_shards, tmp_path, lora):
    # dropout 0: dropout masks depend on how samples are spread over processes
    extra = ["peft=lora", "model.train_decoder=lora", "model.train_vision=all", "peft.dropout=0"] if lora else []
    single = tiny_overrides(train_shards, tmp_path / "single", "data.num_workers=2", "train.grad_accum=2",
                            "train.max_steps=6", *extra)
    out = subprocess.run([sys.executable, "-m", "isaac_train.train", *single], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = tiny_overrides(train_shards, tmp_path / "ddp", "strategy=ddp", "data.num_workers=1", "train.max_steps=6",
                         *extra)
    run = torchrun(ddp)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert a.keys() == b.keys() == set(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
