import sqlite3
import time

import pandas as pd
import pytest

from tests.conftest import FAST_MEASURE
from workbench.errors import WorkbenchError
from workbench.jobs import execute
from workbench.search import SPACE, candidates, recommend, search, search_summary
from workbench.specs import ClusterSpec, FinetuneSpec, PruneSpec, QuantSpec, RunSpec, StructuredSpec, TransferSpec
from workbench.store import BUDGET_EXHAUSTED, Store
from workbench.worker import Worker

MLP = RunSpec.from_dict({"name": "mlp", "model": "digits-mlp", "measure": FAST_MEASURE})


@pytest.fixture()
def tiny(tiny_onnx):
    return RunSpec.from_dict({"name": "tiny", "model": {"path": str(tiny_onnx)}, "measure": FAST_MEASURE})


def _settings(spec: RunSpec) -> tuple:
    prune = next((s.sparsity for s in spec.stages if isinstance(s, PruneSpec)), 0.0)
    quant = next((s.weight_bits for s in spec.stages if isinstance(s, QuantSpec)), 32)
    ratio = next((s.ratio for s in spec.stages if isinstance(s, StructuredSpec)), 0.0)
    return prune, quant, ratio


def test_candidates_span_the_space_coarse_to_fine():
    specs = candidates(MLP)
    settings = [_settings(s)[:2] for s in specs]
    assert len(settings) == len(set(settings)) == 6 * 3 - 1 and (0.0, 32) not in settings   # do-nothing left out
    assert settings[0] == (0.7, 8)                                       # nearest the centre first
    first = settings[:4]   # a budget of four already reaches both ends of both axes
    assert {s for s, _ in first} >= {0.0, 0.95} and {b for _, b in first} == {32, 8, 4}
    assert specs[1].name == "mlp [search sparsity=0.95 bits=32]" and [s.kind for s in specs[1].stages] == ["prune"]
    assert candidates(MLP) == specs   # deterministic


def test_with_a_cluster_stage_clustering_alone_is_a_candidate():
    clustered = RunSpec(model=MLP.model, stages=(PruneSpec(sparsity=0.5, finetune=FinetuneSpec(epochs=1)),
                                                 ClusterSpec(clusters=8)))
    specs = candidates(clustered, {"sparsity": (0.0, 0.5, 0.9)})
    assert [[s.kind for s in spec.stages] for spec in specs] == [["prune", "cluster"], ["cluster"],
                                                                  ["prune", "cluster"]]
    tuned = RunSpec(model=MLP.model, stages=(TransferSpec(), FinetuneSpec(epochs=1), PruneSpec(sparsity=0.5)))
    assert [_settings(s)[0] for s in candidates(tuned, {"sparsity": (0.0, 0.5, 0.9)})] == [0.5, 0.9]   # no-op gone


def test_structured_axis_and_bad_spaces(tmp_path, tiny):
    specs = candidates(MLP, {"sparsity": (0.0, 0.5), "ratio": (0.0, 0.25)})
    assert {_settings(s)[::2] for s in specs} == {(0.5, 0.0), (0.0, 0.25), (0.5, 0.25)}
    both = next(s for s in specs if _settings(s)[::2] == (0.5, 0.25))
    assert [s.kind for s in both.stages] == ["structured", "prune"] and both.stages[0].round_to == 8   # SIMD widths
    onnx_points = candidates(tiny, {"ratio": (0.0, 0.5)})   # an ONNX model is converted by the run
    assert [s.stages[0].kind for s in onnx_points] == ["structured"]
    with pytest.raises(WorkbenchError, match="space.depth: unknown axis"):
        candidates(MLP, {"depth": (1,)})
    with pytest.raises(WorkbenchError, match="nothing to try"):
        search(Store(tmp_path), MLP, 1.0, trials=2, space={"sparsity": (0.0,), "bits": (32,)})
    with pytest.raises(WorkbenchError, match="give a budget"):
        search(Store(tmp_path), MLP, 1.0)
    assert Store(tmp_path).list() == []


