"""The worker: exactly-once claims across processes, crash safety under kill -9, cancel, restart, failures,
and the one auto-started worker per data dir. Runs execute for real, in child processes, kept short."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import FAST_MEASURE
from tests.reliability.faults import alive, children, wait_for
from workbench.store import Store
from workbench.worker import LocalExecutor, Worker, auto_worker_pid, ensure_worker

# The tiny ONNX model keeps runs to a few seconds (no torch export); LONG needs a torch model to fine-tune.
LONG = {"model": "digits-mlp", "stages": [{"finetune": {"epochs": 500}}], "measure": FAST_MEASURE}


def _quick(model: Path) -> dict:
    """Baseline only: about 2 s in a child process."""
    return {"model": str(model), "stages": [], "measure": FAST_MEASURE}


def _short(model: Path) -> dict:
    """A few seconds of work after the first progress report (static int8 calibration)."""
    return {"model": str(model), "stages": [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "static"}}],
            "measure": FAST_MEASURE}


def _deaf(model: Path) -> dict:
    """Measuring for ~20 s without polling cancellation: the worker has to kill this one."""
    return {"model": str(model), "stages": [], "measure": {**FAST_MEASURE, "batch_sizes": [1, 2, 4, 8, 16, 32],
                                                           "warmup": 10**6, "repeats": 10**6, "min_time_s": 60}}


def _started(store: Store, run_id: int) -> bool:
    run = store.get(run_id)
    return run.status == "running" and run.progress > 0


def _worker_process(home: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "workbench", "worker", "--home", str(home), *extra]
    with open(home / "test-worker.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _in_thread(worker: Worker, stop: threading.Event | None = None, until_idle: bool = False) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop, "until_idle": until_idle}, daemon=True)
    thread.start()
    return thread


# --- exactly once ----------------------------------------------------------------------------------

SUBMITTER = """
import sys, time
from workbench.store import Store
home, who, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = Store(home)
time.sleep(max(0.0, start - time.time()))
for i in range(10):
    store.submit({"model": {"sample": "digits-mlp"}}, f"{who}-{i}")
"""

CLAIMER = """
import json, sys, time
from workbench.store import Store
home, who, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = Store(home)
time.sleep(max(0.0, start - time.time()))
ids = []
while (run := store.claim(who)) is not None:
    ids.append(run.id)
