"""workbench.charts: each builder's Vega-Lite spec has the marks and encodings the pages rely on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench import charts, compare
from workbench.preview import fake_quantize


@pytest.fixture
def runs() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1, 2, 3], "label": ["#1 50%", "#2 90%", "#3 90% · int8"], "model": ["m"] * 3,
        "method": ["prune 50%", "prune 90%", "prune 90% → static int8"],
        "accuracy": [0.97, 0.80, 0.79], "base_accuracy": [0.99] * 3,
        "file_kb": [200.0, 200.0, 55.0], "gzip_kb": [110.0, 40.0, 12.0], "min_storage_kb": [100.0, 30.0, 11.0],
        "base_file_bytes": [204800] * 3, "base_gzip_bytes": [190000] * 3, "base_min_storage_bytes": [200000] * 3,
        "ort_ms@1": [0.02, 0.02, 0.03], "base_ort_ms@1": [0.021, 0.019, 0.02],
    })


def layers_of(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def marks(chart) -> list[str]:
    return [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
            for layer in layers_of(chart.to_dict())]


def test_metric_bars_with_a_baseline_rule_or_ticks(runs):
    spec = charts.accuracy_bars(runs).to_dict()
    bars, values, rule = spec["layer"]
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["y"]["field"] == "accuracy"
    assert values["mark"]["type"] == "text" and values["encoding"]["text"]["format"] == ".3f"   # readable gaps
    assert bars["encoding"]["x"]["sort"] == list(runs["label"])  # run order, not alphabetical
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["field"] == "baseline"
    # each run measured its own baseline latency: one tick per bar instead of a single rule
    assert marks(charts.latency_bars(runs, 1)) == ["bar", "tick"]
    assert marks(charts.metric_bars(runs, "gzip_kb", "gzip")) == ["bar"]


def test_size_bars_group_the_three_sizes(runs):
    spec = charts.size_bars(runs).to_dict()
    bars, rule = spec["layer"]
    assert bars["mark"]["type"] == "bar" and rule["mark"]["type"] == "rule"
    assert bars["encoding"]["xOffset"]["field"] == "measure" and bars["encoding"]["y"]["field"] == "kb"
    long = charts.size_bars(runs).layer[0].data
    assert len(long) == 9 and set(long["measure"]) == {"file", "gzip", "min (estimate)"}   # no clustered run


def test_size_bars_show_the_packed_size_of_clustered_runs_only(runs):
    long = charts.size_bars(runs.assign(packed_kb=[None, 5.0, None])).layer[0].data
    packed = long[long["measure"] == "weights.packed"]
    assert list(packed["label"]) == ["#2 90%"] and list(packed["kb"]) == [5.0]
    assert len(long) == 10


def test_each_size_keeps_its_colour_whichever_sizes_are_shown(runs):
    def colours(df):
        scale = charts.size_bars(df).to_dict()["layer"][0]["encoding"]["color"]["scale"]
        return dict(zip(scale["domain"], scale["range"], strict=True))

    assert colours(runs) == colours(runs.assign(packed_kb=[None, 5.0, None]))
    assert colours(runs)["min (estimate)"] != colours(runs)["weights.packed"]


def test_tradeoff_scatter_highlights_the_pareto_frontier(runs):
    frame = compare.tradeoff_frame(runs, "gzip_kb")
    chart = charts.tradeoff_scatter(frame, "gzip_kb", "accuracy")
    assert marks(chart) == ["line", "point", "point", "text"]
    line, points, best, _ = chart.to_dict()["layer"]
    assert line["mark"]["color"] == best["mark"]["color"] == charts.FRONTIER
    assert best["mark"]["size"] > points["mark"]["size"]
    assert line["encoding"]["x"]["field"] == "gzip_kb" and line["encoding"]["y"]["field"] == "accuracy"
    front = chart.layer[0].data
    assert front["pareto"].all() and list(front["label"]) == ["#3 90% · int8", "#2 90%", "#1 50%", "m baseline"]


def test_layer_sparsity_heatmap_and_rounds():
    layers = pd.DataFrame({"run": ["#1", "#1", "#2", "#2"], "layer": ["fc1", "fc2"] * 2, "op": ["Gemm"] * 4,
                           "params": [10, 20] * 2, "sparsity": [0.5, 0.6, 0.9, 0.95]})
    spec = charts.layer_sparsity_bars(layers).to_dict()
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["xOffset"]["field"] == "run"
    sweep = pd.DataFrame({"setting_sparsity": [0.5, 0.5, 0.9, 0.9], "setting_bits": [8, 32, 8, 32],
                          "accuracy": [0.97, 0.98, 0.2, 0.3]})
    heat = charts.sweep_heatmap(sweep).to_dict()
    rect, text = heat["layer"]
    assert rect["mark"]["type"] == "rect" and text["mark"]["type"] == "text"
    assert rect["encoding"]["color"]["field"] == "accuracy" and text["encoding"]["text"]["field"] == "accuracy"
    assert rect["encoding"]["x"]["field"] == "sparsity" and rect["encoding"]["y"]["field"] == "setting_bits"
    history = pd.DataFrame({"run": ["#1"] * 3, "round": [1, 2, 3], "sparsity": [0.2, 0.36, 0.49],
                            "accuracy": [0.99, 0.98, 0.97]})
    line = charts.rounds_line(history).to_dict()
    assert line["mark"] == {"type": "line", "point": True} and line["encoding"]["x"]["field"] == "sparsity"


def test_class_heatmap_is_centred_on_no_change():
    frame = pd.DataFrame({"id": [1, 1, 2, 2], "label": ["#1", "#1", "#2", "#2"], "class": [0, 8, 0, 8],
                          "samples": [36, 35] * 2, "baseline_right": [36, 35] * 2, "right": [36, 31, 35, 35],
                          "change": [0, -4, -1, 0], "change_pt": [0.0, -400 / 35, -100 / 36, 0.0]})
    rect, text = charts.class_heatmap(frame).to_dict()["layer"]
    assert rect["mark"]["type"] == "rect" and text["encoding"]["text"] == {"field": "change", "type": "quantitative",
                                                                           "format": "+d"}
    scale = rect["encoding"]["color"]["scale"]
    assert scale["scheme"] == "redblue" and scale["domain"] == [-400 / 35, 400 / 35]   # white is "no change"
    assert rect["encoding"]["y"]["sort"] == ["#1", "#2"]
    one = charts.class_heatmap(frame.assign(change_pt=[0.0, -100 / 35, -100 / 36, 0.0])).to_dict()["layer"][0]
    assert one["encoding"]["color"]["scale"]["domain"] == [-10.0, 10.0]   # one sample is not painted dark red


def test_magnitude_mask_zeroes_the_smallest_weights():
    w = np.random.default_rng(0).standard_normal((8, 8))
    cells = charts.magnitude_mask_frame(w, 0.25)
    assert (~cells["kept"]).sum() == 16
    assert cells.loc[~cells["kept"], "weight"].abs().max() < cells.loc[cells["kept"], "weight"].abs().min()
    assert marks(charts.weight_matrix(cells)) == ["rect", "text"]
    assert charts.magnitude_mask_frame(w, 0.0)["kept"].all()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_levels_match_fake_quantize(bits):
    w = np.random.default_rng(1).standard_normal(2000).astype(np.float32)
    levels = charts.quant_levels(w, bits)
    assert len(levels) == 2 ** bits
    used = np.unique(fake_quantize(w, bits))
    assert np.isclose(used[:, None], levels[None, :], atol=1e-6).any(axis=1).all()
    assert marks(charts.levels_histogram(w, bits)) == ["bar", "rule"]


def test_timing_bars():
    frame = pd.DataFrame([{"sparsity": s, "median_ms": 1.0, "mult_adds": 10, "useful_mult_adds": 5} for s in (0, 0.9)])
    spec = charts.timing_bars(frame).to_dict()
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["y"]["field"] == "median_ms"
