"""launch/ scripts: their commands in dry-run mode (no cluster needed), and a real 2-process run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ..train.conftest import losses, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_torchrun_dry_run_counts_processes_and_adds_ddp():
    out = _run("launch/torchrun.sh", ["recipe=sft_lora", "model.pretrained=/ckpt"], {"DRY_RUN": "1", "NPROC": "4"})
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4"
    assert cmd[-3:] == ["recipe=sft_lora", "model.pretrained=/ckpt", "strategy=ddp"]
    explicit = shlex.split(_run("launch/torchrun.sh", ["strategy=single"], {"DRY_RUN": "1", "NPROC": "2"}).stdout)
    assert explicit.count("strategy=single") == 1 and "strategy=ddp" not in explicit


def test_sbatch_dry_run_rendezvous_on_the_first_node(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a07\\ngpu-a08\\ngpu-b01\\n'\n")
    (fake / "scontrol").chmod(0o755)
    env = {"DRY_RUN": "1", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "gpu-a[07-08],gpu-b01", "SLURM_JOB_ID": "4242",
           "GPUS_PER_NODE": "8", "PATH": f"{fake}:{os.environ['PATH']}"}
    out = _run("launch/slurm/train.sbatch", ["recipe=sft_full", "run.output_dir=/runs/x"], env)
    assert out.returncode == 0, out.stderr
    line, requeue = out.stdout.strip().splitlines()
    cmd = shlex.split(line)
    assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert cmd[cmd.index("--nnodes") + 1] == "3" and cmd[cmd.index("--nproc_per_node") + 1] == "8"
    assert cmd[cmd.index("--rdzv_endpoint") + 1] == "gpu-a07:29500" and cmd[cmd.index("--rdzv_id") + 1] == "4242"
    assert cmd[-3:] == ["recipe=sft_full", "run.output_dir=/runs/x", "strategy=ddp"]
    assert "scontrol requeue 4242" in requeue
    header = (ROOT / "launch/slurm/train.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@300" in header and "#SBATCH --requeue" in header


def test_sbatch_outside_slurm_says_so():
    out = _run("launch/slurm/train.sbatch", [], {"SLURM_NNODES": ""})
    assert out.returncode != 0 and "sbatch" in out.stderr


@pytest.mark.timeout(600)
def test_torchrun_script_runs_two_processes(train_shards, tmp_path):
    out = tmp_path / "run"
    run = _run("launch/torchrun.sh", tiny_overrides(train_shards, out, "data.num_workers=1", "train.max_steps=3"),
               {"NPROC": "2", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(losses(out)) == [1, 2, 3]
    assert (out / "checkpoints" / "latest" / "rank_00001.pt").is_file()
