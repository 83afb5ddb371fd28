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
    np.testing.assert_allclose((frame["acc_better"] - frame["acc_worse"]) / 360, frame["d_accuracy"], atol=1e-9)
    assert set(frame["acc_change"]) <= {"identical", "within noise", "drop", "gain"}
    assert ((frame["acc_p"] < 0.05) == frame["acc_change"].isin(["drop", "gain"])).all()


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
    assert row["acc_change"] == compare.run_row(store, run)["acc_change"]   # kept in the store's summary too


def test_runs_against_a_reference_run_sample_by_sample(finished, frame):
    store, _ = finished
    reports = {i: compare.load_report(store, i) for i in frame["id"]}
    versus = compare.versus_frame(frame, reports, 3).set_index("id")
    assert list(versus.index) == [1, 4, 5, 6] and (versus["note"] == "").all()
    np.testing.assert_allclose((versus["went_right"] - versus["went_wrong"]) / 3.6, versus["vs reference (pt)"])
    assert versus.loc[5, "verdict"] == "drop" and versus.loc[5, "p_value"] < 0.001   # 90% one-shot vs 50% + int8
    answers = compare.final_answers(reports[3])
    assert answers.dtype == bool and answers.mean() == pytest.approx(frame.set_index("id").loc[3, "accuracy"])
    old = json.loads(json.dumps(reports[4]))
    del old["variants"][-1]["measurement"]["answers"]                   # a report from before answers were kept
    other = frame.assign(data=np.where(frame["id"] == 5, "digits · classes 0,1", frame["data"]))
    versus = compare.versus_frame(other, {**reports, 4: old}, 3).set_index("id")
    assert versus.loc[4, "note"].startswith("per-sample answers not recorded")
    assert versus.loc[5, "note"] == "scored on digits · classes 0,1, the reference on digits: no pairs"
    assert versus.loc[6, "verdict"] == compare.versus_frame(frame, reports, 3).set_index("id").loc[6, "verdict"]


def test_each_runs_accuracy_change_split_by_class(finished, frame):
    store, _ = finished
    reports = {i: compare.load_report(store, i) for i in frame["id"]}
    classes = compare.class_frame(frame, reports)
    assert set(classes["class"]) == set(range(10)) and set(classes["id"]) == set(frame["id"])
    per_run = classes.groupby("id")
    assert (per_run["samples"].sum() == 360).all()
    net = frame.set_index("id")["acc_better"] - frame.set_index("id")["acc_worse"]
    assert (per_run["change"].sum() == net.loc[per_run["change"].sum().index]).all()   # the classes add up
    np.testing.assert_allclose(classes["change_pt"], 100 * classes["change"] / classes["samples"])
    top = compare.class_frame(frame, reports, limit=2)
    moved = classes.groupby("class")["change"].agg(lambda c: c.abs().sum())
    assert set(top["class"]) == set(moved.sort_values(ascending=False, kind="stable").index[:2])
    old = json.loads(json.dumps(reports[4]))
    old["baseline"]["measurement"].pop("classes")                      # a report from before classes were kept
    assert 4 not in set(compare.class_frame(frame, {**reports, 4: old})["id"])


def test_pareto_front_basics():
    df = pd.DataFrame({"size": [10, 20, 5, 30, 20, np.nan], "acc": [0.9, 0.95, 0.5, 0.94, 0.95, 1.0]})
    assert list(compare.pareto_front(df, "size", "acc")) == [True, True, True, False, True, False]
    # maximize x instead: the largest size with the best accuracy wins alone
    assert list(compare.pareto_front(df, "size", "acc", minimize_x=False)) == [False, True, False, True, True, False]
    assert compare.pareto_front(df.iloc[:0], "size", "acc").empty