print(json.dumps(ids))
"""


def _together(code: str, home: Path, count: int) -> list[str]:
    """Start `count` processes running `code`, released at the same moment; their stdouts."""
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), f"p{i}", str(start)],
                              stdout=subprocess.PIPE, text=True) for i in range(count)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * count
    return outs


def test_50_submissions_from_5_processes_are_all_kept_and_claimed_exactly_once(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    _together(SUBMITTER, home, 5)
    runs = store.list(limit=1000)
    assert len(runs) == 50 and len({r.id for r in runs}) == 50
    assert sorted(r.name for r in runs) == sorted(f"p{p}-{i}" for p in range(5) for i in range(10))  # 0 lost

    claimed = [json.loads(out) for out in _together(CLAIMER, home, 4)]
    flat = [run_id for ids in claimed for run_id in ids]
    assert len(flat) == 50 and set(flat) == {r.id for r in runs}  # 0 claimed twice, none left behind
    assert store.counts()["queued"] == 0 and store.counts()["running"] == 50
    print(f"50 submissions from 5 processes: {len(runs)} runs, 0 lost; 4 claimers: {len(flat)} claims, "
          f"{len(flat) - len(set(flat))} claimed twice")
    for who, ids in enumerate(claimed):
        assert all(store.get(i).worker_id == f"p{who}" for i in ids)


# --- crash safety --------------------------------------------------------------------------------

def test_kill_9_of_a_worker_mid_run_leaves_nothing_running_and_retries_succeed(tmp_path, tiny_onnx):
    home = tmp_path / "home"
    store = Store(home)
    ids, began = [], time.monotonic()
    for i in range(5):
        run = store.submit(_short(tiny_onnx), f"victim-{i}")
        ids.append(run.id)
        proc = _worker_process(home)
        wait_for(lambda run=run: _started(store, run.id), 60, f"run {run.id} to make progress")
        kids = children(proc.pid)
        assert len(kids) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert store.get(run.id).status == "running"  # nobody has noticed yet
        wait_for(lambda kids=kids: not any(map(alive, kids)), 10, "the child to die with its worker")
        if i < 4:  # the last one is left for the next worker to find
            assert store.reap() == [run.id]

    Worker(store).run(until_idle=True)  # reaps at start; nothing is queued
    assert store.counts()["running"] == 0
    for run_id in ids:
        run = store.get(run_id)
        assert run.status == "interrupted" and "died" in run.error and "retry" in run.error

    killed_at = time.monotonic()
    for run_id in ids:
        store.retry(run_id)
    done = subprocess.run([sys.executable, "-m", "workbench", "worker", "--home", str(home), "--until-idle",
                           "--concurrency", "2"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [store.get(i) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * 5, [r.error for r in runs]
    assert all(r.attempts == 2 and (store.run_dir(r.id) / "model.onnx").is_file() for r in runs)
    print(f"kill -9 x5: 0 left running, 5/5 interrupted then retried to success "
          f"(kills {killed_at - began:.0f} s, retries {time.monotonic() - killed_at:.0f} s)")


# --- cancel ----------------------------------------------------------------------------------------

def test_cancel_stops_a_running_run_within_5_s_and_a_queued_one_at_once(tmp_path, tiny_onnx):
    store = Store(tmp_path / "home")
    polite, deaf = store.submit(LONG, "polite"), store.submit(_deaf(tiny_onnx), "deaf")
    queued = store.submit(_quick(tiny_onnx), "queued")
    cancelled = store.request_cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished is not None

    stop = threading.Event()
    worker = Worker(store, concurrency=2, cancel_grace_s=1.0)
    thread = _in_thread(worker, stop)
    try:
        wait_for(lambda: store.get(polite.id).stage == "1: finetune", 60, "the fine-tune to start")
        wait_for(lambda: store.get(deaf.id).stage == "baseline", 60, "the baseline measurement to start")
        pids = [worker.executor.pid(polite.id), worker.executor.pid(deaf.id)]
        took = {}
        for run in (polite, deaf):
            asked = time.monotonic()
            store.request_cancel(run.id)
            wait_for(lambda run=run: store.get(run.id).status == "cancelled", 5, f"run {run.id} to be cancelled")
            took[run.name] = time.monotonic() - asked
        print(f"cancel took {took['polite']:.2f} s (the run stopped itself), {took['deaf']:.2f} s (killed)")
        assert max(took.values()) < 5
        assert store.get(polite.id).error == "cancelled by request"
        assert "stopped forcefully" in store.get(deaf.id).error
        wait_for(lambda: not any(map(alive, pids)), 10, "both children to end")
    finally:
        stop.set()
        thread.join(30)
    assert store.counts()["running"] == 0


# --- restart ---------------------------------------------------------------------------------------

def test_restart_keeps_history_and_artifacts_and_runs_queued_runs(tmp_path, tiny_onnx):
    home = tmp_path / "home"
    store = Store(home)
    first = store.submit(_quick(tiny_onnx), "first")
    stop = threading.Event()
    worker = Worker(store)
    thread = _in_thread(worker, stop)
    wait_for(lambda: store.get(first.id).done, 90, "the first run")
    busy = store.submit(_deaf(tiny_onnx), "busy")
    wait_for(lambda: _started(store, busy.id), 60, "the long run to start")
    pid = worker.executor.pid(busy.id)
    stop.set()  # a clean stop: in-flight runs are interrupted, not left running
    thread.join(30)
    assert not thread.is_alive() and not alive(pid)
    stopped = store.get(busy.id)
    assert stopped.status == "interrupted" and "worker stopped" in stopped.error
    done = store.get(first.id)
    assert done.status == "succeeded", done.error

    later = store.submit(_quick(tiny_onnx), "queued while no worker ran")
    again = Store(home)  # the restart
    assert again.get(first.id) == done
    assert [r.id for r in again.list()] == [later.id, busy.id, first.id]
    report = json.loads((again.run_dir(first.id) / "report.json").read_text())
    assert round(report["baseline"]["measurement"]["metrics"]["accuracy"], 4) == done.metrics["final"]["accuracy"]
    assert (again.run_dir(first.id) / "model.onnx").stat().st_size > 0
    Worker(again).run(until_idle=True)
    assert again.get(later.id).status == "succeeded"
    assert again.get(first.id) == done and again.get(busy.id).status == "interrupted"


# --- failures ----------------------------------------------------------------------------------------

def test_a_failed_run_and_a_crashed_child_do_not_stop_the_worker(tmp_path, tiny_onnx):
    store = Store(tmp_path / "home")
    broken = store.submit(_quick(tmp_path / "missing.onnx"), "broken")
    crashing = store.submit(_deaf(tiny_onnx), "crashing")
    fine = store.submit(_quick(tiny_onnx), "fine")
    worker = Worker(store)
    thread = _in_thread(worker, until_idle=True)
    wait_for(lambda: _started(store, crashing.id), 90, "the second run to start")
    os.kill(worker.executor.pid(crashing.id), signal.SIGKILL)  # a hard crash: segfault, OOM killer
    thread.join(120)
    assert not thread.is_alive()

    failed = store.get(broken.id)
    assert failed.status == "failed" and "model file not found" in failed.error
    assert "--- log tail ---" in failed.error and "Traceback" in failed.error
    crashed = store.get(crashing.id)
    assert crashed.status == "failed" and "exit code -9: killed by SIGKILL" in crashed.error
    assert "--- output tail ---" in crashed.error
    assert store.get(fine.id).status == "succeeded"


def test_local_executor_reports_exit_codes(tmp_path, tiny_onnx):
    store = Store(tmp_path / "home")
    run = store.submit(_quick(tiny_onnx))
    executor = LocalExecutor()
    executor.start(store, run)  # not claimed: the child refuses with a one-line error and exit code 2
    wait_for(lambda: executor.finished() == [run.id], 60, "the child to exit")
    assert executor.exit_reason(run.id) == "exit code 2" and executor.active() == 0
    assert "not claimed" in (store.run_dir(run.id) / "worker-output.txt").read_text()


# --- the auto-started worker -------------------------------------------------------------------------

def test_ensure_worker_starts_at_most_one_and_it_stops_cleanly(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    assert auto_worker_pid(home) is None
    assert ensure_worker(home) is True
    assert ensure_worker(home) is False  # right away: the lock went to the child with it
    pid = auto_worker_pid(home)
    assert pid and alive(pid)
    by_hand = subprocess.run([sys.executable, "-m", "workbench", "worker", "--auto", "--home", str(home)],
                             capture_output=True, text=True, timeout=60)
    assert by_hand.returncode == 0 and "already serves" in by_hand.stderr

    run = store.submit(_quick(tmp_path / "nothing.onnx"))
    wait_for(lambda: store.get(run.id).done, 60, "the auto-started worker to take the run")
    assert store.get(run.id).status == "failed"
    assert auto_worker_pid(home) == pid

    os.kill(pid, signal.SIGTERM)
    status = _reap(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert auto_worker_pid(home) is None
    log = (home / "worker.log").read_text()
    assert "started (executor local" in log and "stopped" in log
    assert ensure_worker(home) is True  # the lock is free again
    _stop_auto_worker(home)


def test_no_auto_worker_while_another_worker_serves_the_store(tmp_path):
    """A worker started by hand (or on Ray) is enough: a second one would share the cores and skew latency."""
    home = tmp_path / "home"
    store = Store(home)
    store.register_worker("by-hand")              # this process, heartbeat now
    assert [w["id"] for w in store.live_workers()] == ["by-hand"]
    assert ensure_worker(home) is False and auto_worker_pid(home) is None
    store.stop_worker("by-hand")
    assert store.live_workers() == []
    assert ensure_worker(home) is True            # gone: the app starts its own again
    _stop_auto_worker(home)


def test_a_silent_worker_does_not_count_as_serving(tmp_path):
    store = Store(tmp_path / "home")
    store.register_worker("quiet")
    assert store.live_workers(stale_after=10.0) and not store.live_workers(stale_after=-1.0)


def _reap(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not exit")


def _stop_auto_worker(home: Path) -> None:
    pid = wait_for(lambda: auto_worker_pid(home), 30, "the worker's pid")
    os.kill(pid, signal.SIGTERM)
    _reap(pid)


@pytest.fixture(autouse=True)
def _no_stray_workers():
    """Fail loudly rather than leave worker processes behind."""
    yield
    strays = [pid for pid in children(os.getpid()) if alive(pid)]
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    assert not strays, f"processes left running: {strays}"
