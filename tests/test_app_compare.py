"""The Compare page (AppTest): default selection, metric cards, the charts' Vega-Lite marks, table, downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import fresh_app_env
from tests.test_compare import finished_home

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "compare.py")


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
    assert marks(charts["accuracy"]) == ["bar", "rule"]
    assert marks(charts["size (KB); dashed: baseline file"]) == ["bar", "rule"]
    assert marks(charts["ORT latency @ batch 1 (ms)"])[0] == "bar"
    frontier = charts["accuracy vs gzip size (KB)"]
    assert marks(frontier) == ["line", "point", "point", "text"]
    assert frontier["layer"][0]["mark"]["color"] == "#f58518"
    assert frontier["title"]["subtitle"] == "orange: the Pareto frontier"
    assert "accuracy vs ORT latency @ batch 1 (ms)" in charts
    assert marks(charts["per-layer sparsity of the exported model"]) == ["bar"]
    assert marks(charts["sweep: accuracy by sparsity × bits"]) == ["rect", "text"]


def test_metric_cards_have_deltas_vs_the_baseline(finished):
    at = page()
    cards = {m.label: m for m in at.metric}
    assert {"accuracy", "gzip size", "ORT @ batch 1"} <= set(cards)
    assert all("vs baseline" in m.proto.delta for m in at.metric if m.label == "gzip size")
    assert len([m for m in at.metric if m.label == "accuracy"]) == 4


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
