"""Checkpoints: complete or absent, never half-written; `latest` only ever names a complete one.

Layout of `run.output_dir/checkpoints/`:

    step_0000100/
        model.safetensors        format "full" (single, ddp): every tensor of the model (our names), fp32
        optimizer.pt               and the optimizer state keyed by parameter name
        dcp/                     format "dcp" (fsdp): sharded model + optimizer, loadable by any world size
        deepspeed/               format "deepspeed" (zero1-3): DeepSpeed's files
        scheduler.pt             the learning-rate schedule
        trainer_state.json       step, tokens, samples, the model/data identity, strategy, format, world size
        rank_00000.pt            per-rank state: RNG (python, numpy, torch, cuda) and data loader
        COMPLETE                 written last
    latest -> step_0000100       a symlink, replaced atomically after the directory is complete

A checkpoint is written to `.tmp_step_0000100` and renamed into place; only then does `latest` move; only
then are checkpoints beyond the last `keep_last` deleted.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_DIR = re.compile(r"^step_(\d{7,})$")
COMPLETE = "COMPLETE"


@dataclass
class TrainState:
    """Progress counters saved with every checkpoint."""

    step: int = 0
    tokens: int = 0
    label_tokens: int = 0
    samples: int = 0
    images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Save, find and load checkpoints of one run."""

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:07d}"

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Path | None:
        link = self.root / "latest"
        if link.is_symlink() or link.exists():
            target = link.resolve()
            if (target / COMPLETE).is_file():
                return target
        done = self.complete()  # a crash between rename and relink: the newest complete one
        return done[-1] if done else None

    def save(
        self, step: int, write: Callable[[Path], None], train_state: TrainState, identity: dict[str, Any],
        rank_state: dict[str, Any], rank: int = 0, barrier: Any = None, meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint `step` atomically. Every rank calls this: `write(dir)` writes the model and optimizer
        in the strategy's format (collective for sharded strategies), `rank_state` is this rank's RNG and data
        position; rank 0 writes trainer_state.json (with `meta`: strategy, format, world size) and commits."""
        barrier = barrier or (lambda: None)
        final = self.step_dir(step)
        tmp = self.root / f".tmp_{final.name}"
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        torch.save(rank_state, tmp / f"rank_{rank:05d}.pt")
        write(tmp)
        barrier()
        if rank == 0:
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"train_state": asdict(train_state), "identity": identity, **(meta or {})}, indent=1, default=str))
            (tmp / COMPLETE).write_text("ok\n")
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            link_tmp = self.root / ".latest_tmp"
            if link_tmp.is_symlink() or link_tmp.exists():
                link_tmp.unlink()
            link_tmp.symlink_to(final.name)
            os.replace(link_tmp, self.root / "latest")
            _fsync_dir(self.root)
            for old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    @staticmethod
    def meta(path: Path) -> dict[str, Any]:
        """trainer_state.json of a checkpoint: train_state (a TrainState), identity, strategy, format, world_size."""
        meta = json.loads((path / "trainer_state.json").read_text())
        meta["train_state"] = TrainState(**meta["train_state"])
        return meta

    @staticmethod
    def rank_states(path: Path) -> list[dict[str, Any]]:
        """Every rank's saved state (RNG, data position), in rank order."""
        files = sorted(path.glob("rank_*.pt"))
        return [torch.load(f, weights_only=False) for f in files]

    @staticmethod
    def rank_state(path: Path, rank: int) -> dict[str, Any]:
        return torch.load(path / f"rank_{rank:05d}.pt", weights_only=False)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