def test_runs_scored_on_different_data_get_their_own_baseline_and_frontier():
    """A 3-class transfer at accuracy 1.0 must not push the 10-class digits runs off the frontier: each data
    group has its own baseline point and Pareto front; the data label names the file and class subset."""
    spec = {"model": {"sample": "digits-mlp"}, "data": {"builtin": "digits", "classes": [2, 4, 6]}}
    assert compare.data_label(spec) == "digits · classes 2,4,6"
    user = {"data": {"path": "/home/u/uploads/ab12.csv"}}
    assert compare.data_label(user) == "ab12.csv" and compare.data_label(user, lambda p: "eval.csv") == "eval.csv"
    drawn = {**spec, "data": {"builtin": "digits", "max_samples": 100}}
    assert compare.data_label(drawn) == "digits · a draw of ≤100 samples"   # not the full set's frontier
    assert compare.data_label({**spec, "measure": {"max_eval_samples": 5000}}).endswith("≤5,000 samples")
    df = pd.DataFrame({"label": ["#1", "#2", "#3"], "model": ["digits-mlp"] * 3,
                       "data": ["digits", "digits", "digits · classes 2,4,6"], "gzip_kb": [50.0, 30.0, 20.0],
                       "accuracy": [0.98, 0.97, 1.0], "base_accuracy": [0.99, 0.99, 1.0],
                       "base_gzip_kb": [180.0, 180.0, 180.0]})
    assert compare.data_groups(df) == ["digits", "digits · classes 2,4,6"]
    both = compare.tradeoff_frame(df, "gzip_kb").set_index("label")
    assert list(both.loc[both["kind"] == "baseline"].index) == ["digits-mlp baseline on digits",
                                                                 "digits-mlp baseline on digits · classes 2,4,6"]
    assert both.loc["#1", "pareto"] and both.loc["#2", "pareto"] and both.loc["#3", "pareto"]


def test_tradeoff_frame_adds_the_baseline_as_a_reference_point(frame):
    both = compare.tradeoff_frame(frame, "gzip_kb")
    assert list(both["kind"]).count("baseline") == 1 and both["pareto"].any()
    base = both[both["kind"] == "baseline"].iloc[0]
    assert base["accuracy"] == pytest.approx(frame["base_accuracy"].iloc[0])
    assert base["pareto"]  # nothing is more accurate than the untouched model
    stored = compare.tradeoff_frame(frame, "stored_kb")   # nothing clustered: every run's stored bytes are its file
    base_file = compare.baselines_frame(frame)["file_kb"].iloc[0]
    assert stored["stored_kb"].tolist() == pytest.approx([*frame["file_kb"], base_file])


def test_layer_sparsity_from_the_exported_model(finished):
    store, _ = finished
    layers = compare.layer_frame(store, 5, "#5")   # sweep: sparsity 0.9, int8
    assert list(layers["layer"]) == ["fc1", "fc2", "fc3"]
    assert (layers["params"] * layers["sparsity"]).sum() / layers["params"].sum() == pytest.approx(0.9, abs=0.01)
    assert compare.layer_frame(store, 2).empty  # failed: no model.onnx


def test_layer_names_line_up_across_quantizers():
    names = ["fc1.weight", "fc1.weight_quantized", "fc1.weight_KxN_Q4", "fc1.weight_KxN_Q2", "fc1_fp16"]
    assert {compare.layer_name(n) for n in names} == {"fc1"}


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


# --- rigour: requested vs achieved, seeds, the random baseline ----------------------------------

def test_requested_vs_achieved_columns(frame):
    row = frame.set_index("id")
    assert row.loc[1, "requested_sparsity"] == 0.7 and row.loc[1, "sparsity"] == pytest.approx(0.7, abs=0.005)
    assert (row.loc[1, "requested_bits"], row.loc[1, "bits"], row.loc[1, "storage_bits"]) == (4, 32, 4)  # simulated
    assert row.loc[1, "prune_method"] == "magnitude" and np.isnan(row.loc[1, "requested_channels_removed"])
    sweep = row.loc[[3, 4, 5, 6]]
    np.testing.assert_allclose(sweep["requested_sparsity"], sweep["setting_sparsity"])
    assert (abs(sweep["sparsity"] - sweep["requested_sparsity"]) < 0.005).all()   # "asked 90%, got 89.9x%"
    assert list(sweep["requested_bits"]) == list(sweep["setting_bits"])
    int8 = sweep[sweep["requested_bits"] == 8]
    assert (int8["bits"] == 8).all() and (int8["storage_bits"] == 8).all()
    assert (frame["params_x"] == 1).all() and frame["channels_removed"].isna().all()   # nothing removed


