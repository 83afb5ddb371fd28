"""Launching from the app: submit to the store, then make sure a background worker serves the data dir.

The worker is started lazily, when something is launched, never on page load: `ensure_worker` starts at
most one detached `workbench worker --auto` per data dir (a subprocess, never multiprocessing: spawned
children would re-run the page script). WORKBENCH_AUTO_WORKER=0 turns that off, for a data dir served by
a worker you started yourself (e.g. on Ray) and for tests, which run the queue in-process.
"""

from __future__ import annotations

import os
from typing import Any

from ui import cache, state
from workbench.specs import RunSpec
from workbench.store import Run

AUTO_WORKER_ENV = "WORKBENCH_AUTO_WORKER"


def start_worker() -> bool:
    """Start the background worker for the data dir unless one runs (or WORKBENCH_AUTO_WORKER=0)."""
    if os.environ.get(AUTO_WORKER_ENV, "1") == "0":
        return False
    from workbench.worker import ensure_worker

    return ensure_worker(state.home())


def launch_run(spec: RunSpec) -> Run:
    from workbench import jobs

    run = jobs.submit(cache.store(), spec)
    state.remember_runs([run.id])
    start_worker()
    return run


def launch_sweep(spec: RunSpec, grid: dict[str, list[Any]]) -> tuple[str, list[Run]]:
    """Queue every combination of `grid` ("sparsity": fractions, "bits": bitwidths) applied to `spec`."""
    from workbench import jobs

    sweep_id, runs = jobs.submit_sweep(cache.store(), spec, grid)
    state.remember_runs([r.id for r in runs], sweep_id)
    start_worker()
    return sweep_id, runs


def launch_search(spec: RunSpec, max_drop: float, trials: int, minutes: float | None, objective: str,
                  space: dict[str, tuple]) -> tuple[str, list[Run]]:
    """Queue a search under an accuracy bar (workbench.search.search) as this session's last sweep."""
    from workbench.search import search

    sweep_id, runs = search(cache.store(), spec, max_drop, trials, minutes, space, objective)
    state.remember_runs([r.id for r in runs], sweep_id)
    start_worker()
    return sweep_id, runs


def worker_status() -> str:
    """One line for the sidebar: is a background worker serving the data dir, and what is queued."""
    from workbench.worker import auto_worker_pid

    store = cache.store()
    counts, pid = store.counts(), auto_worker_pid(state.home())
    others = [w for w in store.live_workers() if w["pid"] != pid]
    if pid:
        who = f"worker running (pid {pid})"
    elif others:
        who = f"served by {len(others)} worker(s) started outside the app (pid " + \
            ", ".join(f"{w['pid']} on {w['host']}" for w in others) + ")"
    elif os.environ.get(AUTO_WORKER_ENV) == "0":
        who = "auto-start off (WORKBENCH_AUTO_WORKER=0): run `workbench worker`"
    else:
        who = "no background worker (one starts when you launch a run)"
    return f"{who} · {counts['queued']} queued · {counts['running']} running"
