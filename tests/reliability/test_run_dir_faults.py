"""A run directory that cannot be written, or that vanishes, ends the command with one line naming the path and
the cause, no traceback. We are root here, and root ignores file modes (chmod 0o555 stops nothing), so the faults
are ones that stop root too: a read-only bind mount (EROFS) and an immutable directory (chattr +i, EPERM)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..train.conftest import run_cli
from .conftest import start_injected, tiny_overrides


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@contextmanager
def read_only(directory: Path):
    """`directory` as a read-only bind mount of itself (skips where mounting is not allowed)."""
    done = _run(["mount", "--bind", str(directory), str(directory)])
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {done.stderr.strip()}")
    try:
        remount = _run(["mount", "-o", "remount,ro,bind", str(directory)])
        assert remount.returncode == 0, remount.stderr
        yield "a read-only filesystem"
    finally:
        _run(["umount", "-l", str(directory)])


@contextmanager
def immutable(directory: Path):
    """`directory` with the immutable attribute: nothing can be created in it, by root either."""
    done = _run(["chattr", "+i", str(directory)])
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    try:
        yield "operation not permitted"
    finally:
        _run(["chattr", "-i", str(directory)])


FAULTS = {"read_only_mount": read_only, "immutable": immutable}


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("isaac-train:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_unwritable_output_dir_is_refused_before_anything_starts(train_shards, tmp_path, fault):
    """Checked with the other paths, before Hydra writes its own log into run.output_dir: exit 2."""
    parent = tmp_path / "parent"
    parent.mkdir()
    with FAULTS[fault](parent) as cause:
        done = run_cli(tiny_overrides(train_shards, parent / "run", "train.max_steps=3"))
    line = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr[-3000:]
    assert line.startswith(f"isaac-train: run.output_dir: cannot write in {parent / 'run'}: {cause}"), line
    assert not (parent / "run").exists()


@pytest.mark.parametrize("fault,when", [("read_only_mount", "start"), ("immutable", "first save")])
def test_unwritable_checkpoints_folder_ends_in_one_line(train_shards, tmp_path, fault, when):
    """At start (resume looks there first) or, with run.resume=false, at the first save: exit 1, the folder
    named, nothing left behind."""
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    checkpoints.mkdir(parents=True)
    extra = ["run.resume=false"] if when == "first save" else []
    with FAULTS[fault](checkpoints) as cause:
        done = run_cli(tiny_overrides(train_shards, run, "train.max_steps=3", "train.save_every=2", *extra))
    line = _one_line(done.stderr)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"cannot write in {checkpoints}: {cause}" in line, line
    if when == "first save":
        assert line.startswith("isaac-train: checkpoint step_0000002 not written"), line
    assert not list(checkpoints.iterdir())


@pytest.mark.parametrize("first_write", ["save", "metrics"])
def test_run_dir_deleted_during_training_ends_in_one_line(train_shards, tmp_path, first_write):
    """The run directory removed after the first checkpoint: the next write says so in one line, exit 1, and the
    run directory is not made again. `save`: no metrics line is due before the next save, which names the run
    directory (mkdir parents=True used to make a new, empty one for its checkpoint); `metrics`: the metrics line
    of the next step meets it first and names its file."""
    run = tmp_path / "run"
    log_every = 1000 if first_write == "save" else 1
    proc = start_injected(tiny_overrides(train_shards, run, "train.max_steps=40", "train.save_every=4",
                                         f"train.log_every={log_every}"), faults={"FAULT_SLOW_STEP": "0.2"})
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "step_0000004" / "COMPLETE").is_file():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        while run.exists():  # the trainer may add a file while the tree goes
            shutil.rmtree(run, ignore_errors=True)
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    line = _one_line(stderr)
    assert proc.returncode == 1, stderr[-3000:]
    if first_write == "save":
        assert line.startswith(f"isaac-train: checkpoint step_0000008 not written (rank 0: FileNotFoundError): the "
                               f"run directory {run} does not exist any more"), line
    else:
        assert f"No such file or directory: '{run / 'metrics.jsonl'}'" in line, line
    assert not run.exists()