def test_requested_of_and_channels_removed():
    req = compare.requested_of({"stages": [{"structured": {"ratio": 0.3}}, {"cluster": {"clusters": 16}}]})
    assert req["requested_channels_removed"] == 0.3 and req["requested_bits"] == 4 and req["prune_method"] is None
    assert compare.requested_of({"stages": [{"distill": {"width": 0.25}}]})["requested_channels_removed"] == 0.75
    assert compare.requested_of({"stages": [{"prune": {"nm": "2:4", "sparsity": 0.5, "method": "random"}},
                                            {"quantize": {"method": "fp16", "weight_bits": 16}}]}) == {
        "requested_sparsity": 0.5, "requested_channels_removed": pytest.approx(np.nan, nan_ok=True),
        "requested_bits": 16, "prune_method": "random"}
    history = {"pruned_layers": [{"layer": "conv", "before": [32, 1, 3, 3], "after": [12, 1, 3, 3]},
                                 {"layer": "fc", "before": [64, 32], "after": [32, 12]},
                                 {"layer": "head", "before": [10, 64], "after": [10, 32]}],
               "skipped": [["head", "classifier: its outputs are the model's outputs"]]}
    report = {"variants": [{"history": [history]}, {"history": [{"epochs": 3}]}]}
    assert compare.channels_removed(report) == pytest.approx(1 - (12 + 32) / (32 + 64))
    assert np.isnan(compare.channels_removed({"variants": [{"history": []}]}))


def recipe(seed: int = 0, sparsity: float = 0.9, method: str = "magnitude", name: str = "") -> dict:
    return {"name": name, "seed": seed, "model": {"sample": "digits-mlp"}, "stages": [
        {"prune": {"sparsity": sparsity, "method": method, "seed": seed}},
        {"finetune": {"epochs": 2, "seed": seed}}]}


def test_config_key_ignores_seeds_and_names_only(frame):
    assert compare.config_key(recipe(0)) == compare.config_key(recipe(7, name="seed 7"))
    assert compare.config_key(recipe(0)) != compare.config_key(recipe(0, sparsity=0.5))
    assert compare.config_key(recipe(0)) != compare.config_key(recipe(0, method="random"))
    assert compare.seed_of(recipe(3)) == 3
    assert compare.seed_of({"seed": 0, "stages": [{"prune": {"finetune": {"seed": 5}}}]}) == 5
    assert compare.config_key({"model": {"sample": "digits-mlp"}}) == compare.config_key(
        {"model": "digits-mlp", "seed": 1})   # defaults filled in before comparing
    assert frame["config"].is_unique and (frame["seed"] == 0).all()


def test_seed_summary_mean_std_exact():
    a, b = compare.config_key(recipe(0)), compare.config_key(recipe(0, sparsity=0.5))
    df = pd.DataFrame({"id": [1, 2, 3, 4], "config": [a, a, b, a], "seed": [2, 0, 0, 1],
                       "model": "digits-mlp", "method": ["m90", "m90", "m50", "m90"],
                       "accuracy": [0.90, 0.92, 0.99, 0.97], "d_accuracy": [-0.09, -0.07, 0.0, -0.02],
                       "gzip_x": [4.0, 5.0, 2.0, 6.0], "speedup@1": [1.0, 1.1, 1.0, 0.9]})
    summary = compare.seed_summary(df)
    assert list(summary["method"]) == ["m90", "m50"] and list(summary["n"]) == [3, 1]
    assert list(summary["seeds"]) == ["0,1,2", "0"]
    first = summary.iloc[0]
    acc = np.array([0.90, 0.92, 0.97])
    assert first["accuracy_mean"] == pytest.approx(acc.mean())
    assert first["accuracy_std"] == pytest.approx(acc.std(ddof=1))
    assert first["gzip_x_mean"] == 5.0 and first["gzip_x_std"] == 1.0
    assert first["speedup@1_std"] == pytest.approx(0.1) and first["d_accuracy_mean"] == pytest.approx(-0.06)
    assert np.isnan(summary.iloc[1]["accuracy_std"])   # one run: no spread to report
    assert compare.seed_summary(pd.DataFrame()).empty


