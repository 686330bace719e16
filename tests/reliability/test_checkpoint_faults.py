"""A damaged newest checkpoint: every restart resumes from the newest one that verifies, says which it skipped
and why, sets the damaged one aside, and ends bit-identical to a run that was never damaged. Planted pickle
payloads are refused without running. A full disk (a real tmpfs) is reported as such."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from isaac_train.checkpoint.integrity import verify
from isaac_train.checkpoint.manager import CheckpointManager, CheckpointWriteError
from isaac_train.checkpoint.safe_load import UnsafeCheckpointError
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from .conftest import assert_same_checkpoint, copy_run, ledger, losses, metric_steps, tiny_overrides

STEPS = 6


def _args(shards, out, *extra):
    return tiny_overrides(shards, out, f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=5",
                          "peft=lora", "model.train_decoder=lora", "peft.dropout=0.1", "logging.ledger=true", *extra)


@pytest.fixture(scope="module")
def straight(train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(compose_config(_args(train_shards, out)))
    return out


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_manifest(directory: Path, edit) -> None:
    """Rewrite manifest.json with `edit(files)` applied: the entries left stay exactly as the save wrote them."""
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest["files"])
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _unlist(directory: Path, name: str) -> None:
    """Remove a file and its manifest entry: the manifest stays consistent with what is on disk."""
    (directory / name).unlink()
    _edit_manifest(directory, lambda files: files.pop(name))


def _flip_and_empty_manifest(directory: Path) -> None:
    _flip(directory / "model.safetensors", -1000)
    _edit_manifest(directory, dict.clear)


DAMAGE = {
    "model_truncated": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors has"),
    "model_byte_flipped": (lambda d: _flip(d / "model.safetensors", -1000), "model.safetensors does not match"),
    "optimizer_byte_flipped": (lambda d: _flip(d / "optimizer.pt", 5000), "optimizer.pt does not match"),
    "trainer_state_emptied": (lambda d: (d / "trainer_state.json").write_text(""), "trainer_state.json has"),
    "optimizer_missing": (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "rank_state_truncated": (lambda d: _truncate(d / "rank_00000.pt"), "rank_00000.pt has"),
    "manifest_missing": (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    # manifests that leave something out (the entries they keep are the save's own)
    "manifest_lists_no_files": (_flip_and_empty_manifest, "manifest.json lists no files"),
    "optimizer_unlisted_and_removed": (lambda d: _unlist(d, "optimizer.pt"),
                                       "optimizer.pt is not in manifest.json, but a full checkpoint of 1 rank"),
    "rank_state_unlisted_and_removed": (lambda d: _unlist(d, "rank_00000.pt"), "rank_00000.pt is not in manifest"),
    "trainer_state_unlisted_and_removed": (lambda d: _unlist(d, "trainer_state.json"),
                                           "trainer_state.json is not in manifest.json"),
    "file_present_but_unlisted": (lambda d: (d / "notes.txt").write_text("added later\n"),
                                  "notes.txt is in the directory but not in manifest.json"),
    "complete_marker_deleted": (lambda d: (d / "COMPLETE").unlink(), "no COMPLETE marker"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(train_shards, straight, tmp_path, damage,
                                                                     caplog):
    run = copy_run(straight, tmp_path / "run")
    newest = run / "checkpoints" / f"step_{STEPS:07d}"
    harm, reason = DAMAGE[damage]
    harm(newest)
    with caplog.at_level(logging.INFO):
        result = train(compose_config(_args(train_shards, run, "train.keep_last=1")))
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and newest.name in r.getMessage()]
    assert any(reason in m for m in warned), warned
    assert any(f"resumed from {run / 'checkpoints' / f'step_{STEPS - 2:07d}'}" in r.getMessage()
               for r in caplog.records)
    rejected = run / "checkpoints" / f"{newest.name}.rejected"
    assert reason in (rejected / "REJECTED.txt").read_text()
    assert (run / "checkpoints" / "latest").resolve() == newest.resolve()
    # steps 5-6 were trained again from step 4, exactly as the first time (weights, optimizer, schedule, losses,
    # samples); metrics hold every step once; retention (keep_last=1 now) kept the new step 6 only
    assert_same_checkpoint(newest, straight / "checkpoints" / newest.name)
    assert losses(run) == losses(straight)
    assert ledger(run) == ledger(straight)
    assert metric_steps(run) == list(range(1, STEPS + 1))
    manager = CheckpointManager(run / "checkpoints")
    assert [p.name for p in manager.complete()] == [newest.name] and verify(newest) is None
    assert result.state.step == STEPS


def test_retention_never_deletes_the_newest_checkpoint_that_verifies(train_shards, straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    checkpoints = run / "checkpoints"
    _truncate(checkpoints / "step_0000006" / "optimizer.pt")  # damaged after it was written; not set aside yet
    manager = CheckpointManager(checkpoints, keep_last=1)
    manager.retain()
    assert [p.name for p in manager.complete()] == ["step_0000004", "step_0000006"]
    assert manager.latest().name == "step_0000004"


def test_latest_that_is_a_directory_is_repaired(train_shards, straight, tmp_path, caplog):
    """A copy tool that followed the link left `latest` as a real directory: the next start moves it aside once
    (warned, never deleted) and links `latest` again; no save warns after that and no `.latest_tmp` is left."""
    run = copy_run(straight, tmp_path / "run")
    checkpoints = run / "checkpoints"
    (checkpoints / "latest").unlink()
    shutil.copytree(checkpoints / f"step_{STEPS:07d}", checkpoints / "latest")
    with caplog.at_level(logging.WARNING):
        train(compose_config(_args(train_shards, run, f"train.max_steps={STEPS + 4}")))
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("Is a directory" in m or "updating `latest`" in m for m in warned), warned
    assert sum("was a directory, not the symlink" in m for m in warned) == 1, warned
    latest = checkpoints / "latest"
    assert latest.is_symlink() and os.readlink(latest) == f"step_{STEPS + 4:07d}"
    assert not (checkpoints / ".latest_tmp").exists() and not (checkpoints / ".latest_tmp").is_symlink()
    assert verify(checkpoints / "latest.replaced") is None  # the copy, moved aside whole


def test_export_reader_verifies_with_the_trainers_rules(straight, tmp_path, caplog):
    """isaac-export / isaac-eval pick checkpoints with the same rules: a missing COMPLETE marker and a manifest
    that lists no files are both logged and passed over, and a step directory given by name is refused."""
    from isaac_train.trained import resolve_checkpoint

    run = copy_run(straight, tmp_path / "run")
    newest, older = (run / "checkpoints" / f"step_{step:07d}" for step in (STEPS, STEPS - 2))
    (newest / "COMPLETE").unlink()
    _flip_and_empty_manifest(older)
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(run) == (run / "checkpoints" / f"step_{STEPS - 4:07d}").resolve()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(newest.name in m and "no COMPLETE marker" in m for m in warned), warned
    assert any(older.name in m and "lists no files" in m for m in warned), warned
    with pytest.raises(ValueError, match="manifest.json lists no files"):
        resolve_checkpoint(older)


def test_world_size_past_the_manifest_is_refused(straight, tmp_path):
    """A trainer_state.json claiming 10^9 ranks, with the manifest rewritten to match: refused at once, naming
    the first rank state that is not there (not by listing 10^9 names)."""
    from isaac_train.checkpoint import integrity

    run = copy_run(straight, tmp_path / "run")
    newest = run / "checkpoints" / f"step_{STEPS:07d}"
    state = json.loads((newest / "trainer_state.json").read_text())
    state["world_size"] = 10**9
    (newest / "trainer_state.json").write_text(json.dumps(state))
    integrity.write_manifest(newest, integrity.digest_share(newest, 0, 1))
    reason = verify(newest)
    assert reason.startswith("rank_00001.pt") and "of 1000000000 ranks" in reason, reason


def test_every_checkpoint_damaged_starts_over(train_shards, straight, tmp_path, caplog):
    run = copy_run(straight, tmp_path / "run")
    for step in (2, 4, 6):
        _flip(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors", 77)
    with caplog.at_level(logging.WARNING):
        train(compose_config(_args(train_shards, run)))
    assert sum("does not verify" in r.getMessage() for r in caplog.records) == 3
    assert_same_checkpoint(run / "checkpoints" / f"step_{STEPS:07d}", straight / "checkpoints" / f"step_{STEPS:07d}")


class _Payload:
    """Unpickling this writes a marker file: proof that code from the checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("victim", ["rank_00000.pt", "scheduler.pt", "optimizer.pt"])
