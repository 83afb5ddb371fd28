"""Faults injected into real runs: kill -9 of the worker in every pipeline stage, a run that raises, a run
that exhausts its memory limit, a full disk under the artifacts, and app sessions submitting and cancelling
at once while two workers share the store. After each: the store is consistent, no run stays `running`,
the error is shown, and every run is accounted for (retried to success where the fault allows it)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability import faults
from tests.reliability.corpus import digits_onnx
from workbench import jobs
from workbench.store import Store

pytestmark = pytest.mark.reliability


def _onnx(folder: Path) -> Path:
    path = folder / "digits.onnx"
    path.write_bytes(digits_onnx().SerializeToString())
    return path


def _kill_worker_at(store: Store, home: Path, run_id: int, stage: str) -> bool:
    """Start a worker, SIGKILL it once `run_id` reports `stage`; reap. True if the kill landed in that stage."""
    proc = faults.worker(home)
    seen: dict[str, bool | None] = {}

    def reached() -> bool:
        seen["at"] = faults.stage_reached(store, run_id, stage)
        return seen["at"] is not None

    try:
        faults.wait_for(reached, 180, f"run {run_id} to reach {stage}", every=0.01)
        kids = faults.children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        faults.stop(proc)
    faults.wait_for(lambda: not any(map(faults.alive, kids)), 20, "the run process to die with its worker")
    landed = bool(seen["at"]) and store.get(run_id).stage == stage
    assert store.reap() == [run_id] and store.get(run_id).status == "interrupted"
    return landed


def test_kill_9_of_the_worker_in_every_stage_loses_no_run(tmp_path, tally):
    """One run, killed (worker and run process) in each stage in turn, retried after each kill; then it
    runs to success. Each kill must leave it `interrupted` with the reason, never `running`."""
    home = tmp_path / "home"
    store = Store(home)
    run = store.submit(faults.two_stages(faults.wide_onnx(tmp_path)), "killed in every stage")
    fates = []
    for stage in faults.STAGES:
        for attempt in range(4):   # a stage can be over before the poll sees it: then try again
            if attempt or fates:
                store.retry(run.id)
            tally.faults_injected += 1
            landed = _kill_worker_at(store, home, run.id, stage)
            after = store.get(run.id)
            fates.append(f"run {run.id}: {after.status} after a kill in {stage}: {after.error}"
                         if after.status != "interrupted" or "died" not in after.error else "")
            if landed:
                break
        else:
            pytest.fail(f"never caught run {run.id} in stage {stage}")

    store.retry(run.id)
    assert faults.worker(home, "--until-idle").wait(timeout=300) == 0
    lost = [fate for fate in fates if fate] + faults.lost_runs(store, {run.id: {"succeeded"}})
    tally.runs("kill -9 in every stage", len(fates) + 1, lost)
    assert not lost, lost
    assert store.get(run.id).attempts == len(fates) + 1


def test_a_run_that_raises_fails_with_its_error_and_the_next_run_works(tmp_path, monkeypatch, tally):
    from workbench import stages

    store = Store(tmp_path / "home")
    spec = {**faults.quick(_onnx(tmp_path)), "stages": [{"prune": {"sparsity": 0.5}}]}
    broken, fine = store.submit(spec, "raises"), store.submit(spec, "fine")

    def boom(*_):
        raise RuntimeError("injected fault in the prune stage")

    with monkeypatch.context() as patch:
        patch.setitem(stages.STAGE_RUNNERS, "prune", boom)
        store.claim("w")
        tally.faults_injected += 1
        assert jobs.execute(store, broken.id) == "failed"
    store.claim("w")
    assert jobs.execute(store, fine.id) == "succeeded"
    error = store.get(broken.id).error
    assert error.splitlines()[0] == "RuntimeError: injected fault in the prune stage"
    assert "Traceback" in error   # the details stay available below the first line
    lost = faults.lost_runs(store, {broken.id: {"failed"}, fine.id: {"succeeded"}})
    tally.runs("a run that raises", 2, lost)
    assert not lost and store.counts()["running"] == 0


def test_a_run_that_exhausts_its_memory_fails_cleanly_and_the_worker_goes_on(tmp_path, tally):
    home = tmp_path / "home"
    store = Store(home)
    hog = store.submit(faults.quick(faults.memory_hog(tmp_path)), "asks for 6.4 GB")
    fine = store.submit(faults.quick(_onnx(tmp_path)), "fine")
    proc = faults.worker(home, "--until-idle", memory_mb=3000)   # address space of the worker and its runs
    tally.faults_injected += 1
    assert proc.wait(timeout=300) == 0
    failed = store.get(hog.id)
    assert failed.status == "failed" and "allocate" in failed.error.splitlines()[0], failed.error
    lost = faults.lost_runs(store, {hog.id: {"failed"}, fine.id: {"succeeded"}})
    tally.runs("memory exhausted", 2, lost)
    assert not lost, lost


@pytest.mark.skipif(not faults.tmpfs_available(), reason="no user+mount namespaces for a private tmpfs here")
def test_a_full_disk_under_the_artifacts_fails_the_run_and_nothing_else(tmp_path, tally):
    """A real full file system: the worker sees HOME/runs as a 64 KB tmpfs (the store itself stays on disk)."""
    home = tmp_path / "home"
    store = Store(home)
    model = faults.wide_onnx(tmp_path)
    full = store.submit(faults.quick(model), "disk full")   # its model.onnx alone is ~300 KB
    proc = faults.worker(home, "--until-idle", tmpfs_kb=64)
    tally.faults_injected += 1
    assert proc.wait(timeout=300) == 0
    run = store.get(full.id)
    assert run.status == "failed" and "No space left on device" in run.error.splitlines()[0], run.error
    after = store.submit(faults.quick(model), "after the disk was freed")
    assert faults.worker(home, "--until-idle").wait(timeout=300) == 0
    lost = faults.lost_runs(store, {full.id: {"failed"}, after.id: {"succeeded"}})
    tally.runs("disk full (tmpfs)", 2, lost)
    assert not lost, lost


def test_a_failing_artifact_write_leaves_no_partial_file(tmp_path, monkeypatch, tally):
    """The same fault injected as an OSError at the rename that publishes each artifact."""
    store = Store(tmp_path / "home")
    spec = faults.quick(_onnx(tmp_path))
    full, after = store.submit(spec, "disk full"), store.submit(spec, "after")
    real_replace = os.replace

    def no_space(src, dst, *args, **kwargs):
        if Path(dst).parent == store.run_dir(full.id):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_space)
        store.claim("w")
        tally.faults_injected += 1
        assert jobs.execute(store, full.id) == "failed"
    assert "could not write artifacts (No space left on device)" in store.get(full.id).error.splitlines()[0]
    assert sorted(p.name for p in store.run_dir(full.id).iterdir()) == ["log.txt"]  # no temp or partial files
    store.claim("w")
    assert jobs.execute(store, after.id) == "succeeded"
    lost = faults.lost_runs(store, {full.id: {"failed"}, after.id: {"succeeded"}})
    tally.runs("disk full (injected)", 2, lost)
    assert not lost, lost


SESSION = """
import json, pathlib, sys, time
from streamlit.testing.v1 import AppTest
app, model, role, sync = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
at = AppTest.from_file(app, default_timeout=180)
at.session_state["model_ref"] = {"path": model}
at.run()
at.switch_page("views/compress.py").run()
(sync / f"ready-{role}-{id(at)}").touch()
while not (sync / "go").exists():   # every session acts at the same moment
    time.sleep(0.01)
