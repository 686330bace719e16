"""One live writer per run directory, on local disks and on shared filesystems (NFS, Lustre).

File locks (flock / fcntl) cannot be trusted there, so the lock is a lease made of files whose creation is atomic
everywhere: `run_dir/.writer/lock.NNNNNNNN` are generations, created with link(2) (fails with EEXIST when the name
exists, on NFS too), each holding its holder (host, pid, when it started, the job) and a heartbeat that the holder
rewrites every HEARTBEAT_S. The newest generation is the lock.

A second job is refused, naming the holder, while the holder lives. The holder is stale when
- it ran on this machine (same host name, boot and pid namespace) and its process is gone (pid dead, or reused by
  another process: the start time differs): decided at once;
- it ran elsewhere and its heartbeat does not move for STALE_S (watched from here: no clock is compared).
A stale holder is taken over by creating the next generation: of two jobs that both find it stale, exactly one
creates it, and the other then finds a live holder. A holder that was taken over (frozen for longer than STALE_S,
then woke up) finds a newer generation at its next heartbeat or before it commits a checkpoint, and stops
(`RunDirTakenOver`) without writing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)
HEARTBEAT_S = 10.0
STALE_S = 35.0  # a remote holder whose heartbeat has not moved for this long (3.5 heartbeats) is gone
LOCK_DIR = ".writer"
_GEN = re.compile(r"^lock\.(\d{8})$")


class RunDirInUse(RuntimeError):
    """Another live job writes into this run directory."""


class RunDirTakenOver(RuntimeError):
    """This job's lock was taken over by another job (it was found stale): this job must stop writing."""


@dataclass
class Holder:
    host: str
    pid: int
    pid_start: str  # the process's start time in clock ticks since boot (/proc/PID/stat): tells a reused pid
    machine: str  # boot id and pid namespace: "this machine" for pid checks
    job: str
    since: float
    beat: int = 0
    beat_time: float = 0.0
    token: str = ""

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        job = f", job {self.job}" if self.job else ""
        return f"host {self.host}, pid {self.pid}{job}, since {since}"


