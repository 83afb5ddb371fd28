"""The Compare page (AppTest): default selection, metric cards, the charts' Vega-Lite marks, table, downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import chart_frames, fresh_app_env
from tests.test_compare import finished_home
from workbench import compare
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parent.parent / "views" / "compare.py")


@pytest.fixture(autouse=True)
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


@pytest.fixture
def finished(tmp_path_factory, monkeypatch):
    info = finished_home(tmp_path_factory)
    monkeypatch.setenv("WORKBENCH_HOME", str(info["home"]))
    return info


def page(**query) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def specs(at: AppTest) -> dict[str, dict]:
    """Each drawn chart's Vega-Lite spec, by title."""
    out = {}
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        title = spec.get("title")
        out[title if isinstance(title, str) else title["text"]] = spec
    return out


def marks(spec: dict) -> list[str]:
    return [layer["mark"]["type"] for layer in spec.get("layer", [spec])]


def test_empty_store_says_what_to_do():
    at = page()
    assert not at.exception
    assert "No finished runs yet" in at.info[0].value


def test_opens_with_the_latest_sweep_and_draws_every_chart(finished):
    at = page()
    assert not at.exception
    assert at.multiselect(key="compare_runs").value == [3, 4, 5, 6]
    assert at.query_params["runs"] == "3,4,5,6"   # shareable: the selection is in the URL
    charts = specs(at)
    assert marks(charts["accuracy"]) == ["bar", "text", "rule"]
    assert marks(charts["size (KB); dashed: baseline file"]) == ["bar", "rule"]
    assert marks(charts["ORT latency @ batch 1 (ms)"])[0] == "bar"
    frontier = charts["accuracy vs gzip size (KB)"]
    assert marks(frontier) == ["line", "point", "point", "text"]
    assert frontier["layer"][0]["mark"]["color"] == "#f58518"
    assert frontier["title"]["subtitle"] == "orange: the Pareto frontier"
    assert "accuracy vs ORT latency @ batch 1 (ms)" in charts
    assert marks(charts["accuracy change per class"]) == ["rect", "text"]
    assert marks(charts["per-layer sparsity of the exported model"]) == ["bar"]
    assert marks(charts["sweep: accuracy by sparsity × bits"]) == ["rect", "text"]


def test_metric_cards_have_deltas_vs_the_baseline(finished):
    at = page()
    cards = {m.label: m for m in at.metric}
    assert {"accuracy", "gzip size", "ORT @ batch 1"} <= set(cards)
    assert all("vs baseline" in m.proto.delta for m in at.metric if m.label == "gzip size")
    accuracy = [m for m in at.metric if m.label == "accuracy"]
    assert len(accuracy) == 4
    frame = compare.runs_frame(Store(finished["home"]), Store(finished["home"]).list(sweep_id=finished["sweep_id"]))
    for card, change in zip(accuracy, frame.sort_values("id")["acc_change"], strict=True):
        assert card.proto.delta.endswith("within noise") == (change == "within noise")   # a noise change says so
        assert "McNemar" in card.proto.help
    latency = [m for m in at.metric if m.label == "ORT @ batch 1"]
    for card, kind in zip(latency, frame.sort_values("id")["claim:latency @ batch 1"], strict=True):
        assert card.proto.delta.endswith("within noise") == (kind == "none")   # as the claim: noise is grey
        assert ("run-to-run spread" in card.proto.help) == (kind == "none")


def test_runs_are_set_against_a_chosen_run_sample_by_sample(finished):
    at = page()
    assert at.selectbox(key="compare_versus").value == 3            # the first selected run
    table = next(d.value for d in at.dataframe if "went_wrong" in d.value)
    assert list(table["id"]) == [4, 5, 6] and set(table["verdict"]) <= {"identical", "within noise", "drop", "gain"}
    at.selectbox(key="compare_versus").set_value(5).run()
    table = next(d.value for d in at.dataframe if "went_wrong" in d.value)
    assert list(table["id"]) == [3, 4, 6] and not at.exception
    assert table.set_index("id").loc[3, "verdict"] == "gain"         # 50% + int8 against 90% one-shot


