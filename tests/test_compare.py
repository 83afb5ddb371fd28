"""workbench.compare: run frames from real report.json files, the Pareto front, safe artifact paths."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FAST_MEASURE
from workbench import compare
from workbench.errors import WorkbenchError
from workbench.store import Store

_FINISHED: dict[str, object] = {}


def mlp_onnx(path):
    """The trained digits-mlp sample as a plain ONNX graph (Flatten + Gemm/Relu), built without torch, so
    runs on it skip the torch export and take well under a second each."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    from workbench.settings import get_settings

    weights = load_file(str(get_settings().samples_dir / "digits-mlp.safetensors"))
    nodes = [helper.make_node("Flatten", ["input"], ["h0"], name="flatten")]
    for i, layer in enumerate(("fc1", "fc2", "fc3")):
        out = "logits" if layer == "fc3" else f"g{i}"
        inputs = [f"h{i}", f"{layer}.weight", f"{layer}.bias"]
        nodes.append(helper.make_node("Gemm", inputs, [out], name=layer, transB=1))
        if layer != "fc3":
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
    graph = helper.make_graph(
        nodes, "digits_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights[k].astype(np.float32), k) for k in sorted(weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def finished_home(tmp_path_factory) -> dict:
    """A data dir with finished runs, built once per test session (several test modules share it):
    run 1 a single run (prune 70% + simulated 4-bit), run 2 failed, runs 3-6 a sweep
    (sparsity 0.5/0.9 x bits 8/32) -- the newest, so Compare opens with it."""
    if not _FINISHED:
        from workbench import jobs
        from workbench.specs import RunSpec

        root = tmp_path_factory.mktemp("finished")
        home, model = root / "home", mlp_onnx(root / "mlp.onnx")
        store = Store(home)
        measure = dict(FAST_MEASURE)
        single = RunSpec.from_dict({"name": "single", "model": {"path": str(model)}, "measure": measure, "stages": [
            {"prune": {"sparsity": 0.7}}, {"quantize": {"method": "fake", "weight_bits": 4}}]})
        missing = {"path": str(root / "missing.onnx")}
        broken = RunSpec.from_dict({"name": "broken", "model": missing, "measure": measure})
        sweep_base = RunSpec.from_dict({"model": {"path": str(model)}, "measure": measure,
                                        "stages": [{"prune": {"sparsity": 0.5}}]})
        jobs.submit(store, single)
        jobs.submit(store, broken)
        sweep_id, _ = jobs.submit_sweep(store, sweep_base, {"sparsity": [0.5, 0.9], "bits": [8, 32]})
        while (run := store.claim("test")) is not None:
            jobs.execute(store, run.id)
        _FINISHED.update(home=home, sweep_id=sweep_id, model=model)
    return _FINISHED


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    info = finished_home(tmp_path_factory)
    return Store(info["home"]), info


@pytest.fixture(scope="module")
def frame(finished):
    store, _ = finished
    return compare.runs_frame(store, store.list(status="succeeded"))


def test_the_runs_finished_as_planned(finished):
    store, info = finished
    assert [r.status for r in reversed(store.list())] == ["succeeded", "failed"] + ["succeeded"] * 4
    assert len(store.list(sweep_id=info["sweep_id"])) == 4


def test_one_row_per_run_with_deltas_ratios_and_speedups(frame):
    assert list(frame["id"]) == [1, 3, 4, 5, 6]
    np.testing.assert_allclose(frame["d_accuracy"], frame["accuracy"] - frame["base_accuracy"])
    np.testing.assert_allclose(frame["gzip_x"], frame["base_file_bytes"] / frame["gzip_bytes"])
    np.testing.assert_allclose(frame["speedup@1"], frame["base_ort_ms@1"] / frame["ort_ms@1"])
    assert {"ort_ms@32", "file_kb", "min_storage_x", "sparsity", "bits", "method", "label"} <= set(frame.columns)
    assert frame["base_accuracy"].iloc[0] > 0.95  # the real trained weights


def test_settings_method_and_claims_come_from_the_recipe_and_report(frame):
    row = frame.set_index("id")
    def settings(i):
        return row.loc[i, "setting_sparsity"], row.loc[i, "setting_bits"], row.loc[i, "quant_method"]

    assert settings(1) == (0.7, 4, "fake")
    assert row.loc[1, "method"] == "prune 70% global magnitude → simulated 4-bit"
    assert row.loc[1, "label"] == "#1 70% · 4b sim"
    assert "file size" in row.loc[1, "simulated"] and row.loc[1, "claim:accuracy"] == "simulated"
    assert settings(3) == (0.5, 8, "static")
    assert row.loc[3, "claim:file size"] == "real" and "file size" in row.loc[3, "real"]
    assert row.loc[4, "claim:file size"] == "none" and row.loc[4, "bits"] == 32  # pruned only: stored densely
    assert row.loc[6, "sparsity"] == pytest.approx(0.9, abs=0.01)


def test_a_run_without_report_falls_back_to_the_store_summary(finished, tmp_path):
    store, _ = finished
    run = store.get(3)
    moved = Store(tmp_path / "empty")  # same run, but its folder (and report.json) is not there
    row = compare.run_row(moved, run)
    assert row["accuracy"] == pytest.approx(run.metrics["final"]["accuracy"])
    assert row["gzip_x"] > 1 and row["d_accuracy"] <= 0


def test_pareto_front_basics():
    df = pd.DataFrame({"size": [10, 20, 5, 30, 20, np.nan], "acc": [0.9, 0.95, 0.5, 0.94, 0.95, 1.0]})
    assert list(compare.pareto_front(df, "size", "acc")) == [True, True, True, False, True, False]
    # maximize x instead: the largest size with the best accuracy wins alone
    assert list(compare.pareto_front(df, "size", "acc", minimize_x=False)) == [False, True, False, True, True, False]
    assert compare.pareto_front(df.iloc[:0], "size", "acc").empty


def test_tradeoff_frame_adds_the_baseline_as_a_reference_point(frame):
    both = compare.tradeoff_frame(frame, "gzip_kb")
    assert list(both["kind"]).count("baseline") == 1 and both["pareto"].any()
    base = both[both["kind"] == "baseline"].iloc[0]
    assert base["accuracy"] == pytest.approx(frame["base_accuracy"].iloc[0])
    assert base["pareto"]  # nothing is more accurate than the untouched model


def test_layer_sparsity_from_the_exported_model(finished):
    store, _ = finished
    layers = compare.layer_frame(store, 5, "#5")   # sweep: sparsity 0.9, int8
    assert list(layers["layer"]) == ["fc1", "fc2", "fc3"]
    assert (layers["params"] * layers["sparsity"]).sum() / layers["params"].sum() == pytest.approx(0.9, abs=0.01)
    assert compare.layer_frame(store, 2).empty  # failed: no model.onnx


def test_history_claims_and_sweep_frames(finished, frame):
    store, info = finished
    report = compare.load_report(store, 1)
    assert set(compare.claims_frame(report)["kind"]) <= {"real", "simulated", "estimate", "none"}
    assert list(compare.history_frame(report, "#1").columns) == ["run", "round", "sparsity", "accuracy"]
    fake = {"variants": [{"history": [{"round": r, "sparsity": s, "accuracy": a}
                                      for r, s, a in ((1, 0.2, 0.99), (2, 0.36, 0.98))]}]}
    assert compare.history_frame(fake, "x")["sparsity"].tolist() == [0.2, 0.36]
    assert compare.history_frame(fake, "x", min_rounds=3).empty
    sweep = compare.sweep_rows(frame)
    assert sorted(sweep["id"]) == [3, 4, 5, 6] and (sweep["sweep_id"] == info["sweep_id"]).all()
    cells = compare.sweep_frame(sweep)
    assert len(cells) == 4 and set(cells["setting_bits"]) == {8, 32}
    assert compare.sweep_rows(frame[frame["id"].isin([1, 3])]).empty  # one run of the sweep is no heatmap


def test_default_selection(finished, tmp_path):
    store, _ = finished
    assert compare.default_selection(store) == [3, 4, 5, 6]   # the newest run belongs to a sweep
    other = Store(tmp_path / "other")
    assert compare.default_selection(other) == []
    for name in ("a", "b", "c"):
        run = other.submit({"model": {"sample": "digits-cnn" if name == "b" else "digits-mlp"}}, name=name)
        other.claim("w")
        other.finish(run.id, "succeeded", {"rows": [], "final": {}})
    assert compare.default_selection(other, model="digits-mlp") == [1, 3]
    assert compare.default_selection(other, model="unknown", limit=2) == [2, 3]


def test_artifact_path_stays_inside_the_run_folder(finished, tmp_path):
    store, _ = finished
    assert compare.artifact_path(store, 3, "model").name == "model.onnx"
    assert compare.artifact_path(store, 3, "recipe").read_text().startswith("version")
    with pytest.raises(WorkbenchError, match="unknown artifact"):
        compare.artifact_path(store, 3, "../../etc/passwd")
    with pytest.raises(WorkbenchError, match="no model.onnx"):
        compare.artifact_path(store, 2, "model")
    evil = Store(tmp_path / "evil")
    run = evil.submit({"model": {"sample": "digits-mlp"}})
    evil.run_dir(run.id).mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, evil.run_dir(run.id) / "recipe.yaml")
    with pytest.raises(WorkbenchError, match="outside"):
        compare.artifact_path(evil, run.id, "recipe")
    assert compare.load_report(evil, run.id) is None


def test_broken_report_json_is_ignored(finished, tmp_path):
    store = Store(tmp_path / "h")
    run = store.submit({"model": {"sample": "digits-mlp"}})
    store.run_dir(run.id).mkdir(parents=True)
    (store.run_dir(run.id) / "report.json").write_text("{not json")
    assert compare.load_report(store, run.id) is None
    (store.run_dir(run.id) / "report.json").write_text(json.dumps({"variants": []}))
    assert compare.run_row(store, store.get(run.id))["id"] == run.id  # no baseline: still a row, no numbers


def test_dense_matmul_does_the_same_work_whatever_the_zeros():
    dense, sparse = compare.dense_matmul_times((0.0, 0.9), repeats=3)
    assert dense["mult_adds"] == sparse["mult_adds"]
    assert sparse["useful_mult_adds"] < 0.2 * dense["useful_mult_adds"]
    assert dense["median_ms"] > 0 and sparse["median_ms"] > 0
