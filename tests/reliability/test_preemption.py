"""Preemption the way clusters send it, on 2 processes with DataLoader workers: SIGTERM to torchrun, or to every
process of the job (what Slurm does at the time limit), in the middle of a step and in the middle of a save.
Every time: the workers survive it, the current step finishes on both ranks, a checkpoint is committed, rank 0
records the requeue code, and the rerun of the same command ends bit-identical to a run never interrupted.
Also one process signalled as a process group, and both launch scripts (torchrun.sh exits 75; train.sbatch
forwards USR1 and requeues, with fake srun/scontrol)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from isaac_train.checkpoint.manager import CheckpointManager
from isaac_train.train.loop import REQUEUE_EXIT_CODE

from ..distributed.helpers import _env, _free_port, two_rank_overrides
from .conftest import (
    ROOT,
    assert_same_checkpoint,
    last_step,
    ledger,
    losses,
    metric_steps,
    run_injected,
    saving,
    start_injected,
    tiny_overrides,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)
STEPS, SAVE_EVERY = 10, 4
SLOW = {"step": {"FAULT_SLOW_STEP": "0.25"}, "save": {"FAULT_SLOW_SAVE": "1.5"}}


def _args(shards, out):
    return two_rank_overrides(shards, out, "ddp", f"train.max_steps={STEPS}", f"train.save_every={SAVE_EVERY}",
                              "train.keep_last=5", "logging.ledger=true")


@pytest.fixture(scope="module")
def straight(train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    done = run_injected(_args(train_shards, out), nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _signal(proc: subprocess.Popen, target: str, sig: int = signal.SIGTERM) -> None:
    if target == "torchrun":
        os.kill(proc.pid, sig)
    else:  # every process of the job: torchrun, both ranks, their DataLoader workers
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 5, [p.name() for p in tree]
        for p in tree:
            p.send_signal(sig)


def _same_as_straight(out, straight) -> None:
    final = out / "checkpoints" / f"step_{STEPS:07d}"
    assert_same_checkpoint(final, straight / "checkpoints" / final.name)
    assert losses(out) == losses(straight)
    assert ledger(out) == ledger(straight)
    assert metric_steps(out) == list(range(1, STEPS + 1))


# Each target and each moment once (the other two pairings take the same paths and cost a 2-process run each).
@pytest.mark.parametrize(("target", "moment"), [("torchrun", "save"), ("every_process", "step")])
def test_sigterm_two_processes_checkpoints_and_resumes_exactly(train_shards, tmp_path, straight, target, moment):
    out, exit_file = tmp_path / "run", tmp_path / "exit.json"
    proc = start_injected(_args(train_shards, out), nproc=2,
                          faults={**SLOW[moment], "ISAAC_EXIT_FILE": str(exit_file)})
    wait_for((lambda: last_step(out) >= 2) if moment == "step" else (lambda: saving(out)), proc)
    _signal(proc, target)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]  # torchrun's own code after a signal; the ranks' is in the file
    record = json.loads(exit_file.read_text())
    assert record["exit_code"] == REQUEUE_EXIT_CODE, stderr[-3000:]
    assert "killed by signal" not in stderr and "exited unexpectedly" not in stderr
    step = record["step"]
    if moment == "save":
        assert step == SAVE_EVERY, "the save in progress was committed, and no second one followed"
    assert 2 <= step < STEPS
    assert CheckpointManager(out / "checkpoints").latest().name == f"step_{step:07d}" == record["checkpoint"][-12:]
    rerun = run_injected(_args(train_shards, out), nproc=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _same_as_straight(out, straight)


def test_sigterm_to_the_process_group_of_one_process(train_shards, tmp_path):
    """The DataLoader workers get the signal too (start_new_session: the job is its own process group)."""
    args = tiny_overrides(train_shards, tmp_path / "run", "data.num_workers=2", "train.max_steps=40")
    proc = start_injected(args, faults=SLOW["step"])
    wait_for(lambda: last_step(tmp_path / "run") >= 2, proc)
    assert len(psutil.Process(proc.pid).children()) == 2, "two DataLoader workers share its process group"
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    latest = CheckpointManager(tmp_path / "run" / "checkpoints").latest()
    assert latest is not None and 2 <= int(latest.name.split("_")[1]) < 40


def _script(script: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**_env(), "PYTHON": sys.executable, **env},
                            start_new_session=True)


def test_torchrun_script_exits_75_on_sigterm_and_resumes(train_shards, tmp_path, straight):
    out = tmp_path / "run"
    proc = _script("launch/torchrun.sh", _args(train_shards, out), {"NPROC": "2", "OMP_NUM_THREADS": "1"})
    wait_for(lambda: last_step(out) >= 1, proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    assert "exit 75 = requeue" in stderr
    again = _script("launch/torchrun.sh", _args(train_shards, out), {"NPROC": "2", "OMP_NUM_THREADS": "1"})
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    _same_as_straight(out, straight)


def test_sbatch_forwards_usr1_and_requeues(train_shards, tmp_path):
    """Slurm's warning before the time limit (USR1 to the batch script) with a stand-in srun (runs its command
    here) and scontrol (records what it is asked): checkpoint committed, `scontrol requeue` called, exit 0."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    calls = tmp_path / "scontrol.log"
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = show ] && echo 127.0.0.1\nexit 0\n')
    for tool in ("srun", "scontrol"):
        (fake / tool).chmod(0o755)
    out = tmp_path / "run"
    env = {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "2",
           "MASTER_PORT": str(_free_port()), "SLURM_SUBMIT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PATH": f"{fake}:{os.environ['PATH']}"}
    args = two_rank_overrides(train_shards, out, "ddp", "train.max_steps=40", "logging.ledger=true")
    proc = _script("launch/slurm/train.sbatch", args, env)
    wait_for(lambda: last_step(out) >= 1, proc)
    os.kill(proc.pid, signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "requeue 4242" in calls.read_text() and "requeueing job 4242" in stdout
    latest = CheckpointManager(out / "checkpoints").latest()
    assert latest is not None and int(latest.name.split("_")[1]) < 40
    assert not (tmp_path / ".isaac-exit-4242").exists()


def _run_tree(proc: subprocess.Popen, at_least: int) -> list[psutil.Process]:
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= at_least, [p.name() for p in tree]
    return tree


def _alive(tree: list[psutil.Process]) -> list[int]:
    out = []
    for p in tree:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_kill_9_of_torchruns_process_group_leaves_no_rank_behind_and_resumes_exactly(train_shards, tmp_path,
                                                                                      straight):
    """A container runtime, a scheduler or Ctrl-\\ kills the launcher's process group: torchrun starts every rank
    in a session of its own, so only the ranks' parent-death signal (and their watch of the parent) ends them and
    their DataLoader workers. The restart takes over the dead job's run directory and ends bit-identical."""
    out = tmp_path / "run"
    proc = start_injected(_args(train_shards, out), nproc=2, faults=SLOW["step"])
    wait_for(lambda: last_step(out) >= SAVE_EVERY + 1, proc)
    tree = _run_tree(proc, at_least=5)  # torchrun, 2 ranks, a DataLoader worker each
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while _alive(tree) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(tree), f"processes of the killed job still run: {_alive(tree)}"
    reached = last_step(out)
    time.sleep(2)
    assert last_step(out) == reached, "the run went on training after its launcher was killed"
    rerun = run_injected(_args(train_shards, out), nproc=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "took over from a writer that is gone" in rerun.stdout + rerun.stderr
    _same_as_straight(out, straight)


def test_a_second_job_on_a_live_run_directory_is_refused_naming_the_holder(train_shards, tmp_path):
    out = tmp_path / "run"
    args = tiny_overrides(train_shards, out, "train.max_steps=200")
    first = start_injected(args, faults=SLOW["step"])
    try:
        wait_for(lambda: last_step(out) >= 1, first)
        second = run_injected(args, timeout=120)
        assert second.returncode == 1, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert f"run.output_dir={out} is in use by another live run" in line and f"pid {first.pid}" in line, line
        assert first.poll() is None, "the holder goes on"
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == REQUEUE_EXIT_CODE
    assert not list((out / ".writer").glob("lock.*")), "the lock is released when the holder ends"


def _catches_sigterm(p: psutil.Process) -> bool:
    try:
        status = open(f"/proc/{p.pid}/status").read()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _is_rank(p: psutil.Process) -> bool:
    try:
        command = " ".join(p.cmdline())
    except psutil.Error:  # a short-lived helper process (nvidia-smi probe, a zombie)
        return False
    trainer = "tests.reliability.inject" in command or "-m isaac_train.train" in command
    return trainer and "torch.distributed.run" not in command


def _signal_during_start_up(proc: subprocess.Popen, ranks: int, send) -> None:
    """Once every rank has its stop handlers (SigCgt in /proc: the trainer's first lines ran) and before any step."""
    deadline = time.time() + 60
    while True:
        ready = [p for p in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
                 if _is_rank(p) and _catches_sigterm(p)]
        if len(ready) >= ranks:
            break
        assert time.time() < deadline and proc.poll() is None, "the ranks never installed their stop handlers"
        time.sleep(0.01)
    send()


@pytest.mark.parametrize("target", ["torchrun", "torchrun.sh", "one process"])
def test_a_signal_during_start_up_exits_75(train_shards, tmp_path, target):
    out, exit_file = tmp_path / "run", tmp_path / "exit.json"
    if target == "one process":
        proc = start_injected(tiny_overrides(train_shards, out), faults={"ISAAC_EXIT_FILE": str(exit_file)})
        _signal_during_start_up(proc, 1, lambda: os.killpg(proc.pid, signal.SIGTERM))
    elif target == "torchrun":
        proc = start_injected(_args(train_shards, out), nproc=2, faults={"ISAAC_EXIT_FILE": str(exit_file)})
        _signal_during_start_up(proc, 2, lambda: os.kill(proc.pid, signal.SIGTERM))
    else:
        proc = _script("launch/torchrun.sh", _args(train_shards, out), {"NPROC": "2", "OMP_NUM_THREADS": "1"})
        _signal_during_start_up(proc, 2, lambda: os.kill(proc.pid, signal.SIGTERM))
    _, stderr = proc.communicate(timeout=120)
    assert last_step(out) == 0, "the signal was meant to land before the first step"
    assert "during start-up" in stderr, stderr[-3000:]
    if target == "torchrun":
        assert proc.returncode == 1  # torchrun's own code; the ranks' is in the file
        assert json.loads(exit_file.read_text())["exit_code"] == REQUEUE_EXIT_CODE
    else:
        assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    assert CheckpointManager(out / "checkpoints").latest() is None