def test_selection_from_the_url_and_the_batch_switch(finished):
    at = page(runs="1,3")
    assert at.multiselect(key="compare_runs").value == [1, 3]
    charts = specs(at)
    assert not any(title.startswith("sweep") for title in charts)   # two unrelated runs: no heatmap
    at.radio(key="compare_batch").set_value(32).run()
    assert "ORT latency @ batch 32 (ms)" in specs(at)
    at.multiselect(key="compare_runs").set_value([1]).run()
    assert at.query_params["runs"] == "1"


def test_table_downloads_and_claims(finished):
    at = page(runs="1,3")
    table = at.dataframe[0].value
    assert list(table["id"]) == [1, 3] and {"accuracy", "gzip_x", "speedup@1", "ort_ms@32"} <= set(table.columns)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Compressed model (model.onnx)") == 2 and labels.count("Recipe (recipe.yaml)") == 2
    assert labels.count("Script (reproduce.py)") == 2 and "Packed weights (weights.packed)" not in labels
    assert "Download table (CSV)" in labels
    text = " ".join(m.value for m in at.markdown)
    assert "SIMULATED accuracy" in text and "REAL file size" in text     # run 1 fake-quant, run 3 int8
    assert "(simulated)" in text and "stored as float32" in text


def test_a_run_whose_files_are_gone_still_shows(finished, tmp_path):
    home = Path(finished["home"])
    report = home / "runs" / "4" / "report.json"
    hidden = tmp_path / "report.json"
    report.rename(hidden)
    try:
        at = page(runs="3,4")
        assert not at.exception
        assert list(at.dataframe[0].value["id"]) == [3, 4]   # from the store's summary rows
    finally:
        hidden.rename(report)


@pytest.fixture(scope="module")
def methods_home(tmp_path_factory):
    """Finished runs of the newer methods on the torch digits-mlp, each pruning in two rounds first:
    1 with LR rewinding, then k=16 clustering (writes weights.packed); 2 with weight rewinding, then
    structured 50% (channels removed)."""
    from tests.conftest import FAST_MEASURE
    from workbench import jobs
    from workbench.specs import RunSpec
    from workbench.store import Store

    store = Store(tmp_path_factory.mktemp("methods") / "home")
    measure = dict(FAST_MEASURE, torch_eager=False)
    rounds = {"sparsity": 0.75, "schedule": "iterative", "per_round": 0.5, "finetune": {"epochs": 1, "lr": 0.01}}
    for rewind, then in (("lr", {"cluster": {"clusters": 16}}), ("weight", {"structured": {"ratio": 0.5}})):
        stages = [{"prune": {**rounds, "rewind": rewind}}, then]
        jobs.submit(store, RunSpec.from_dict({"model": "digits-mlp", "measure": measure, "stages": stages}))
    while (run := store.claim("test")) is not None:
        assert jobs.execute(store, run.id) == "succeeded", store.get(run.id).error
    return store.home


