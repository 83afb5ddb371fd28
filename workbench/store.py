"""The run store: one SQLite database (WAL) plus a `runs/<id>/` artifact folder per run.

The runs table is the queue. Every state change is one short transaction on a short-lived
connection, so several processes (app, CLI, workers) can share the store. Claiming uses
`BEGIN IMMEDIATE`, so a queued run goes to exactly one worker. Callers get frozen `Run`
dataclasses and never see rows. The schema carries a version; `MIGRATIONS` upgrades older stores in
place.

A sweep may be recorded in the sweeps table with a kind ("search"), its settings and a deadline. Runs
of a sweep still queued after its deadline are cancelled ("search budget exhausted") by `expire_sweeps`,
which `claim` also does first, so an expired run is never started.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

SCHEMA_VERSION = 2
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED = frozenset({"succeeded", "failed", "cancelled", "interrupted"})

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        status TEXT NOT NULL DEFAULT 'queued',
        spec TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        metrics TEXT,
        error TEXT,
        sweep_id TEXT,
        worker_id TEXT,
        heartbeat REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_status ON runs(status, id);
    CREATE INDEX runs_sweep ON runs(sweep_id);
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started REAL NOT NULL,
        heartbeat REAL NOT NULL,
        stopped REAL
    );
    """,
    2: """
    CREATE TABLE sweeps (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        kind TEXT NOT NULL DEFAULT 'sweep',
        deadline REAL,
        settings TEXT
    )
    """,
}
BUDGET_EXHAUSTED = "search budget exhausted"


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    created: float
    started: float | None
    finished: float | None
    status: str
    spec: dict[str, Any]
    progress: float
    stage: str
    message: str
    metrics: dict[str, Any] | None
    error: str | None
    sweep_id: str | None
    worker_id: str | None
    heartbeat: float | None
    cancel_requested: bool
    attempts: int

    @property
    def done(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Sweep:
    id: str
    created: float
    kind: str                          # "sweep" or "search"
    deadline: float | None             # epoch seconds; queued runs are cancelled after it
    settings: dict[str, Any]


def _run(row: sqlite3.Row) -> Run:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    data["metrics"] = json.loads(data["metrics"]) if data["metrics"] else None
    data["cancel_requested"] = bool(data["cancel_requested"])
    return Run(**data)


def worker_identity() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


class Store:
    """All reads and writes of runs. Safe to use from many threads and processes at once."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        self.runs_dir = self.home / "runs"
        self.path = self.home / "workbench.db"
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(f"{self.home}: cannot create the data dir ({exc.strerror})") from None
        self._migrate()

    # --- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            if write:
                conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks
            yield conn
            if write:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _migrate(self) -> None:
        with self._db() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        with self._db(write=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if current > SCHEMA_VERSION:
                raise WorkbenchError(f"{self.path}: store schema v{current} is newer than this workbench "
                                     f"(v{SCHEMA_VERSION}); upgrade the workbench")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                _script(conn, MIGRATIONS[version])
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def run_dir(self, run_id: int) -> Path:
        return self.runs_dir / str(int(run_id))

    # --- submitting and reading -----------------------------------------------------------------

    def submit(self, spec: dict[str, Any], name: str = "", sweep_id: str | None = None) -> Run:
        with self._db(write=True) as conn:
            cur = conn.execute("INSERT INTO runs (name, created, spec, sweep_id) VALUES (?, ?, ?, ?)",
                               (name, time.time(), json.dumps(spec), sweep_id))
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _run(row)

    def get(self, run_id: int) -> Run:
        with self._db() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise WorkbenchError(f"run {run_id}: no such run")
        return _run(row)

    def list(self, status: str | None = None, sweep_id: str | None = None, limit: int = 200) -> list[Run]:
        """Newest first."""
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if sweep_id:
            where.append("sweep_id = ?")
            args.append(sweep_id)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._db() as conn:
            return [_run(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

    def counts(self) -> dict[str, int]:
        with self._db() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {r[0]: r[1] for r in rows}

    # --- sweeps with a deadline -----------------------------------------------------------------

    def add_sweep(self, sweep_id: str, kind: str = "sweep", deadline: float | None = None,
                  settings: dict[str, Any] | None = None) -> Sweep:
        with self._db(write=True) as conn:
            conn.execute("INSERT INTO sweeps (id, created, kind, deadline, settings) VALUES (?, ?, ?, ?, ?)",
                         (sweep_id, time.time(), kind, deadline, json.dumps(settings or {})))
        return self.get_sweep(sweep_id)

    def get_sweep(self, sweep_id: str) -> Sweep:
        with self._db() as conn:
            row = conn.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            raise WorkbenchError(f"sweep {sweep_id}: not recorded (only searches record their settings)")
        return Sweep(**{**dict(row), "settings": json.loads(row["settings"] or "{}")})

    def expire_sweeps(self) -> list[int]:
        """Cancel the queued runs of sweeps whose deadline has passed; returns their ids."""
        with self._db(write=True) as conn:
            return _expire(conn, time.time())

    # --- the worker side ------------------------------------------------------------------------

    def claim(self, worker_id: str) -> Run | None:
        """Atomically take the oldest queued run for `worker_id` (None if the queue is empty). Queued runs
        of sweeps past their deadline are cancelled first, never claimed."""
        now = time.time()
        with self._db(write=True) as conn:
            _expire(conn, now)
            row = conn.execute(
                "UPDATE runs SET status = 'running', worker_id = ?, started = ?, heartbeat = ?, progress = 0, "
                "stage = 'claimed', message = '', attempts = attempts + 1 "
                "WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1) RETURNING *",
                (worker_id, now, now),
            ).fetchone()
        return _run(row) if row else None

    def set_progress(self, run_id: int, fraction: float, stage: str, message: str,
                     worker_id: str | None = None) -> bool:
        """Record progress of a running run; False if it is no longer running (e.g. reaped) or, when
        `worker_id` is given, no longer this worker's attempt (reaped, retried and claimed again)."""
        with self._db(write=True) as conn:
            cur = conn.execute(
                "UPDATE runs SET progress = ?, stage = ?, message = ?, heartbeat = ? "
                "WHERE id = ? AND status = 'running' AND (? IS NULL OR worker_id = ?)",
                (max(0.0, min(1.0, fraction)), stage[:200], message[:500], time.time(), int(run_id),
                 worker_id, worker_id),
            )
        return cur.rowcount == 1

    def finish(self, run_id: int, status: str, metrics: dict[str, Any] | None = None,
               error: str | None = None, worker_id: str | None = None) -> bool:
        """Move a running run to a finished status; False if it was not running any more (or, with
        `worker_id`, is no longer that worker's attempt)."""
        if status not in FINISHED:
            raise ValueError(f"not a finished status: {status}")
        with self._db(write=True) as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished = ?, metrics = ?, error = ?, "
                "progress = CASE WHEN ? = 'succeeded' THEN 1 ELSE progress END "
                "WHERE id = ? AND status = 'running' AND (? IS NULL OR worker_id = ?)",
                (status, time.time(), json.dumps(metrics) if metrics is not None else None, error, status,
                 int(run_id), worker_id, worker_id),
            )
        return cur.rowcount == 1

    def cancel_requested(self, run_id: int) -> bool:
        with self._db() as conn:
            row = conn.execute("SELECT cancel_requested, status FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return row is None or bool(row[0]) or row[1] != "running"

    # --- workers and crash recovery -------------------------------------------------------------

    def register_worker(self, worker_id: str) -> None:
        host, pid = worker_identity()
        now = time.time()
        with self._db(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO workers (id, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?)",
                         (worker_id, host, pid, now, now))

    def worker_heartbeat(self, worker_id: str) -> None:
        now = time.time()
        with self._db(write=True) as conn:
            conn.execute("UPDATE workers SET heartbeat = ? WHERE id = ?", (now, worker_id))
            conn.execute("UPDATE runs SET heartbeat = ? WHERE worker_id = ? AND status = 'running'",
                         (now, worker_id))

    def stop_worker(self, worker_id: str) -> None:
        with self._db(write=True) as conn:
            conn.execute("UPDATE workers SET stopped = ? WHERE id = ?", (time.time(), worker_id))

    def live_workers(self, stale_after: float = 10.0) -> list[dict[str, Any]]:
        """Workers serving this store now: not stopped, a heartbeat within `stale_after` s and, on this host,
        a live process. Each as {id, host, pid}."""
        host, _ = worker_identity()
        with self._db() as conn:
            rows = conn.execute("SELECT id, host, pid FROM workers WHERE stopped IS NULL AND heartbeat >= ?",
                                (time.time() - stale_after,)).fetchall()
        return [dict(row) for row in rows if row["host"] != host or _alive(row["pid"])]

    def reap(self, stale_after: float = 30.0) -> list[int]:
        """Mark runs `interrupted` whose worker is gone: its process died (same host) or its heartbeat
        is older than `stale_after` seconds. Returns the run ids reaped."""
        host, _ = worker_identity()
        now = time.time()
        with self._db(write=True) as conn:
            rows = conn.execute(
                "SELECT r.id, r.worker_id, r.heartbeat, w.host, w.pid, w.stopped FROM runs r "
                "LEFT JOIN workers w ON w.id = r.worker_id WHERE r.status = 'running'"
            ).fetchall()
            reaped = []
            for row in rows:
                reason = _gone(row, host, now, stale_after)
                if reason:
                    conn.execute("UPDATE runs SET status = 'interrupted', finished = ?, error = ? WHERE id = ?",
                                 (now, f"interrupted: {reason}; retry to run it again", row["id"]))
                    reaped.append(row["id"])
        return reaped

    # --- user actions ---------------------------------------------------------------------------

    def request_cancel(self, run_id: int) -> Run:
        """Queued runs are cancelled at once; running runs are asked to stop (the worker confirms)."""
        with self._db(write=True) as conn:
            conn.execute("UPDATE runs SET status = 'cancelled', finished = ?, error = 'cancelled before start' "
                         "WHERE id = ? AND status = 'queued'", (time.time(), int(run_id)))
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (int(run_id),))
        return self.get(run_id)

    def retry(self, run_id: int) -> Run:
        """Put a failed, cancelled or interrupted run back in the queue (same id, attempts kept)."""
        with self._db(write=True) as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'queued', started = NULL, finished = NULL, progress = 0, stage = '', "
                "message = '', metrics = NULL, error = NULL, worker_id = NULL, heartbeat = NULL, "
                "cancel_requested = 0 WHERE id = ? AND status IN ('failed', 'cancelled', 'interrupted')",
                (int(run_id),),
            )
        run = self.get(run_id)
        if cur.rowcount != 1:
            raise WorkbenchError(f"run {run_id}: cannot retry a {run.status} run")
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
        return run

    def delete(self, run_id: int) -> None:
        with self._db(write=True) as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if row is None:
                raise WorkbenchError(f"run {run_id}: no such run")
            if row[0] == "running":
                raise WorkbenchError(f"run {run_id}: is running; cancel it first")
            conn.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)


