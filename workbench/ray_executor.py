"""Run claimed runs as Ray tasks, so one worker can spread a queue over a Ray cluster.

The worker still claims runs, beats the heartbeat and handles cancel; `RayExecutor` only moves the
execution of each run into a Ray task (`jobs.execute(Store(home), run_id)`) with the resources asked
for, e.g. `num_gpus=1` for one GPU per run.

Deployment requirement (and limitation): the task opens the worker's store by path, so the data dir
(`WORKBENCH_HOME`: the SQLite database and `runs/<id>/`) must be reachable at the same path wherever a
task runs, with `compression-workbench` installed there and models given by path present. The store is
SQLite in WAL mode, which needs every writer on the same host (WAL does not work over NFS & co.): today
that means a Ray cluster on one machine (e.g. a multi-GPU box); nodes on other hosts would need a
store server or results sent back through Ray. Ray is an optional extra
(`pip install 'compression-workbench[ray]'`); nothing else imports this module.

With no address (and neither WORKBENCH_RAY_ADDRESS nor RAY_ADDRESS set) a private local Ray instance
is started on loopback (127.0.0.1), with Ray's usage stats off; it is shut down with the executor. If
this process already called `ray.init`, that instance is used as it is.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

from workbench.errors import WorkbenchError
from workbench.store import Run, Store

log = logging.getLogger(__name__)
ADDRESS_ENV = "WORKBENCH_RAY_ADDRESS"


def _execute(home: str, run_id: int) -> str:
    """The Ray task: run one claimed run against the shared store (never raises for a failed run)."""
    from workbench.jobs import execute

    return execute(Store(home), run_id)


def _check_reachable(address: str | None) -> None:
    """Fail fast on a dead HOST:PORT: ray.init retries an unreachable GCS for minutes before giving up."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # local, "auto" or ray://: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise WorkbenchError(f"Ray: cannot reach the cluster at {address} ({exc})") from None


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0) -> None:
        self.address = address or os.environ.get(ADDRESS_ENV) or None
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._refs: dict[int, Any] = {}  # run id -> ObjectRef of its task
        self._killed: set[int] = set()
        self._reasons: dict[int, str] = {}  # why a task ended without a result (for the Worker's error text)
        self._owns_ray = False
        self._ray: Any = None
        self._task: Any = None

    def connect(self) -> Any:
        """Start or join Ray (done by the first `start`; call it early to fail fast on a bad address)."""
        if self._ray is not None:
            return self._ray
        local = not self.address and not os.environ.get("RAY_ADDRESS")
        if local:  # a private single-machine instance: keep it on loopback and quiet (read at import)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's switch: node IP 127.0.0.1
        try:
            import ray
        except ImportError:
            raise WorkbenchError("Ray is an optional extra: pip install 'compression-workbench[ray]'") from None
        _check_reachable(self.address)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False,
                         logging_level=logging.WARNING)
            except Exception as exc:  # ConnectionError, timeouts, bad addresses
                raise WorkbenchError(f"Ray: cannot connect to {self.address or 'a local instance'}: {exc}") from None
            self._owns_ray = local
        self._ray = ray
        self._task = ray.remote(_execute)
        log.info("ray: %s, %s CPU(s) available", self.address or "local instance",
                 ray.cluster_resources().get("CPU", 0))
        return ray

    def start(self, store: Store, run: Run) -> None:
        self.connect()
        task = self._task.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
                                  name=f"workbench-run-{run.id}")
        self._refs[run.id] = task.remote(str(store.home.resolve()), run.id)

    def finished(self) -> list[int]:
        if not self._refs:
            return []
        by_ref = {ref: run_id for run_id, ref in self._refs.items()}
        ready, _ = self._ray.wait(list(by_ref), timeout=0, num_returns=len(by_ref))
        self._reasons.clear()
        done = []
        for ref in ready:
            run_id = by_ref[ref]
            del self._refs[run_id]
            try:
                self._ray.get(ref, timeout=0)
            except Exception as exc:  # the task died (worker crash, node lost, killed): finished all the same
                if run_id not in self._killed:
                    log.warning("run %d: Ray task ended without a result: %s", run_id, exc)
                self._reasons[run_id] = f"the Ray task died: {type(exc).__name__}: {exc}"[:2000]
            self._killed.discard(run_id)
            done.append(run_id)
        return done

    def exit_reason(self, run_id: int) -> str | None:
        """How the task of a run just reported by `finished` ended, if not normally (the Worker records it)."""
        return self._reasons.get(run_id)

    def kill(self, run_id: int) -> None:
        if run_id in self._refs:
            self._killed.add(run_id)
            self._ray.cancel(self._refs[run_id], force=True)

    def active(self) -> int:
        return len(self._refs)

    def shutdown(self) -> None:
        if self._ray is None:
            return
        for run_id in list(self._refs):
            self.kill(run_id)
        self._refs.clear()
        self._killed.clear()
        if self._owns_ray:
            self._ray.shutdown()
        self._ray = self._task = None
        self._owns_ray = False