def test_clustered_structured_and_rewinding_runs_show_their_results(methods_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(methods_home))
    at = page(runs="1,2")
    assert not at.exception
    packed = [m for m in at.metric if m.label == "packed size"]
    assert len(packed) == 1 and "vs baseline file" in packed[0].proto.delta    # only the clustered run
    text = " ".join(m.value for m in at.markdown)
    assert "REAL packed size" in text and "weights.packed" in text
    assert "**What each stage did**" in text and "removed 50% of channels per group" in text   # stage notes
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Packed weights (weights.packed)") == 1 and labels.count("Script (reproduce.py)") == 2
    (graph,) = [b for b in at.get("download_button") if b.proto.label == "Network without them (graph.onnx)"]
    assert "workbench unpack run-1-graph.onnx run-1.packed" in graph.proto.help
    assert "the whole model is" in text   # the packed claim counts the network too
    assert labels.count("PyTorch model (model.pt2)") == 2     # both end as torch models (clustered, structured)
    methods = [c.value for c in at.caption]     # each card names its method
    assert any("LR rewinding" in m and "cluster k=16" in m for m in methods)
    assert any("weight rewinding" in m and "structured 50% channels" in m for m in methods)
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[1, "packed_x"] > 10 and table["packed_kb"].isna().sum() == 1
    assert table.loc[2, "file_x"] > 1.5          # structured: channels removed, a really smaller file
    at.radio(key="compare_size").set_value("stored_kb").run()   # offered: a run wrote weights.packed
    front = chart_frames(at)["accuracy vs stored size (KB)"].set_index("label")["stored_kb"]   # the frontier
    report = compare.load_report(Store(methods_home), 1)
    graph_kb = report["variants"][-1]["facts"]["graph_gzip_bytes"] / 1024
    assert graph_kb > 0.1        # clustered: its packed weights and the network they need
    assert front[table.loc[1, "label"]] == pytest.approx(table.loc[1, "packed_kb"] + graph_kb, abs=0.06)
    lines = set(chart_frames(at)["accuracy per pruning round"]["run"])
    assert len(lines) == 2 and any(line.endswith("iterative, LR rewinding") for line in lines)
    assert any(line.endswith("iterative, weight rewinding") for line in lines)


