"""The worker: claims queued runs from the store and executes them, by default one child process per run.

Contract:
- `Worker(store).run()` registers itself, heartbeats every `heartbeat_s` (its own thread, so a slow executor
  call never makes its runs look dead), reaps runs whose worker died (`store.reap`) at start and every
  `stale_after / 2` s, and claims runs while fewer than `concurrency` are in flight. Claims are atomic, so
  any number of workers may share one store. At the same cadence it cancels queued runs of searches past
  their deadline (`store.expire_sweeps`; a claim never starts one either).
- Claimed runs go to an `Executor`. `LocalExecutor` starts `python -m workbench execute ID`, which records
  progress and the outcome itself (`jobs.execute`); `workbench.ray_executor.RayExecutor` does the same on Ray.
- A run whose execution ended while the store still says `running` crashed (segfault, OOM, `os._exit`): it is
  marked failed with the exit code and the tail of its output.
- A run asked to cancel (or finished/reaped elsewhere) that still executes `cancel_grace_s` later is killed;
  a cancelled one is then marked cancelled.
- A clean stop (stop event, SIGTERM/SIGINT in the CLI) stops claiming, kills in-flight children and marks
  their runs `interrupted` ("worker stopped") so they can be retried. After kill -9 the children die with
  the worker (PR_SET_PDEATHSIG) and the next `reap` marks their runs interrupted.
- `ensure_worker(home)` starts at most one detached auto-worker per data dir: `HOME/worker.lock` is held
  (flock) for that worker's lifetime. Workers started by hand without `--auto` take no lock.

Non-goals: scheduling beyond FIFO, resource accounting (Ray's job), automatic retries.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from workbench.errors import WorkbenchError
from workbench.store import Run, Store

log = logging.getLogger(__name__)
OUTPUT_FILE = "worker-output.txt"   # a child's stdout + stderr, in its run folder
LOCK_FILE = "worker.lock"
LOG_FILE = "worker.log"
TAIL_LINES = 20
PR_SET_PDEATHSIG = 1
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
_AUTO_STARTED: list[subprocess.Popen] = []  # kept so they are reaped (no zombies, no ResourceWarning)


class Executor(Protocol):
    """How claimed runs execute. Optional extra: `exit_reason(run_id) -> str | None`, asked right after
    `finished()` reported a run, describes how its execution ended (exit code, signal)."""

    name: str

    def start(self, store: Store, run: Run) -> None:
        """Begin executing an already-claimed run, without blocking."""

    def finished(self) -> list[int]:
        """Run ids whose execution ended since the last call."""

    def kill(self, run_id: int) -> None:
        """Forcefully stop a run (it ignored its cancel request)."""

    def active(self) -> int:
        """Runs in flight (started, not yet reported by `finished`)."""

    def shutdown(self) -> None:
        """Stop everything still running and release resources."""


# --- local execution: one child process per run ---------------------------------------------------

class LocalExecutor:
    """Each run in its own `python -m workbench execute` child; output appended to runs/<id>/worker-output.txt."""

    name = "local"

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self._exits: dict[int, int] = {}
        self._prctl = _load_prctl()

    def start(self, store: Store, run: Run) -> None:
        out = store.run_dir(run.id)
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "workbench", "execute", str(run.id), "--home", str(store.home)]
        # PDEATHSIG fires when the *thread* that forked the child exits: start children from the worker
        # loop's thread, which outlives them (it kills them before it returns)
        preexec = functools.partial(_die_with_parent, self._prctl, os.getpid()) if self._prctl else None
        with open(out / OUTPUT_FILE, "ab") as output:
            # its own process group: Ctrl-C at the worker's terminal reaches the worker only, which then
            # marks the run interrupted instead of seeing a child die of KeyboardInterrupt
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                    env=child_env(), preexec_fn=preexec, process_group=0)
        self._procs[run.id] = proc
        log.info("run %d: started in process %d", run.id, proc.pid)

    def finished(self) -> list[int]:
        ended = [run_id for run_id, proc in self._procs.items() if proc.poll() is not None]
        self._exits = {run_id: self._procs.pop(run_id).returncode for run_id in ended}
        return ended

    def exit_reason(self, run_id: int) -> str | None:
        code = self._exits.get(run_id)
        if code is None:
            return None
        if code < 0:
            try:
                return f"exit code {code}: killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"exit code {code}: killed by signal {-code}"
        return f"exit code {code}"

    def pid(self, run_id: int) -> int | None:
        proc = self._procs.get(run_id)
        return proc.pid if proc else None

    def kill(self, run_id: int) -> None:
        proc = self._procs.get(run_id)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def active(self) -> int:
        return len(self._procs)

    def shutdown(self) -> None:
        for run_id in list(self._procs):
            self.kill(run_id)


def child_env() -> dict[str, str]:
    """The environment for a child `python -m workbench`: it imports the same workbench as this process."""
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": str(PACKAGE_PARENT) + (os.pathsep + path if path else "")}


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # loaded here: a forked child must not import
    except (OSError, AttributeError):
        log.warning("prctl unavailable: children will not die with the worker")
        return None


def _die_with_parent(prctl: Callable[..., int], parent_pid: int) -> None:
    """Runs in the forked child before exec: SIGKILL it when the worker dies, even by kill -9."""
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


# --- the worker loop ------------------------------------------------------------------------------

@dataclass
class _Flight:
    stop_seen: float | None = None   # when the worker first saw that the run should stop
    killed: bool = False


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims runs from `store` and hands them to `executor`; see the module docstring for the contract."""

    def __init__(self, store: Store, executor: Executor | None = None, concurrency: int = 1,
                 worker_id: str | None = None, heartbeat_s: float = 1.0, stale_after: float = 10.0,
                 poll_s: float = 0.2, cancel_grace_s: float = 3.0) -> None:
        if concurrency < 1:
            raise WorkbenchError(f"worker: concurrency must be >= 1, got {concurrency}")
        if stale_after <= heartbeat_s:
            raise WorkbenchError("worker: stale_after must be longer than heartbeat_s")
        self.store = store
        self.executor: Executor = executor or LocalExecutor()
        self.concurrency = concurrency
        self.worker_id = worker_id or default_worker_id()
        self.heartbeat_s, self.stale_after = heartbeat_s, stale_after
        self.poll_s, self.cancel_grace_s = poll_s, cancel_grace_s
        self._flights: dict[int, _Flight] = {}
        self._next_reap = 0.0

    def run(self, stop: threading.Event | None = None, until_idle: bool = False) -> None:
        """Work until `stop` is set (or, with `until_idle`, until the queue is empty and nothing is in flight)."""
        stop = stop or threading.Event()
        self.store.register_worker(self.worker_id)
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(beating,), name=f"heartbeat {self.worker_id}", daemon=True)
        beat.start()
        log.info("worker %s: started (executor %s, concurrency %d, data dir %s)", self.worker_id,
                 self.executor.name, self.concurrency, self.store.home)
        reason = "worker stopped"
        try:
            while not stop.is_set():
                if self._tick() and until_idle:
                    break
                stop.wait(self.poll_s)
        except BaseException as exc:
            reason = f"worker failed ({type(exc).__name__}: {exc})"
            raise
        finally:
            self._stop(reason)
            beating.set()
            beat.join()
            self.store.stop_worker(self.worker_id)
            log.info("worker %s: stopped", self.worker_id)

    def _beat(self, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.store.worker_heartbeat(self.worker_id)
            except sqlite3.Error as exc:  # a busy store must not kill the heartbeat; the next one may pass
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)

    def _tick(self) -> bool:
        """One round: reap if due, collect ended runs, enforce cancels, claim. True when idle."""
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + max(1.0, self.stale_after / 2)
            for run_id in self.store.reap(self.stale_after):
                log.warning("run %d: interrupted (its worker is gone)", run_id)
            for run_id in self.store.expire_sweeps():
                log.info("run %d: cancelled (its search's time budget is spent)", run_id)
        self._collect()
        self._enforce_stops()
        queue_empty = self._claim()
        return queue_empty and not self._flights and self.executor.active() == 0

    def _claim(self) -> bool:
        """Claim and start runs up to the concurrency; True if the queue turned out empty."""
        while self.executor.active() < self.concurrency:
            run = self.store.claim(self.worker_id)
            if run is None:
                return True
            try:
                self.executor.start(self.store, run)
            except Exception as exc:  # the run cannot start; the worker (and the other runs) go on
                log.exception("run %d: could not start", run.id)
                self.store.finish(run.id, "failed", worker_id=self.worker_id,
                                  error=f"could not start the run on the {self.executor.name} executor: "
                                        f"{type(exc).__name__}: {exc}")
                return False  # the next try waits a poll: a broken executor must not fail the queue at once
            self._flights[run.id] = _Flight()
        return False

    def _collect(self) -> None:
        for run_id in self.executor.finished():
            self._flights.pop(run_id, None)
            run = self._get(run_id)
            if run is None or not self._mine(run):
                log.info("run %d: %s", run_id, run.status if run else "deleted")
                continue
            reason = _exit_reason(self.executor, run_id)
            tail = _tail(self.store.run_dir(run_id))
            self.store.finish(run_id, "failed", worker_id=self.worker_id,
                              error=f"the run's process ended without recording an outcome "
                                    f"({reason})\n--- output tail ---\n{tail}")
            log.error("run %d: crashed (%s)", run_id, reason)

    def _enforce_stops(self) -> None:
        """Kill runs that should have stopped (cancel requested, or no longer running in the store)."""
        now = time.monotonic()
        for run_id, flight in self._flights.items():
            if flight.killed:
                continue
            run = self._get(run_id)
            if run is not None and self._mine(run) and not run.cancel_requested:
                continue
            if flight.stop_seen is None:
                flight.stop_seen = now
            if now - flight.stop_seen < self.cancel_grace_s:
                continue
            log.warning("run %d: still executing %.1f s after it should have stopped; killing it", run_id,
                        now - flight.stop_seen)
            self.executor.kill(run_id)
            flight.killed = True
            if run is not None and self._mine(run):
                self.store.finish(run_id, "cancelled", worker_id=self.worker_id,
                                  error=f"cancelled by request (stopped forcefully: it did not stop within "
                                        f"{self.cancel_grace_s:g} s)")

    def _stop(self, reason: str) -> None:
        in_flight = list(self._flights)
        if in_flight:
            log.warning("worker %s: %s with runs %s in flight; they are marked interrupted", self.worker_id,
                        reason, in_flight)
        try:
            self.executor.shutdown()
        finally:
            for run in filter(None, map(self._get, in_flight)):
                if self._mine(run):
                    self.store.finish(run.id, "interrupted", worker_id=self.worker_id,
                                      error=f"interrupted: {reason}; retry to run it again")
            self._flights.clear()

    def _get(self, run_id: int) -> Run | None:
        try:
            return self.store.get(run_id)
        except WorkbenchError:
            return None  # deleted meanwhile

    def _mine(self, run: Run) -> bool:
        """Still running on this worker: not finished, reaped, or retried and claimed by another worker."""
        return run.status == "running" and run.worker_id == self.worker_id