if role == "sweep":
    at.multiselect(key="sweep_sparsity").set_value([50, 90])
    at.multiselect(key="sweep_bits").set_value([32])
    at.button(key="launch_sweep").click().run()
else:
    at.button(key="launch_run").click().run()
launched, cancelled = list(at.session_state["last_runs"]), []
if role == "cancel":   # cancel what it launched, from the Runs page
    at.switch_page("views/runs.py").run()
    at.selectbox(key="runs_selected").set_value(launched[-1]).run()
    at.button(key=f"cancel_{launched[-1]}").click().run()
    cancelled.append(launched[-1])
print(json.dumps({"launched": launched, "cancelled": cancelled, "errors": [str(e.value) for e in at.exception]}))
"""


def test_app_sessions_submit_and_cancel_at_once_while_two_workers_share_the_store(tmp_path, tally):
    """Four app sessions, each in its own process (AppTest), act at the same moment: two launch a run,
    one a sweep of two, two cancel the run they launched from the Runs page; two workers serve the store."""
    from tests.app_fixtures import ROOT

    home = tmp_path / "home"
    store = Store(home)
    model = _onnx(tmp_path)   # an ONNX model keeps the runs short (no export)
    env = {**os.environ, "WORKBENCH_HOME": str(home), "WORKBENCH_FAST_MEASURE": "1", "WORKBENCH_AUTO_WORKER": "0"}
    workers = [faults.worker(home), faults.worker(home)]
    sync = tmp_path / "sync"
    sync.mkdir()
    roles = ("run", "sweep", "cancel", "cancel")
    try:
        sessions = [subprocess.Popen([sys.executable, "-c", SESSION, str(ROOT / "app.py"), str(model), role, str(sync)],
                                     env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for role in roles]
        faults.wait_for(lambda: len(list(sync.glob("ready-*"))) == len(roles) or any(p.poll() for p in sessions),
                        300, "every session to open the Compress page")
        (sync / "go").touch()
        results = []
        for proc in sessions:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        ids = [run_id for r in results for run_id in r["launched"]]
        cancelled = {run_id for r in results for run_id in r["cancelled"]}
        tally.faults_injected += len(cancelled)
        faults.wait_for(lambda: all(store.get(i).done for i in ids), 300, "every launched run to finish", every=0.2)
    finally:
        for proc in workers:
            faults.stop(proc)
    expected = {i: ({"cancelled", "succeeded"} if i in cancelled else {"succeeded"}) for i in ids}
    lost = faults.lost_runs(store, expected)
    lost += [f"run {r.id}: claimed {r.attempts} times" for r in store.list() if r.attempts > 1]
    lost += [f"run {r.id}: in the store but launched by no session" for r in store.list() if r.id not in expected]
    tally.runs("4 app sessions at once, 2 workers", len(ids), lost)
    assert [r["errors"] for r in results] == [[]] * 4
    assert len(ids) == len(set(ids)) == 5 and len(cancelled) == 2 and not lost, lost