def test_why_isnt_it_faster_opens_per_run(finished):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params.update(runs="3,4")
    at.session_state["why_4"] = True            # the expander of run 4 is open, run 3's stays closed
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Not faster" in text and ":red-badge[cause]" in text     # 50% zeros stored densely, no int8
    assert len([e for e in at.expander if e.label.startswith("#")]) >= 2


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished search under a 1-point bar on the ONNX mlp: 3 candidates of sparsity {0, 0.5, 0.95} x bits {32, 8}."""
    from tests.conftest import FAST_MEASURE
    from tests.test_compare import mlp_onnx
    from workbench import jobs
    from workbench.search import search
    from workbench.specs import RunSpec
    from workbench.store import Store

    root = tmp_path_factory.mktemp("searched")
    store = Store(root / "home")
    base = RunSpec.from_dict({"model": {"path": str(mlp_onnx(root / "mlp.onnx"))}, "measure": FAST_MEASURE})
    sweep_id, _ = search(store, base, 1.0, trials=3, space={"sparsity": (0.0, 0.5, 0.95), "bits": (32, 8)})
    while (run := store.claim("test")) is not None:
        jobs.execute(store, run.id)
    return root / "home", sweep_id


def test_a_search_shows_the_bar_the_recommendation_and_the_pareto_set(searched, monkeypatch):
    home, sweep_id = searched
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    at = page()
    assert not at.exception and at.multiselect(key="compare_runs").value == [1, 2, 3]
    assert any(f"Search {sweep_id}" in m.value for m in at.markdown)
    assert (at.success or at.info)[0].value.startswith(("Recommended", "No candidate"))
    table = next(d.value for d in at.dataframe if "meets_bar" in d.value)
    assert len(table) == 3 and table["pareto"].any()
    titles = [json.loads(c.proto.spec)["title"] for c in at.get("vega_lite_chart")]
    assert [t["text"] for t in titles if isinstance(t, dict)].count("accuracy vs gzip size (KB)") == 2  # + search


def test_seed_repeats_and_the_random_baseline_get_their_tables(tmp_path, monkeypatch):
    from tests.conftest import FAST_MEASURE
    from tests.test_compare import mlp_onnx
    from workbench import jobs
    from workbench.specs import RunSpec
    from workbench.store import Store

    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    store = Store(home)
    base = RunSpec.from_dict({"model": {"path": str(mlp_onnx(tmp_path / "mlp.onnx"))}, "measure": FAST_MEASURE,
                              "stages": [{"prune": {"sparsity": 0.6}}]})
    _, runs = jobs.submit_sweep(store, base, {"prune.method": ["magnitude", "random"], "seed": [0, 1]})
    while (run := store.claim("test")) is not None:
        jobs.execute(store, run.id)
    at = page(runs=",".join(str(r.id) for r in runs))
    assert not at.exception
    headers = [h.value for h in at.subheader]
    assert "Over seeds: mean ± std" in headers and "Ranked vs random pruning" in headers
    frames = {len(d.value): d.value for d in at.dataframe}
    over_seeds = next(f for f in frames.values() if "seeds" in f)
    assert sorted(over_seeds["n"]) == [2, 2] and set(over_seeds["prune_method"]) == {"magnitude", "random"}
    pairs = next(f for f in frames.values() if "advantage_mean" in f)
    assert list(pairs["n"]) == [2] and pairs["advantage_mean"].iloc[0] > 0   # magnitude beats chance at 60%


def finished_runs(home: Path, recipes: list[dict]) -> None:
    """Run digits-mlp at 50% once per recipe (fields over the defaults), in order, into the store at `home`."""
    from tests.conftest import FAST_MEASURE
    from workbench import jobs
    from workbench.specs import RunSpec

    store = Store(home)
    for fields in recipes:
        jobs.submit(store, RunSpec.from_dict({"model": "digits-mlp", "measure": FAST_MEASURE,
                                              "stages": [{"prune": {"sparsity": 0.5}}], **fields}))
    while (run := store.claim("test")) is not None:
        jobs.execute(store, run.id)


def test_runs_on_different_data_are_flagged_and_keep_separate_baselines(tmp_path, monkeypatch):
    finished_runs(tmp_path / "home", [{"data": "digits"}, {"data": {"builtin": "digits", "classes": [0, 1]}}])
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    at = page(runs="1,2")
    assert not at.exception
    (warning,) = at.warning
    assert warning.value.startswith("These runs were scored on 2 different data (digits, digits · classes 0,1)")
    table = at.dataframe[0].value
    assert list(table["data"]) == ["digits", "digits · classes 0,1"]
    scatter = chart_frames(at)["accuracy vs gzip size (KB)"]
    assert sorted(scatter.loc[scatter["kind"] == "baseline", "label"]) == [
        "digits-mlp baseline on digits", "digits-mlp baseline on digits · classes 0,1"]


def test_runs_timed_with_different_threads_are_flagged(tmp_path, monkeypatch):
    from tests.conftest import FAST_MEASURE

    finished_runs(tmp_path / "home", [{"measure": {**FAST_MEASURE, "threads": t}} for t in (1, 2, 1)])
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    at = page(runs="1,2,3")
    assert not at.exception
    (warning,) = at.warning
    assert warning.value.startswith("These runs were timed under 2 different conditions (1 thread on ")
    assert "; 2 threads on " in warning.value
    at = page(runs="1,3")
    assert not at.exception and not at.warning


def test_a_change_that_rounds_to_zero_is_grey_not_a_red_rise():
    """A transfer-only run's size and latency equal its baseline's: '+0%' used to show as a red rise."""
    from ui.runs_view import _pct, _points

    assert _pct(100.2, 100.0) == {"delta": "±0% vs baseline", "delta_color": "off", "delta_arrow": "off"}
    assert _pct(50.0, 100.0) == {"delta": "-50% vs baseline", "delta_color": "inverse"}
    assert _pct(1.0, float("nan")) == {"delta": None}
    assert _pct(106.0, 100.0, noise=True) == {"delta": "+6%, within noise", "delta_color": "off"}
    assert _pct(100.2, 100.0, noise=True)["delta"] == "±0%, within noise"
    assert _points(0.0001) == {"delta": "±0.000 vs baseline", "delta_color": "off", "delta_arrow": "off"}
    assert _points(-0.02) == {"delta": "-0.020 vs baseline", "delta_color": "normal"}
    assert _points(-0.02, "drop") == {"delta": "-0.020 vs baseline", "delta_color": "normal"}
    assert _points(-0.008, "within noise") == {"delta": "-0.008, within noise", "delta_color": "off"}
