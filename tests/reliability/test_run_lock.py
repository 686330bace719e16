"""One live writer per run directory (checkpoint/run_lock.py), with real processes: a live holder refuses a second
job naming it, a dead one (kill -9) is taken over at once, a holder on another machine is judged by its heartbeat,
two jobs racing for a stale lock end with one holder, and a holder that was taken over stops before it writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isaac_train.checkpoint.run_lock import RunDirInUse, RunDirTakenOver, RunLock

HOLD = ("import sys, time; from isaac_train.checkpoint.run_lock import RunLock; "
        "RunLock(sys.argv[1], heartbeat_s=0.2).acquire(); print('held', flush=True); time.sleep(600)")


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _generations(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / ".writer").iterdir() if p.name.startswith("lock."))


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunDirInUse) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {proc.pid}" in message and os.uname().nodename in message and "since 20" in message
        assert "run.output_dir" in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = RunLock(tmp_path).acquire()  # the holder's pid is dead: taken over at once, no waiting
    assert _generations(tmp_path) == ["lock.00000002"]
    lock.release()
    assert _generations(tmp_path) == []


def test_a_reused_pid_is_not_a_live_holder(tmp_path):
    """The holder's pid now belongs to another process (this one): its start time tells them apart."""
    lock = RunLock(tmp_path).acquire()
    record = json.loads((tmp_path / ".writer" / "lock.00000001").read_text())
    lock._stop.set()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record["pid"], record["pid_start"] = other.pid, "1"  # the pid lives, but started at another time
        (tmp_path / ".writer" / "lock.00000001").write_text(json.dumps(record))
        RunLock(tmp_path).acquire().release()
    finally:
        other.kill()


def _foreign(run_dir: Path, beating: bool) -> multiprocessing.Process | None:
    """A lock held on 'another machine': a record whose machine id is not ours, beating or not."""
    (run_dir / ".writer").mkdir(parents=True)
    path = run_dir / ".writer" / "lock.00000001"
    record = {"host": "node-17", "pid": 1, "pid_start": "5", "machine": "elsewhere", "job": "SLURM_JOB_ID=9",
              "since": time.time() - 3600, "beat": 0, "beat_time": 0.0, "token": "t"}
    path.write_text(json.dumps(record))
    if not beating:
        return None

    def beat() -> None:
        for n in range(1, 400):
            time.sleep(0.1)
            tmp = path.with_name(".beat")
            tmp.write_text(json.dumps({**record, "beat": n}))
            os.replace(tmp, path)

    proc = multiprocessing.get_context("fork").Process(target=beat, daemon=True)
    proc.start()
    return proc


def test_a_holder_on_another_machine_is_judged_by_its_heartbeat(tmp_path):
    beating = _foreign(tmp_path / "a", beating=True)
    try:
        with pytest.raises(RunDirInUse, match="host node-17, pid 1, job SLURM_JOB_ID=9"):
            RunLock(tmp_path / "a", stale_s=2).acquire()
    finally:
        beating.kill()
    _foreign(tmp_path / "b", beating=False)
    start = time.monotonic()
    lock = RunLock(tmp_path / "b", stale_s=2).acquire()  # no heartbeat for stale_s: gone
    assert 2 <= time.monotonic() - start < 10
    assert _generations(tmp_path / "b") == ["lock.00000002"]
    lock.release()


def _race(run_dir: str, results) -> None:
    try:
        RunLock(run_dir, stale_s=1).acquire()
        results.put("held")
        time.sleep(3)
    except RunDirInUse:
        results.put("refused")


def test_of_jobs_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    _foreign(tmp_path, beating=False)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    racers = [ctx.Process(target=_race, args=(str(tmp_path), results)) for _ in range(4)]
    for p in racers:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in racers)
    for p in racers:
        p.join()
    assert outcomes == ["held", "refused", "refused", "refused"]


def test_a_holder_that_was_taken_over_stops_before_writing(tmp_path):
    first = RunLock(tmp_path, heartbeat_s=3600).acquire()
    record = json.loads((tmp_path / ".writer" / "lock.00000001").read_text())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".writer" / "lock.00000001").write_text(json.dumps({**record, "pid": int(gone.stdout)}))
    second = RunLock(tmp_path).acquire()  # first looked dead (frozen past the stale time, say)
    with pytest.raises(RunDirTakenOver, match="taken over by another run"):
        first.check()
    first.beat()  # its heartbeat no longer writes anything
    assert _generations(tmp_path) == ["lock.00000002"]
    first.release()
    assert _generations(tmp_path) == ["lock.00000002"], "the old holder must not remove the new holder's lock"
    second.release()