def test_random_baseline_pairs_equal_recipes_by_seed():
    rows = []
    for i, (sparsity, method, seed, acc) in enumerate(
            [(0.9, "magnitude", 0, 0.95), (0.9, "random", 0, 0.90), (0.9, "magnitude", 1, 0.97),
             (0.9, "random", 1, 0.88), (0.5, "magnitude", 0, 0.99), (0.5, "random", 0, 0.98),
             (0.7, "magnitude", 0, 0.96)], start=1):   # the last has no random partner
        spec = recipe(seed, sparsity, method)
        rows.append({"id": i, "model": "digits-mlp", "method": compare.method_label(spec), "accuracy": acc,
                     "config": compare.config_key(spec), "seed": seed, **compare.requested_of(spec)})
    df = pd.DataFrame(rows)
    pairs = compare.random_baseline_frame(df, per_seed=True)
    assert list(zip(pairs["id_ranked"], pairs["id_random"], strict=True)) == [(1, 2), (3, 4), (5, 6)]
    assert set(pairs["ranking"]) == {"magnitude"}
    np.testing.assert_allclose(pairs["advantage"], [0.05, 0.09, 0.01])
    summary = compare.random_baseline_frame(df)
    assert list(summary["requested_sparsity"]) == [0.9, 0.5] and list(summary["n"]) == [2, 1]
    assert summary.iloc[0]["method"].startswith("prune 90% global magnitude")
    assert summary.iloc[0]["advantage_mean"] == pytest.approx(0.07)
    assert summary.iloc[0]["advantage_std"] == pytest.approx(np.std([0.05, 0.09], ddof=1))
    assert summary.iloc[0]["accuracy_random_mean"] == pytest.approx(0.89)
    assert compare.random_baseline_frame(df[df["prune_method"] == "magnitude"]).empty
    wanda = recipe(0, 0.9, "wanda")        # another ranking of the same recipe gets its own row
    df = pd.concat([df, pd.DataFrame([{"id": 8, "model": "digits-mlp", "method": compare.method_label(wanda),
                                       "accuracy": 0.99, "config": compare.config_key(wanda), "seed": 0,
                                       **compare.requested_of(wanda)}])], ignore_index=True)
    rows = compare.random_baseline_frame(df)
    assert list(zip(rows["ranking"], rows["n"], strict=True)) == [("magnitude", 2), ("magnitude", 1), ("wanda", 1)]
    assert rows.iloc[2]["advantage_mean"] == pytest.approx(0.09)      # 0.99 against random's 0.90 (seed 0)


def test_every_stage_kind_has_a_label_and_a_short_tag():
    from workbench.specs import STAGES, RunSpec

    stages = [{kind: {"sparsity": 0.5, "nm": "2:4"} if kind == "prune" else {}} for kind in STAGES]
    spec = RunSpec.from_dict({"model": "digits-cnn", "stages": stages}).to_dict()
    label = compare.method_label(spec)
    for text in ("2:4 N:M", "structured 50% channels", "cluster k=16", "QAT 4-bit", "distill width 0.5",
                 "low-rank 90% energy", "transfer head"):
        assert text in label
    short = compare.short_label(3, compare.settings_of(spec))
    assert short == "#3 struct 50% · k=16 · QAT 4b · student 0.5x · transfer · SVD 90% · 50% · int8 · ft"


def test_the_prune_label_says_how_the_kept_weights_were_solved():
    label = compare.method_label({"stages": [{"prune": {"sparsity": 0.9, "reconstruct": "obs"}}]})
    assert label == "prune 90% global magnitude + OBS"
    nm = compare.method_label({"stages": [{"prune": {"sparsity": 0.5, "nm": "2:4", "reconstruct": "refit"}}]})
    assert nm == "prune 2:4 N:M magnitude + least-squares refit"
    assert compare.method_label({"stages": [{"prune": {"sparsity": 0.5}}]}) == "prune 50% global magnitude"


def test_stage_notes_keep_run_order_and_survive_old_or_missing_reports():
    report = {"baseline": {"name": "baseline", "notes": ["converted"]},
              "variants": [{"name": "1: structured", "notes": ["removed 50%", "left whole: fc"]},
                           {"name": "2: finetune", "notes": []}]}
    assert compare.stage_notes(report) == [("baseline", "converted"), ("1: structured", "removed 50%"),
                                           ("1: structured", "left whole: fc")]
    assert compare.stage_notes(None) == [] and compare.stage_notes({"baseline": {}}) == []
