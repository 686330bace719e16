"""Running the trainer in 1 or 2 processes for the distributed tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from isaac_train.data.shards import ShardWriter

from ..data_helpers import encode_image
from ..train.conftest import tiny_overrides

# Where DeepSpeed caches the ops it builds on first use (about 26 s once); shared by every test run here.
EXTENSIONS = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS)}


def run_train(overrides: list[str], nproc: int = 0, timeout: float = 540, check: bool = True
              ) -> subprocess.CompletedProcess:
    """Under torchrun with `nproc` processes, or (nproc=0) in this process as `isaac-train` would run it (one
    thread, as OMP_NUM_THREADS=1 gives the subprocesses; a fault that isaac-train reports in one line comes back
    as exit 1 with the message on stderr; DeepSpeed strategies in a subprocess of their own, since DeepSpeed keeps
    process-wide state); `check`: must exit 0."""
    if not nproc and not any(o.startswith("strategy=zero") for o in overrides):  # DeepSpeed keeps global state
        return _run_here(overrides, check)
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "isaac_train.train", *overrides]
    else:
        cmd = [sys.executable, "-m", "isaac_train.train", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert out.returncode == 0 or not check, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-5000:]}"
    return out


def _run_here(overrides: list[str], check: bool) -> subprocess.CompletedProcess:
    """One process in this one, instead of paying a fresh interpreter's imports (several seconds) per run."""
    import torch
    import torch.distributed as dist

    from isaac_train.train.cli import compose_config, run_faults
    from isaac_train.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    code, message = 0, ""
    try:
        train(compose_config(overrides))
    except run_faults() as err:
        code, message = 1, f"isaac-train: {err}"
    finally:
        torch.set_num_threads(threads)
        if dist.is_initialized():  # the private one-rank group of fsdp / zero* in one process
            dist.destroy_process_group()
    assert code == 0 or not check, f"exit {code}\n{message}"
    return subprocess.CompletedProcess(["isaac-train", *overrides], code, "", message)


def single_overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    """One process reading what 2 ranks x 1 worker read: 2 workers, 2 micro-batches per step."""
    return tiny_overrides(shards, out, "data.num_workers=2", "train.grad_accum=2", *extra)


def two_rank_overrides(shards: Path, out: Path, strategy: str, *extra: str) -> list[str]:
    return tiny_overrides(shards, out, f"strategy={strategy}", "data.num_workers=1", *extra)


def keep_only_checkpoint(run_dir: Path, step: int, into: Path) -> Path:
    """Copy a run directory keeping checkpoint `step` only (and no metrics), as if it had stopped there."""
    shutil.copytree(run_dir, into, symlinks=True)
    checkpoints = into / "checkpoints"
    for path in checkpoints.iterdir():
        if path.name != f"step_{step:07d}":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    (into / "metrics.jsonl").unlink()
    return into


def make_split_modality_shards(out: Path, n: int = 80) -> Path:
    """Even samples are text-only, odd ones carry 1-2 images. With 2 readers (reader r takes samples r, r+2, ...)
    rank 0 only ever sees text and rank 1 only images."""
    rng = np.random.default_rng(3)
    writer = ShardWriter(out, prefix="mixed", max_count=20)
    for i in range(n):
        n_images = 0 if i % 2 == 0 else int(rng.integers(1, 3))
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": f"Sample {i}: what?"}]
        answer = " ".join(rng.choice(["red", "green", "blue", "circle", "square"], int(rng.integers(2, 20))))
        sample = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}
        images = [(f"{k}.png", encode_image(int(rng.integers(16, 64)), int(rng.integers(16, 64)), i * 10 + k))
                  for k in range(n_images)]
        writer.write(f"mixed{i:06d}", sample, images)
    writer.close()
    return out
