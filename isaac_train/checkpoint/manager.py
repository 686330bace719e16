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
above all) removes the partial directory on every rank and raises CheckpointWriteError saying what happened;
RunDirError when the folder cannot be written (read-only, immutable, permission) or the run directory is gone.

Reading back: `latest()` is the newest checkpoint that verifies (integrity.verify: every file listed, what the
format needs present, sizes and checksums); each newer one that does not, a missing COMPLETE marker included, is
logged with the reason and skipped. At resume `resume_point` does the same on every rank, each digesting its
share, sets aside what does not verify and repairs `latest`. Nothing read from a checkpoint can run code
(safe_load.py).
"""

from __future__ import annotations

import errno
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

from ..dist_env import DistEnv
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


class RunDirError(RuntimeError):
    """The run directory (or its checkpoints folder) cannot be written, or vanished while the run went on."""


def check_writable(directory: Path, setting: str = "run.output_dir") -> None:
    """Create `directory` if needed and a file in it (removed again): raise RunDirError naming the directory and
    the cause when that fails (integrity.write_problem)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(integrity.describe_unwritable(err, directory, setting)) from err
    err = integrity.write_problem(directory)
    if err is not None:
        raise RunDirError(integrity.describe_unwritable(err, directory, setting)) from err


class CheckpointManager:
    """Save, find and load checkpoints of one run."""

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self._verified: dict[tuple[Path, bool], str | None] = {}

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:07d}"

    def candidates(self) -> list[Path]:
        """Every checkpoint directory (`step_N`, with or without its COMPLETE marker), oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if STEP_DIR.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def complete(self) -> list[Path]:
        """Checkpoints with a COMPLETE marker (not yet verified), oldest first."""
        return [p for p in self.candidates() if (p / COMPLETE).is_file()]

    def verify(self, path: Path, checksums: bool = True) -> str | None:
        """Why checkpoint `path` cannot be used (None: it verifies); remembered per manager."""
        key = (path, checksums)
        if key not in self._verified:
            self._verified[key] = integrity.verify(path, checksums)
        return self._verified[key]

    def latest(self, checksums: bool = True) -> Path | None:
        """The newest checkpoint that verifies; newer ones that do not (a missing marker included) are logged with
        the reason."""
        for path in reversed(self.candidates()):
            reason = self.verify(path, checksums)
            if reason is None:
                return path
            logger.warning("skipping checkpoint %s: %s", path, reason)
        return None

    def skipped(self, checksums: bool = True) -> list[tuple[Path, str]]:
        """Checkpoints newer than latest() that do not verify (a missing marker included), with the reasons."""
        out = []
        for path in reversed(self.candidates()):
            reason = self.verify(path, checksums)
            if reason is None:
                break
            out.append((path, reason))
        return out

    def verify_everywhere(self, path: Path, env: DistEnv) -> str | None:
        """`verify` with the reading split over ranks: rank 0 checks what is cheap (marker, manifest, the files a
        checkpoint of its format must hold, sizes), then every rank digests its share of the files (by bytes,
        `integrity.share`) and the results are gathered, so every rank returns the same verdict. Every rank calls
        this, with the same `path`."""
        structural = env.gather(self.verify(path, checksums=False) if env.is_main else None)[0]
        reason = structural
        if reason is None:
            try:
                _, mismatch = integrity.check_share(path, env.rank, env.world_size)
            except Exception as err:  # noqa: BLE001  (every rank must reach the gather below)
                mismatch = f"verification failed ({type(err).__name__}: {str(err)[:300]})"
            found = [(rank, m) for rank, m in enumerate(env.gather(mismatch)) if m is not None]
            if found:
                rank, reason = found[0]
                reason += f" (found by rank {rank})" if env.world_size > 1 else ""
        self._verified[(path, False)] = structural
        self._verified[(path, True)] = reason
        return reason

    def resume_point(self, env: DistEnv) -> Path | None:
        """The checkpoint to resume from, the same on every rank (every rank calls this). Rank 0 refuses a
        checkpoints folder it cannot write (RunDirError, now rather than at the first save) and removes what an
        interrupted save left; then the checkpoints are verified newest first (`verify_everywhere`), each one that
        does not verify (a missing COMPLETE marker included) is logged with the reason and set aside as
        `step_N.rejected`, and `latest` is made to name the one chosen (repaired when it is not our symlink)."""
        names, problem = None, None
        if env.is_main:
            try:  # found now, not after the steps up to the first save
                check_writable(self.root)
            except RunDirError as err:
                problem = str(err)
            else:
                for path in self.clean_stale():
                    logger.info("removed %s, left by an interrupted save", path)
                names = [str(p) for p in self.candidates()]
        names, problem = env.gather((names, problem))[0]
        if problem is not None:
            raise RunDirError(problem)
        chosen = None
        for name in reversed(names):
            path = Path(name)
            reason = self.verify_everywhere(path, env)
            if reason is None:
                chosen = path
                break
            if env.is_main:
                moved = self.set_aside(path, reason)
                logger.warning("checkpoint %s does not verify: %s. Set aside as %s; trying an earlier one",
                               path.name, reason, moved.name)
        if env.is_main and chosen is not None:
            link = self.root / "latest"
            if not (link.is_symlink() and os.readlink(link) == chosen.name):
                self.link_latest(chosen)
        env.barrier()  # `latest` and the set-aside directories are in place before any rank reads on
        return chosen

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
        Raises CheckpointWriteError on every rank when any rank's write fails (RunDirError when it is the place:
        the folder cannot be written, or the run directory is gone)."""
        env = env or DistEnv()
        final = self.step_dir(step)
        tmp = self.root / f".tmp_{final.name}"
        error = None
        if env.is_main:
            try:  # the run directory must still be there: `parents` would quietly make a new, empty one
                self.root.mkdir(exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
            except OSError as err:
                error = err
        self._agree(env, error, tmp, final)  # every rank learns whether the directory could be made
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
        """Point `latest` at checkpoint `path`, atomically (a new symlink renamed over the old). A `latest` that is
        a directory (a copy tool that followed the link) is not ours: it is moved aside as `latest.replaced`,
        with a warning, never deleted, and the link made."""
        link, link_tmp = self.root / "latest", self.root / ".latest_tmp"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        if link.is_dir() and not link.is_symlink():
            aside = link.with_name("latest.replaced")
            n = 1
            while aside.exists() or aside.is_symlink():
                n += 1
                aside = link.with_name(f"latest.replaced{n}")
            os.replace(link, aside)
            logger.warning("%s was a directory, not the symlink isaac-train keeps (copied by a tool that followed "
                           "the link?): moved to %s (delete it if it is not needed) and %s now links to %s", link,
                           aside.name, link.name, path.name)
        link_tmp.symlink_to(path.name)
        try:
            os.replace(link_tmp, link)
        except OSError:
            link_tmp.unlink(missing_ok=True)
            raise
        integrity.fsync_dir(self.root)

    def retain(self) -> None:
        """Delete complete checkpoints beyond the last `keep_last`, never the newest one that verifies (sizes)."""
        protected = self.latest(checksums=False)
        for old in self.complete()[: -self.keep_last]:
            if old != protected:  # renamed first: an interrupted deletion leaves `.old_*`, never half a checkpoint
                doomed = self.root / f".old_{old.name}"
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def _place_problem(self, error: BaseException | None) -> str | None:
        """What is wrong with the place a save writes to (unwritable, or the run directory gone), or None."""
        cause = integrity.unwritable(error)
        if cause is None:
            return None
        if cause.errno != errno.ENOENT:
            return integrity.describe_unwritable(cause, Path(cause.filename).parent if cause.filename else self.root)
        run_dir = self.root.parent
        if run_dir.is_dir():
            return None  # a missing file, not a missing directory: reported as it is
        return (f"the run directory {run_dir} does not exist any more (deleted, moved or unmounted while the run "
                "went on). Restore it, or set run.output_dir to another directory, and run the same command again")

    def _agree(self, env: DistEnv, error: BaseException | None, tmp: Path, final: Path) -> None:
        """Every rank learns whether any rank failed; then the partial directory goes and all raise."""
        errors = env.gather(None if error is None else (type(error).__name__, str(error)[:2000],
                                                        integrity.is_disk_full(error), self._place_problem(error)))
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
        rank, (kind, text, _, place) = failed[0]
        previous = self.latest(checksums=False)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        if place is not None:  # nothing earlier stands when the whole run directory went
            kept = f" {kept.capitalize()}." if self.root.parent.is_dir() else ""
            raise RunDirError(f"checkpoint {final.name} not written (rank {rank}: {kind}): {place}.{kept}") from error
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