def test_a_search_keeps_every_candidate_and_recommends_one(tmp_path, tiny):
    store = Store(tmp_path)
    sweep_id, runs = search(store, tiny, max_drop=1.0, trials=3, space={"sparsity": (0.0, 0.5, 0.9), "bits": (32, 8)})
    assert len(runs) == 3 and {r.sweep_id for r in runs} == {sweep_id}
    sweep = store.get_sweep(sweep_id)
    assert sweep.kind == "search" and sweep.deadline is None and sweep.settings["planned"] == 5
    assert "finished yet" in search_summary(store, sweep_id).message
    for run in runs:
        store.claim("w")
        assert execute(store, run.id) == "succeeded"
    summary = search_summary(store, sweep_id)
    frame = summary.frame
    assert list(frame["id"]) == [r.id for r in runs] and set(frame["status"]) == {"succeeded"}
    assert (frame["meets_bar"] == (frame["drop"] <= 1.0)).all() and frame["pareto"].any()
    assert frame["gzip_kb"].gt(0).all() and frame["latency_ms"].gt(0).all()
    if frame["meets_bar"].any():
        best = frame[frame["meets_bar"]].sort_values("gzip_kb").iloc[0]
        assert summary.recommended == best["id"] and summary.message.startswith("Recommended: ")
    strict = search_summary(store, sweep_id, max_drop=0.0)   # another bar, same candidates
    assert (strict.frame["meets_bar"] == (strict.frame["drop"] <= 0.0)).all()
    assert (strict.recommended is not None) != bool(strict.closest) and strict.message
    assert strict.to_dict()["candidates"][0]["id"] == runs[0].id
    with pytest.raises(WorkbenchError, match="max_drop"):
        search_summary(store, sweep_id, max_drop=-1.0)


def test_queued_candidates_are_cancelled_when_the_minutes_run_out(tmp_path, tiny):
    store = Store(tmp_path)
    sweep_id, runs = search(store, tiny, max_drop=1.0, minutes=0.5 / 60, space={"sparsity": (0.5, 0.9)})
    other = store.submit(tiny.to_dict(), "not part of the search")
    assert store.get_sweep(sweep_id).deadline == pytest.approx(time.time() + 0.5, abs=0.5)
    time.sleep(0.6)
    claimed = store.claim("w")   # the expired search runs are skipped, never started
    assert claimed.id == other.id
    for run in runs:
        done = store.get(run.id)
        assert done.status == "cancelled" and done.error == BUDGET_EXHAUSTED
    summary = search_summary(store, sweep_id)
    assert summary.recommended is None and "produced a result (2 cancelled)" in summary.message
    assert BUDGET_EXHAUSTED in summary.message


def test_the_worker_cancels_expired_runs_without_claiming(tmp_path, tiny):
    class NoExecutor:
        name = "none"

        def start(self, store, run):
            raise AssertionError(f"run {run.id} should not start")

        def finished(self):
            return []

        def kill(self, run_id):
            pass

        def active(self):
            return 0

        def shutdown(self):
            pass

    store = Store(tmp_path)
    sweep_id, runs = search(store, tiny, max_drop=1.0, trials=1, minutes=0.2 / 60)
    time.sleep(0.3)
    Worker(store, NoExecutor(), heartbeat_s=0.05, stale_after=1.0, poll_s=0.01).run(until_idle=True)
    assert store.get(runs[0].id).status == "cancelled"


def test_an_old_store_gains_the_sweeps_table(tmp_path):
    store = Store(tmp_path)
    run = store.submit({"model": {"sample": "digits-mlp"}}, "kept")
    with sqlite3.connect(store.path) as conn:   # make it look like a schema v1 store
        conn.execute("DROP TABLE sweeps")
        conn.execute("UPDATE schema_version SET version = 1")
    again = Store(tmp_path)
    assert again.get(run.id).name == "kept"
    assert again.add_sweep("abc", "search", None, {"max_drop": 2}).settings == {"max_drop": 2}
    with pytest.raises(WorkbenchError, match="sweep nope: not recorded"):
        again.get_sweep("nope")


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"label": "#1 x", "ratio": 0.0, "gzip_x": 2.0, "latency_ms": 0.01, "pareto": False, "error": ""}
    frame = pd.DataFrame([base | row for row in rows])
    frame["meets_bar"] = (frame["status"] == "succeeded") & (frame["drop"] <= 1.0)
    return frame