def test_planted_pickle_payload_is_refused_and_never_runs(train_shards, straight, tmp_path, victim):
    """The payload replaces a state file and the manifest is rewritten to match (an attacker who can write the
    directory): checksums pass, the loader itself must refuse."""
    from isaac_train.checkpoint import integrity

    run = copy_run(straight, tmp_path / "run")
    newest = run / "checkpoints" / f"step_{STEPS:07d}"
    marker = tmp_path / "marker"
    torch.save({"state": _Payload(marker)}, newest / victim)
    integrity.write_manifest(newest, integrity.digest_share(newest, 0, 1))
    assert verify(newest) is None
    with pytest.raises(UnsafeCheckpointError, match=victim):
        train(compose_config(_args(train_shards, run, f"train.max_steps={STEPS + 1}")))
    assert not marker.exists()
    torch.load(newest / victim, weights_only=False)  # the payload is real: unrestricted loading runs it
    assert marker.read_text() == "pwned"


TMPFS_BYTES = 5 << 20  # one tiny checkpoint (~3 MiB) fits, a second does not


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_reported_and_the_previous_checkpoint_kept(train_shards, tmp_path, small_disk):
    straight = tmp_path / "straight"
    train(compose_config(tiny_overrides(train_shards, straight, "train.max_steps=4", "train.save_every=2")))
    run = small_disk / "run"
    args = tiny_overrides(train_shards, run, "train.max_steps=4", "train.save_every=2", "train.keep_last=1")
    with pytest.raises(CheckpointWriteError) as failure:
        train(compose_config(args))
    message = str(failure.value)
    assert "disk is full" in message and str(run / "checkpoints") in message and "MiB are free" in message
    assert "step_0000002 is intact" in message, message
    checkpoints = run / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp")], "the partial directory is gone"
    assert [p.name for p in CheckpointManager(checkpoints).complete()] == ["step_0000002"]
    assert verify(checkpoints / "step_0000002") is None
    # space freed (the run moved to a roomy disk): the resume ends bit-identical to a run that never failed
    moved = shutil.copytree(run, tmp_path / "moved", symlinks=True)
    train(compose_config(tiny_overrides(train_shards, moved, "train.max_steps=4", "train.save_every=2",
                                        "train.keep_last=1")))
    assert_same_checkpoint(moved / "checkpoints" / "step_0000004", straight / "checkpoints" / "step_0000004")
    assert losses(moved) == losses(straight)
