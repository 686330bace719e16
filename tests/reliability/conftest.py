"""Helpers for the fault-injection suite: runs of the real trainer (in this process, in a subprocess through
tests/reliability/inject.py, or under torchrun) and exact comparisons of what they leave behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..distributed.helpers import _env, _free_port
from ..train.conftest import losses, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def inject_cmd(overrides: list[str], nproc: int = 0) -> list[str]:
    """The trainer with test-only fault injection (inject.py), alone or under torchrun."""
    if nproc:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "tests.reliability.inject",
                *overrides]
    return [sys.executable, "-m", "tests.reliability.inject", *overrides]


def run_injected(overrides: list[str], nproc: int = 0, faults: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(inject_cmd(overrides, nproc), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**_env(), **(faults or {})})


def start_injected(overrides: list[str], nproc: int = 0, faults: dict[str, str] | None = None) -> subprocess.Popen:
    """Started in a session of its own, as a batch system starts a job: its process group can be signalled."""
    return subprocess.Popen(inject_cmd(overrides, nproc), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**_env(), **(faults or {})}, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the condition held:\n"
                                 f"{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def last_step(run_dir: Path) -> int:
    return max(losses(run_dir), default=0) if (run_dir / "metrics.jsonl").is_file() else 0


def saving(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(p.name.startswith(".tmp_step_") for p in root.iterdir())


def ledger(run_dir: Path) -> dict[int, list]:
    """step -> the sample keys each rank trained on (logging.ledger=true)."""
    out = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["step"] not in out, f"step {rec['step']} is in the ledger twice"
        out[rec["step"]] = rec["keys"]
    return out


def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, model and optimizer state, flattened by name, whatever its format."""
    from safetensors.torch import load_file

    from isaac_train.checkpoint.safe_load import load_state_file

    out: dict[str, torch.Tensor] = {}
    if (step_dir / "model.safetensors").is_file():
        out.update({f"model.{k}": v for k, v in load_file(step_dir / "model.safetensors").items()})
        _flatten("optimizer", load_state_file(step_dir / "optimizer.pt"), out)
    else:
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        converted = step_dir.parent.parent / f"_{step_dir.name}.pt"
        dcp_to_torch_save(step_dir / "dcp", converted)
        _flatten("", load_state_file(converted), out)
        converted.unlink()
    _flatten("scheduler", load_state_file(step_dir / "scheduler.pt"), out)
    return out


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}", v, out)
    elif torch.is_tensor(value):
        out[prefix] = value
    else:
        out[prefix] = torch.tensor(float(value)) if isinstance(value, (int, float, bool)) else value


def differing_entries(a: Path, b: Path) -> list[str]:
    """Names of the entries (tensors and plain values) in which two checkpoints differ; both hold the same names."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    return [k for k in ta if (torch.is_tensor(ta[k]) and not torch.equal(ta[k], tb[k]))
            or (not torch.is_tensor(ta[k]) and ta[k] != tb[k])]


def assert_same_checkpoint(a: Path, b: Path) -> None:
    differ = differing_entries(a, b)
    assert not differ, f"{len(differ)} entries differ, e.g. {differ[:5]}"


def copy_run(run_dir: Path, into: Path) -> Path:
    shutil.copytree(run_dir, into, symlinks=True)
    return into


__all__ = ["assert_same_checkpoint", "checkpoint_tensors", "copy_run", "differing_entries", "inject_cmd", "last_step",
           "ledger", "losses", "metric_steps", "run_injected", "saving", "start_injected", "tiny_overrides", "wait_for"]
