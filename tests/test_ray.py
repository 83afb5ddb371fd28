"""Runs on Ray: a real local Ray instance (loopback, usage stats off) executes runs handed over by the Worker.

Ray starts once for the module (through `RayExecutor(None)`, the executor's own local-instance path) and is
shut down at the end. The test executors join that instance, so their `shutdown` leaves it running.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import FAST_MEASURE
from workbench import jobs
from workbench.errors import WorkbenchError
from workbench.ray_executor import RayExecutor
from workbench.specs import RunSpec
from workbench.store import Store
from workbench.worker import Worker

GRID = {"sparsity": [0.3, 0.5, 0.7], "bits": [8, 32]}
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is an optional extra (in .[dev]): pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module, started by the executor (ray must not be imported before:
    the loopback switch is read when ray is imported)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("RAY_ADDRESS", "WORKBENCH_RAY_ADDRESS"):
            mp.delenv(var, raising=False)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        owner = RayExecutor(None)
        ray = owner.connect()
        try:
            yield ray
        finally:
            owner.shutdown()
    assert not ray.is_initialized()


def _spec(**extra) -> RunSpec:
    return RunSpec.from_dict({"name": "ray", "model": "digits-mlp", "measure": FAST_MEASURE,
                              "stages": [{"prune": {"sparsity": 0.5}}], **extra})


def _work(store: Store, concurrency: int = 2) -> float:
    start = time.monotonic()
    Worker(store, executor=RayExecutor(None), concurrency=concurrency, poll_s=0.1).run(until_idle=True)
    return time.monotonic() - start


@needs_ray
def test_local_ray_stays_on_loopback(ray_instance):
    ray = ray_instance
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert ray.cluster_resources().get("CPU", 0) >= 1


@needs_ray
def test_sweep_runs_on_ray_and_lands_in_the_store(ray_instance, isolated_home, capsys):
    store = Store(isolated_home)
    sweep_id, runs = jobs.submit_sweep(store, _spec(), GRID)
    elapsed = _work(store)

    listed = store.list(sweep_id=sweep_id)
    assert sorted(r.id for r in listed) == sorted(r.id for r in runs)
    assert [r.status for r in listed] == ["succeeded"] * 6, [(r.id, r.status, r.error) for r in listed]
    for run in listed:
        assert run.progress == 1.0 and run.worker_id and run.error is None
        out = store.run_dir(run.id)
        assert (out / "model.onnx").stat().st_size > 0
        assert (out / "report.json").stat().st_size > 0
    settings = {(round(r.metrics["final"]["sparsity"], 1), int(r.metrics["final"]["bits"])) for r in listed}
    assert settings == {(s, b) for s in GRID["sparsity"] for b in GRID["bits"]}
    assert [row["status"] for row in jobs.sweep_summary(store, sweep_id)] == ["succeeded"] * 6
    with capsys.disabled():
        print(f"\na 6-run sweep on a local Ray instance: 6/6 succeeded in {elapsed:.1f} s, listed with sweep id "
              f"{sweep_id}")


@needs_ray
def test_failing_run_on_ray_is_failed_with_its_error(ray_instance, isolated_home, tmp_path):
    store = Store(isolated_home)
    missing = tmp_path / "missing.onnx"
    run = jobs.submit(store, _spec(model={"path": str(missing)}))
    _work(store, concurrency=1)
    run = store.get(run.id)
    assert run.status == "failed"
    assert "missing.onnx" in run.error
    assert "the Ray task died" not in run.error  # jobs.execute recorded it: the task itself succeeded


def _task_pid(run_id: int, timeout: float = 60) -> int:
    """The Ray worker process executing a run: Ray titles it after the task (`ray::workbench-run-ID`)."""
    title = f"ray::workbench-run-{run_id}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == title:
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no Ray worker process runs run {run_id}")


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@needs_ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the task's process in /proc")
def test_dead_ray_worker_fails_its_run_and_cancel_works(ray_instance, isolated_home):
    store = Store(isolated_home)
    long = _spec(stages=[{"finetune": {"epochs": 200}}])
    doomed, cancelled = jobs.submit(store, long), jobs.submit(store, long)
    worker = threading.Thread(target=_work, args=(store,))
    worker.start()
    try:
        _wait_for(lambda: all(store.get(r.id).stage not in ("", "claimed") for r in (doomed, cancelled)))
        os.kill(_task_pid(doomed.id), signal.SIGKILL)  # the Ray worker dies mid-run (OOM killer, node lost)
        asked = time.monotonic()
        store.request_cancel(cancelled.id)
        _wait_for(lambda: store.get(cancelled.id).done, timeout=10)
        cancel_s = time.monotonic() - asked
    finally:
        worker.join(timeout=60)
    assert not worker.is_alive()
    dead, stopped = store.get(doomed.id), store.get(cancelled.id)
    assert dead.status == "failed"
    assert "the Ray task died" in dead.error and "WorkerCrashedError" in dead.error
    assert stopped.status == "cancelled" and cancel_s < 5


@needs_ray
def test_unreachable_cluster_fails_fast():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(WorkbenchError, match="cannot reach the cluster"):
        RayExecutor(address).connect()
    assert time.monotonic() - start < 10


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch, isolated_home):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for var in ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        monkeypatch.setenv(var, os.environ.get(var, "0"))  # connect() sets them: restore after the test
    with pytest.raises(WorkbenchError, match=r"Ray is an optional extra: pip install 'compression-workbench\[ray\]'"):
        RayExecutor(None).connect()

    store = Store(isolated_home)  # and through the worker: the run fails with the hint, nothing else breaks
    run = jobs.submit(store, _spec())
    Worker(store, executor=RayExecutor(None)).run(until_idle=True)
    run = store.get(run.id)
    assert run.status == "failed" and "optional extra" in run.error