def _read_text(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return ""


def _proc_start(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in ticks since boot); '' when the process does not exist."""
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""


def _machine() -> str:
    ns = ""
    with contextlib.suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return f"{_read_text('/proc/sys/kernel/random/boot_id')}/{ns}"


def _job() -> str:
    for key in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "PBS_JOBID", "LSB_JOBID"):
        if os.environ.get(key):
            return f"{key}={os.environ[key]}"
    return ""


def _this_holder() -> Holder:
    now = time.time()
    return Holder(host=socket.gethostname(), pid=os.getpid(), pid_start=_proc_start(os.getpid()), machine=_machine(),
                  job=_job(), since=now, beat_time=now, token=uuid.uuid4().hex)


class RunLock:
    """The lease on one run directory: `acquire()` at start-up (rank 0), `check()` before committing, `release()`."""

    def __init__(self, run_dir: str | Path, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / LOCK_DIR
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.holder: Holder | None = None
        self.generation = 0
        self.taken_over: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking it ------------------------------------------------------------------------------------------

    def acquire(self) -> RunLock:
        """Hold the run directory, or raise RunDirInUse naming the live holder. A stale holder is taken over
        (logged). Starts the heartbeat."""
        self.dir.mkdir(parents=True, exist_ok=True)
        me = _this_holder()
        for _ in range(100):  # every round either wins a generation or meets a live holder; races are rare
            generation, holder = self._newest()
            if holder is not None and self._alive(holder, self._path(generation)):
                raise RunDirInUse(self._in_use_message(holder))
            if self._create(generation + 1, me):
                self.holder, self.generation = me, generation + 1
                if generation:
                    what = holder.describe() if holder else "an unreadable lock"
                    logger.warning("run directory %s: took over from a writer that is gone (%s)", self.run_dir, what)
                self._remove_older()
                self._start_heartbeat()
                return self
        raise RunDirInUse(f"run.output_dir={self.run_dir}: could not take the lock in {self.dir} (too many "
                          "concurrent starts); start the job again")

    def _in_use_message(self, holder: Holder) -> str:
        return (f"run.output_dir={self.run_dir} is in use by another live run ({holder.describe()}; lock "
                f"{self.dir}). Wait for it to end or stop it, or set another run.output_dir")

    def _alive(self, holder: Holder, path: Path) -> bool:
        if holder.machine == _machine() and holder.host == socket.gethostname():
            if holder.pid == os.getpid():
                return False  # an earlier run in this very process that ended without releasing (an exception)
            if holder.pid_start:
                return _proc_start(holder.pid) == holder.pid_start
            try:  # no /proc: the pid alone
                os.kill(holder.pid, 0)
                return True
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        # another machine: watch its heartbeat (no clocks compared)
        logger.info("run directory %s is held by %s; watching its heartbeat for up to %.0f s to see whether it "
                    "is alive", self.run_dir, holder.describe(), self.stale_s)
        deadline = time.monotonic() + self.stale_s
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.stale_s / 10))
            now = self._read(path)
            if now is None or (now.token, now.beat) != (holder.token, holder.beat):
                return True  # it beat (or another job took over meanwhile): not ours to take
        return False

    def _create(self, generation: int, holder: Holder) -> bool:
        """Create generation `generation` holding `holder`; False when it exists already (another job's)."""
        target = self._path(generation)
        tmp = self.dir / f".tmp.{holder.token}"
        self._write(tmp, holder)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError:  # NFS may report an error for a link that was made: the link count tells
            return tmp.stat().st_nlink == 2
        finally:
            tmp.unlink(missing_ok=True)

    # ---- holding it -----------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise RunDirTakenOver when another job holds the run directory now (call before committing)."""
        if self.holder is None:
            return
        if self.taken_over is None and self._path(self.generation + 1).exists():
            self.taken_over = self._read(self._path(self.generation + 1)) or self.holder
        if self.taken_over is not None:
            raise RunDirTakenOver(
                f"run.output_dir={self.run_dir} was taken over by another run ({self.taken_over.describe()}) while "
                f"this one was not heard from for {self.stale_s:.0f} s; stopping without writing. Run one job per "
                "run directory")

    def beat(self) -> None:
        """Rewrite the heartbeat (atomically: a new file renamed over the generation), unless taken over."""
        with contextlib.suppress(RunDirTakenOver):
            self.check()
            self.holder.beat += 1
            self.holder.beat_time = time.time()
            tmp = self.dir / f".tmp.{self.holder.token}"
            self._write(tmp, self.holder)
            os.replace(tmp, self._path(self.generation))

    def _start_heartbeat(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.beat()
                except OSError as err:  # a vanished or unwritable directory: the trainer reports it at its save
                    logger.warning("run directory lock %s: heartbeat failed: %s", self.dir, err)

        self._thread = threading.Thread(target=loop, name="isaac-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove this job's generation (not a newer job's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.holder is not None and self.taken_over is None:
            current = self._read(self._path(self.generation))
            if current is not None and current.token == self.holder.token:
                self._path(self.generation).unlink(missing_ok=True)
        self.holder = None

    # ---- files ----------------------------------------------------------------------------------------------

    def _path(self, generation: int) -> Path:
        return self.dir / f"lock.{generation:08d}"

    def _newest(self) -> tuple[int, Holder | None]:
        generations = [int(m.group(1)) for p in self.dir.iterdir() if (m := _GEN.match(p.name))]
        if not generations:
            return 0, None
        newest = max(generations)
        return newest, self._read(self._path(newest))

    def _remove_older(self) -> None:
        for p in self.dir.iterdir():
            m = _GEN.match(p.name)
            if m and int(m.group(1)) < self.generation:
                p.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> Holder | None:
        try:
            return Holder(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def _write(path: Path, holder: Holder) -> None:
        with open(path, "w") as f:
            f.write(json.dumps(asdict(holder)))
            f.flush()
            os.fsync(f.fileno())


class _NotHeld:
    """What ranks other than 0 hold: rank 0 holds the lease for the whole job."""

    taken_over = None

    def check(self) -> None:
        pass

    def release(self) -> None:
        pass


def hold_run_dir(run_dir: str | Path, env) -> RunLock | _NotHeld:
    """Rank 0 takes the run directory's lock; every rank learns the outcome (one gather) and a refusal raises
    RunDirInUse on every rank, with the holder named."""
    lock, refusal = _NotHeld(), None
    if env.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except RunDirInUse as err:
            refusal = str(err)
    refusal = env.gather(refusal)[0]
    if refusal is not None:
        raise RunDirInUse(refusal)
    return lock


def check_still_held(lock: RunLock | _NotHeld, env) -> None:
    """Before a checkpoint is committed: raise RunDirTakenOver on every rank when another job holds the run
    directory now (rank 0 looks; one collective tells the others)."""
    message = None
    try:
        lock.check()
    except RunDirTakenOver as err:
        message = str(err)
    message = env.gather(message)[0]
    if message is not None:
        raise RunDirTakenOver(message)
