"""Tiny training runs: the tiny model on small real shards, fast on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def tiny_overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return [
        "model=tiny", "model.attn_backend=sdpa", "model.train_vision=none", "data.demo=false",
        f"data.train_shards={shards}",
        "data.num_workers=0", "data.pack_buffer=8", "train.seq_len=256", "train.precision=fp32",
        "train.max_steps=8", "train.log_every=1", "train.eval_every=0", "train.save_every=0", "optim.lr=1e-3",
        "optim.warmup_steps=2", "logging.progress=false", "run.export=false", f"run.output_dir={out}", *extra,
    ]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a resumed run cuts it back to its checkpoint first: each step once)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def run_cli(overrides: list[str], kill_after_step: int | None = None, sig: int = signal.SIGKILL,
            timeout: float = 300) -> subprocess.CompletedProcess | int:
    """Run `python -m isaac_train.train` in a subprocess; optionally send `sig` once metrics show a step."""
    cmd = [sys.executable, "-m", "isaac_train.train", *overrides]
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    if kill_after_step is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run.output_dir=")))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and max(losses(out), default=0) >= kill_after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    return proc.wait(timeout=timeout)