def test_recommend_never_answers_nothing():
    rows = [{"id": 1, "status": "succeeded", "drop": 0.5, "gzip_kb": 30.0},
            {"id": 2, "status": "succeeded", "drop": 0.9, "gzip_kb": 10.0},
            {"id": 3, "status": "succeeded", "drop": 4.0, "gzip_kb": 5.0},
            {"id": 4, "status": "failed", "drop": None, "gzip_kb": None, "error": "boom"}]
    best, closest, message = recommend(_frame(rows), 1.0, "size")
    assert best == 2 and closest == () and "the smallest of the 2 candidate(s) within 1 pt" in message
    best, closest, message = recommend(_frame(rows[2:]), 1.0, "size")
    assert best is None and closest == (3,) and "No candidate stays within 1 pt" in message and "drop 4.00" in message
    pending = _frame([*rows[:2], {"id": 6, "status": "running", "drop": None, "gzip_kb": None}])
    assert recommend(pending, 1.0, "latency")[2].endswith("(2 finished, 0 on the Pareto front). 1 still to run.")
    _, _, message = recommend(_frame([{"id": 5, "status": "queued", "drop": None, "gzip_kb": None}]), 1.0, "size")
    assert message.startswith("No candidate has finished yet (1 queued)")
    _, _, message = recommend(_frame(rows[3:]), 1.0, "latency")
    assert message == "None of the 1 candidate(s) produced a result (1 failed). First error: boom"
    noisy = _frame([{**rows[1], "acc_change": "within noise"}])
    assert "drop 0.90 pt (within noise), gzip 10.0 KB" in recommend(noisy, 1.0, "size")[2]


def test_default_space_is_sparsity_by_bits():
    assert set(SPACE) == {"sparsity", "bits"} and 0.0 in SPACE["sparsity"] and 32 in SPACE["bits"]


def test_the_packed_objective_recommends_the_smallest_weights_packed(tmp_path, tiny):
    clustered = RunSpec.from_dict({**tiny.to_dict(), "stages": [{"cluster": {"clusters": 4}}]})
    with pytest.raises(WorkbenchError, match="objective packed: the recipe has no cluster stage"):
        search(Store(tmp_path), tiny, 100.0, trials=2, space={"sparsity": (0.0, 0.5)}, objective="packed")
    with pytest.raises(WorkbenchError, match="space.bits: the recipe clusters its weights"):
        search(Store(tmp_path), clustered, 100.0, trials=2, space={"sparsity": (0.5,), "bits": (32, 8)})
    store = Store(tmp_path)
    sweep_id, runs = search(store, clustered, 100.0, trials=3, space={"sparsity": (0.0, 0.5, 0.9)},
                            objective="packed")   # sparsity 0: clustering alone, a candidate too
    for run in runs:
        store.claim("w")
        assert execute(store, run.id) == "succeeded"
    summary = search_summary(store, sweep_id)
    frame = summary.frame
    assert frame["packed_kb"].gt(0).all() and frame["packed_x"].gt(1).all()
    smallest = frame.sort_values("packed_kb").iloc[0]
    assert smallest["sparsity"] == 0.9 and summary.recommended == smallest["id"]
    assert "the smallest packed of the 3 candidate(s)" in summary.message and "weights.packed" in summary.message
    by_size = search_summary(store, sweep_id, objective="size")   # the same candidates by gzip of the file
    assert by_size.frame["packed_kb"].equals(frame["packed_kb"]) and "the smallest of" in by_size.message
