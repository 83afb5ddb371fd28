import sqlite3
import subprocess
import sys

import pytest

from workbench.errors import WorkbenchError
from workbench.store import SCHEMA_VERSION, Store

SPEC = {"model": {"sample": "digits-mlp"}}


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "home")


def test_schema_is_versioned_and_reopening_keeps_data(store):
    run = store.submit(SPEC, "a")
    again = Store(store.home)
    assert again.get(run.id).name == "a"
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused(store):
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(WorkbenchError, match="newer than this workbench"):
        Store(store.home)


def test_claim_is_fifo_and_exactly_once(store):
    ids = [store.submit(SPEC, str(i)).id for i in range(3)]
    claimed = [store.claim("w1"), store.claim("w2"), store.claim("w1"), store.claim("w2")]
    assert [r.id for r in claimed[:3]] == ids and claimed[3] is None
    assert {r.status for r in claimed[:3]} == {"running"} and claimed[0].attempts == 1


def test_progress_and_finish_only_while_running(store):
    run = store.submit(SPEC)
    assert not store.set_progress(run.id, 0.5, "x", "y")  # queued: not yet
    store.claim("w")
    assert store.set_progress(run.id, 0.5, "1: prune", "round 1")
    assert store.get(run.id).stage == "1: prune"
    assert store.finish(run.id, "succeeded", {"final": {"accuracy": 0.9}})
    assert not store.finish(run.id, "failed")  # finished runs stay finished
    done = store.get(run.id)
    assert done.status == "succeeded" and done.progress == 1.0 and done.metrics["final"]["accuracy"] == 0.9


def test_cancel_queued_at_once_running_by_request(store):
    queued, running = store.submit(SPEC), store.submit(SPEC)
    store.claim("w")  # takes `queued` (oldest)
    assert store.request_cancel(running.id).status == "cancelled"
    assert store.request_cancel(queued.id).cancel_requested
    assert store.cancel_requested(queued.id)


def test_retry_and_delete(store):
    run = store.submit(SPEC)
    store.claim("w")
    store.finish(run.id, "failed", error="boom")
    store.run_dir(run.id).mkdir()
    again = store.retry(run.id)
    assert again.status == "queued" and again.error is None and not store.run_dir(run.id).exists()
    with pytest.raises(WorkbenchError, match="cannot retry a queued run"):
        store.retry(run.id)
    store.claim("w")
    with pytest.raises(WorkbenchError, match="cancel it first"):
        store.delete(run.id)
    store.finish(run.id, "succeeded")
    store.delete(run.id)
    with pytest.raises(WorkbenchError, match="no such run"):
        store.get(run.id)


def test_reap_marks_runs_of_a_dead_worker_interrupted(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.register_worker("ghost")
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE workers SET pid = ? WHERE id = 'ghost'", (dead.pid,))
    live = store.submit(SPEC)
    store.register_worker("alive")
    ghost_run = store.submit(SPEC)
    store.claim("alive")
    store.claim("ghost")
    assert store.reap() == [ghost_run.id]
    reaped = store.get(ghost_run.id)
    assert reaped.status == "interrupted" and "died" in reaped.error
    assert store.get(live.id).status == "running"


def test_reap_by_stale_heartbeat(store):
    store.register_worker("w")
    run = store.submit(SPEC)
    store.claim("w")
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET heartbeat = heartbeat - 100")
    assert store.reap(stale_after=30) == [run.id]
    assert "no heartbeat" in store.get(run.id).error


def test_a_stale_attempt_cannot_write_over_a_new_one(store):
    run = store.submit(SPEC)
    store.claim("old")
    store.finish(run.id, "interrupted", error="reaped")
    store.retry(run.id)
    store.claim("new")
    assert not store.set_progress(run.id, 0.9, "x", "y", worker_id="old")
    assert not store.finish(run.id, "failed", error="late", worker_id="old")
    assert store.finish(run.id, "succeeded", worker_id="new")
