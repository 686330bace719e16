"""Checkpoints: complete and verified, or not used; `latest` only ever names a complete one.

Layout of `run.output_dir/checkpoints/`:

    step_0000100/
        model.safetensors        format "full" (single, ddp): every tensor of the model (our names), fp32
        optimizer.pt               and the optimizer state keyed by parameter name
        dcp/                     format "dcp" (fsdp): sharded model + optimizer, loadable by any world size
        deepspeed/               format "deepspeed" (zero1-3): DeepSpeed's files
        scheduler.pt             the learning-rate schedule
        trainer_state.json       step, tokens, samples, skipped steps, the model/data identity, strategy, format
        rank_00000.pt            per-rank state: RNG (python, numpy, torch, cuda) and data loader
        manifest.json            every file above with its size and sha256 (integrity.py)
        COMPLETE                 written last
    latest -> step_0000100       a symlink, replaced atomically after the directory is complete

A checkpoint is written to `.tmp_step_0000100`; every rank fsyncs and digests a share of its files, rank 0
writes the manifest and the marker, fsyncs, renames the directory into place, moves `latest`, and only then
deletes checkpoints beyond the last `keep_last` (never the newest that verifies). A failed write (a full disk
above all) removes the partial directory on every rank and raises CheckpointWriteError saying what happened.

Reading back: `latest()` is the newest checkpoint that verifies (sizes and checksums); each newer one that does
not is logged with the reason and skipped. Nothing read from a checkpoint can run code (safe_load.py).
"""

from __future__ import annotations

import json
import logging
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

from ..distributed.setup import DistEnv
from . import integrity
from .integrity import COMPLETE
from .safe_load import load_state_file

logger = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d{7,})$")
_MiB = 1 << 20