def _expire(conn: sqlite3.Connection, now: float) -> list[int]:
    rows = conn.execute(
        "UPDATE runs SET status = 'cancelled', finished = ?, error = ? WHERE status = 'queued' AND sweep_id IN "
        "(SELECT id FROM sweeps WHERE deadline IS NOT NULL AND deadline < ?) RETURNING id",
        (now, BUDGET_EXHAUSTED, now),
    ).fetchall()
    return sorted(r[0] for r in rows)


def _gone(row: sqlite3.Row, host: str, now: float, stale_after: float) -> str | None:
    if row["pid"] is None:
        return f"its worker {row['worker_id']} is unknown"
    if row["stopped"] is not None:
        return f"worker {row['worker_id']} stopped while the run was in progress"
    if row["host"] == host and not _alive(row["pid"]):
        return f"worker {row['worker_id']} (pid {row['pid']}) died"
    if row["heartbeat"] is not None and now - row["heartbeat"] > stale_after:
        return f"no heartbeat from worker {row['worker_id']} for {now - row['heartbeat']:.0f} s"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _script(conn: sqlite3.Connection, script: str) -> None:
    """Run a migration's statements inside the caller's transaction (executescript would commit)."""
    for statement in (s.strip() for s in script.split(";")):
        if statement:
            conn.execute(statement)