def _exit_reason(executor: Executor, run_id: int) -> str:
    describe = getattr(executor, "exit_reason", None)
    reason = describe(run_id) if describe else None
    return reason or f"the {executor.name} executor reported it ended"


def _tail(run_dir: Path, lines: int = TAIL_LINES) -> str:
    for name in (OUTPUT_FILE, "log.txt"):
        try:
            text = (run_dir / name).read_text(errors="replace").strip()
        except OSError:
            continue
        if text:
            return "\n".join(text.splitlines()[-lines:])
    return "(no output)"


# --- the auto-started worker: at most one per data dir --------------------------------------------

def _try_lock(fd: int, mode: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def hold_worker_lock(home: Path, fd: int | None = None) -> int | None:
    """Take HOME/worker.lock for this process's lifetime (or keep the one inherited as `fd` from
    `ensure_worker`); returns the open fd, or None if another process holds the lock."""
    Path(home).mkdir(parents=True, exist_ok=True)
    if fd is None:
        fd = os.open(Path(home) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):  # a no-op for an inherited fd: the lock belongs to its open file description
        os.close(fd)
        return None
    _write_pid(fd, os.getpid())
    return fd


def auto_worker_pid(home: Path) -> int | None:
    """The pid of the worker holding HOME/worker.lock, or None if none holds it."""
    try:
        fd = os.open(Path(home) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


def ensure_worker(home: Path, concurrency: int = 1) -> bool:
    """Start a detached `workbench worker --auto` for `home` unless one holds its lock or another worker
    (`workbench worker` in a terminal, a Ray head) serves the store already; True if started. A second
    worker would run jobs side by side on the same cores and skew every latency they measure.

    The lock is taken here and handed to the child (an inherited fd), so two quick calls cannot both start one.
    """
    home = Path(home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd) or Store(home).live_workers():
            return False
        cmd = [sys.executable, "-m", "workbench", "worker", "--auto", "--lock-fd", str(fd), "--home", str(home),
               "--concurrency", str(concurrency)]
        with open(home / LOG_FILE, "ab") as output:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(fd,), env=child_env())
        _write_pid(fd, proc.pid)
        _AUTO_STARTED[:] = [p for p in _AUTO_STARTED if p.poll() is None] + [proc]
        log.info("started a background worker (pid %d) for %s; log in %s", proc.pid, home, home / LOG_FILE)
        return True
    finally:
        os.close(fd)  # the child's copy keeps the lock: flock belongs to the shared open file description