@dataclass
class TrainState:
    """Progress counters saved with every checkpoint."""

    step: int = 0
    tokens: int = 0
    label_tokens: int = 0
    samples: int = 0
    images: int = 0
    skipped_steps: int = 0  # steps whose loss or gradient norm was not finite: no update was applied
    skips_in_a_row: int = 0
    eval_failures: int = 0  # periodic evaluations that raised: reported, counted, training went on
    extra: dict[str, Any] = field(default_factory=dict)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the partial directory is gone and earlier checkpoints are intact."""


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable weights-only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Save, find and load checkpoints of one run."""

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self._verified: dict[tuple[Path, bool], str | None] = {}

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:07d}"

    def complete(self) -> list[Path]:
        """Checkpoints with a COMPLETE marker (not yet verified), oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def verify(self, path: Path, checksums: bool = True) -> str | None:
        """Why checkpoint `path` cannot be used (None: it verifies); remembered per manager."""
        key = (path, checksums)
        if key not in self._verified:
            self._verified[key] = integrity.verify(path, checksums)
        return self._verified[key]

    def latest(self, checksums: bool = True) -> Path | None:
        """The newest checkpoint that verifies; newer ones that do not are logged with the reason."""
        for path in reversed(self.complete()):
            reason = self.verify(path, checksums)
            if reason is None:
                return path
            logger.warning("skipping checkpoint %s: %s", path, reason)
        return None

    def skipped(self, checksums: bool = True) -> list[tuple[Path, str]]:
        """Complete checkpoints newer than latest() that do not verify, with the reasons."""
        out = []
        for path in reversed(self.complete()):
            reason = self.verify(path, checksums)
            if reason is None:
                break
            out.append((path, reason))
        return out

    def set_aside(self, path: Path, reason: str) -> Path:
        """Rename a checkpoint that failed verification to `step_N.rejected` (kept for inspection, never used or
        deleted by retention) with the reason in REJECTED.txt."""
        target = path.with_name(path.name + ".rejected")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.rejected{n}")
        os.replace(path, target)
        (target / "REJECTED.txt").write_text(reason + "\n")
        return target

    def clean_stale(self) -> list[Path]:
        """Remove what an interrupted save left behind (`.tmp_step_*`, `.old_step_*`, `.latest_tmp`)."""
        removed = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if path.name.startswith((".tmp_step_", ".old_step_", ".latest_tmp")):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # ---- writing ---------------------------------------------------------------------------------------------

    def save(
        self, step: int, write: Callable[[Path], None], train_state: TrainState, identity: dict[str, Any],
        rank_state: dict[str, Any], env: DistEnv | None = None, meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint `step`. Every rank calls this: `write(dir)` writes the model and optimizer in the
        strategy's format (collective for sharded strategies), `rank_state` is this rank's RNG and data
        position; rank 0 writes trainer_state.json (with `meta`: strategy, format, world size) and commits.
        Raises CheckpointWriteError on every rank when any rank's write fails."""
        env = env or DistEnv()
        final = self.step_dir(step)
        tmp = self.root / f".tmp_{final.name}"
        if env.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        env.barrier()
        error = None
        try:
            torch.save(rank_state, tmp / f"rank_{env.rank:05d}.pt")
            write(tmp)
            if env.is_main:
                integrity.write_synced(tmp / "trainer_state.json", json.dumps(
                    {"train_state": asdict(train_state), "identity": identity, **(meta or {})}, indent=1,
                    default=str))
        except Exception as err:  # reported to every rank below; the caller sees CheckpointWriteError
            error = err
        self._agree(env, error, tmp, final)
        error, shares = None, {}
        try:
            shares = integrity.digest_share(tmp, env.rank, env.world_size)
        except Exception as err:
            error = err
        gathered = env.gather(shares)
        if env.is_main and error is None:
            try:
                self._commit(tmp, final, {k: v for share in gathered for k, v in share.items()})
            except Exception as err:
                error = err
        self._agree(env, error, tmp, final)
        return final

    def _commit(self, tmp: Path, final: Path, files: dict[str, dict]) -> None:
        integrity.write_manifest(tmp, files)
        integrity.write_synced(tmp / COMPLETE, "ok\n")
        reason = integrity.verify(tmp, checksums=False)
        if reason is not None:
            raise RuntimeError(f"the checkpoint does not verify right after writing it: {reason}")
        integrity.fsync_dir(tmp)
        old = self.root / f".old_{final.name}"
        if final.exists():  # the same step written again (a resumed run): move the old one away, then replace
            os.replace(final, old)
        os.replace(tmp, final)  # committed: what follows is housekeeping, and its failure does not undo the save
        self._verified = {k: v for k, v in self._verified.items() if k[0] != final}
        try:
            self.link_latest(final)
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
            self.retain()
        except OSError as err:
            logger.warning("checkpoint %s is committed, but updating `latest` or retention failed: %s", final, err)

    def link_latest(self, path: Path) -> None:
        """Point `latest` at checkpoint `path`, atomically (a new symlink renamed over the old)."""
        link_tmp = self.root / ".latest_tmp"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        link_tmp.symlink_to(path.name)
        os.replace(link_tmp, self.root / "latest")
        integrity.fsync_dir(self.root)

    def retain(self) -> None:
        """Delete complete checkpoints beyond the last `keep_last`, never the newest one that verifies (sizes)."""
        protected = self.latest(checksums=False)
        for old in self.complete()[: -self.keep_last]:
            if old != protected:  # renamed first: an interrupted deletion leaves `.old_*`, never half a checkpoint
                doomed = self.root / f".old_{old.name}"
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def _agree(self, env: DistEnv, error: BaseException | None, tmp: Path, final: Path) -> None:
        """Every rank learns whether any rank failed; then the partial directory goes and all raise."""
        errors = env.gather(None if error is None else (type(error).__name__, str(error)[:2000],
                                                        integrity.is_disk_full(error)))
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if not failed:
            return
        disk_full = any(e[2] for _, e in failed)
        written = integrity.tree_bytes(tmp) if env.is_main else 0
        free_before = integrity.free_bytes(tmp)
        disk_full = disk_full or free_before < _MiB
        env.barrier()
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        env.barrier()
        rank, (kind, text, _) = failed[0]
        previous = self.latest(checksums=False)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        if disk_full:
            needed = max(written, integrity.manifest_bytes(previous) if previous else 0)
            message = (f"checkpoint {final.name} not written: the disk is full at {self.root} (rank {rank}: {kind}). "
                       f"It needs about {needed / _MiB:.1f} MiB ({written / _MiB:.1f} MiB were written before the "
                       f"write failed); {integrity.free_bytes(self.root) / _MiB:.1f} MiB are free now that the "
                       f"partial directory is removed. {kept.capitalize()}. Free space (or lower train.keep_last, or "
                       "move run.output_dir) and run the same command again to resume.")
        else:
            message = (f"checkpoint {final.name} not written: rank {rank} failed with {kind}: {text.splitlines()[0]}. "
                       f"The partial directory is removed; {kept}.")
        raise CheckpointWriteError(message) from error

    # ---- reading ---------------------------------------------------------------------------------------------

    @staticmethod
    def meta(path: Path) -> dict[str, Any]:
        """trainer_state.json of a checkpoint: train_state (a TrainState), identity, strategy, format, world_size."""
        meta = json.loads((path / "trainer_state.json").read_text())
        meta["train_state"] = TrainState(**meta["train_state"])
        return meta

    @staticmethod
    def rank_states(path: Path) -> list[dict[str, Any]]:
        """Every rank's saved state (RNG, data position), in rank order."""
        return [load_state_file(f) for f in sorted(path.glob("rank_*.pt"))]

    @staticmethod
    def rank_state(path: Path, rank: int) -> dict[str, Any]:
        return load_state_file(path / f"rank_{rank:05d}.pt")
