"""The Learn page (AppTest): the explainers render and follow their sliders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import fresh_app_env
from tests.test_compare import finished_home

PAGE = str(Path(__file__).resolve().parent.parent / "views" / "learn.py")


@pytest.fixture(autouse=True)
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_explainers_follow_their_sliders():
    at = page()
    assert not at.exception
    assert metric(at, "cells zeroed") == "32 of 64"
    at.slider(key="learn_sparsity").set_value(90).run()
    assert metric(at, "cells zeroed") == "58 of 64"
    matrix = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert [layer["mark"]["type"] for layer in matrix["layer"]] == ["rect", "text"]
    assert metric(at, "levels") == "16"
    at.slider(key="learn_bits").set_value(2).run()
    assert metric(at, "levels") == "4" and metric(at, "storage vs float32") == "16× smaller"
    titles = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
    assert "4 levels at 2 bits (orange)" in titles and "dense matmul time vs zeros" in titles


def test_cpu_flags_and_no_runs_of_our_own():
    at = page()
    flags = next(d.value for d in at.dataframe if "flag" in d.value.columns)
    assert {"avx2", "avx512_vnni", "amx_int8"} <= set(flags["flag"])
    assert not any("Your own pruned runs" in m.value for m in at.markdown)


def test_shows_measured_pruned_runs(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(finished_home(tmp_path_factory)["home"]))
    at = page()
    assert not at.exception
    assert any("Your own pruned runs" in m.value for m in at.markdown)
    pruned = at.dataframe[1].value
    assert sorted(pruned["sparsity"].round(2)) == [0.5, 0.9] and "speedup@1" in pruned


def test_method_explainers_show_a_2_4_mask_and_a_rank():
    at = page()
    assert metric(at, "cells zeroed (2:4)") == "32 of 64"
    at.slider(key="learn_energy").set_value(50).run()
    low = int(metric(at, "rank kept").split()[0])
    at.slider(key="learn_energy").set_value(99).run()
    assert int(metric(at, "rank kept").split()[0]) > low
    assert all(title in " ".join(e.label for e in at.expander) for title in
               ("N:M (2:4)", "Rewinding", "Reconstruction", "magnitude vs LAMP", "Quantization-aware training",
                "Distillation", "Low-rank", "clustering"))


def test_the_lamp_explainer_shows_each_rankings_share_per_layer():
    at = page()
    at.slider(key="learn_lamp_sparsity").set_value(95).run()
    table = next(d.value for d in at.dataframe if list(d.value.columns) == ["magnitude", "lamp", "wanda"])
    assert list(table.index) == ["fc1", "fc2", "fc3"] and not table["magnitude"].equals(table["lamp"])
    assert table["wanda"]["fc2"] > table["magnitude"]["fc2"]    # the hidden activations are small against pixels
    sizes = [64 * 300, 300 * 100, 100 * 10]   # digits-mlp: both rankings remove 95% overall, spread differently
    for ranking in table:
        assert sum(table[ranking] * sizes) / sum(sizes) == pytest.approx(0.95, abs=1e-3)


def test_the_wanda_explainer_counts_the_weights_each_ranking_keeps_per_pixel():
    at = page()
    at.slider(key="learn_wanda_sparsity").set_value(90).run()
    assert not at.exception
    (caption,) = [c.value for c in at.caption if "pixels are blank" in c.value]
    blank, magnitude, wanda = (int(n) for n in re.findall(r"(\d+) pixels are blank.*magnitude keeps (\d+) "
                                                          r"weights on them, Wanda (\d+)", caption)[0])
    assert blank >= 3 and magnitude > 0 and wanda == 0     # pixels 0, 32, 39 are blank in every digit
    titles = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
    assert {"pixel RMS", "kept by magnitude", "kept by wanda"} <= set(titles)


def test_the_channels_first_explainer_packs_more_weights_in_the_same_bytes():
    at = page()
    (card,) = [m for m in at.metric if m.label.startswith("kept in ") and m.label.endswith(" full model at 90%")]
    assert 4000 < int(card.label.split()[2].replace(",", "")) < 5000      # bytes, as packed (checksum included)
    full = int(card.value.replace(",", ""))
    thin = next(m for m in at.metric if m.label == "kept, 50% of the channels removed first")
    assert full == 5020 and int(thin.value.replace(",", "")) > full   # digits-mlp packed for real, one shot
    assert "17,600 weights left, at 6" in thin.proto.help             # 64-150-50-10, about 60% sparsity
    bits = next(m for m in at.metric if m.label == "position bits per kept weight")
    assert bits.proto.delta.startswith("-")                            # a denser mask: cheaper positions
    at.slider(key="learn_thin").set_value(80).run()
    assert not at.exception and "all of them, dense" in next(
        m for m in at.metric if m.label == "kept, 80% of the channels removed first").proto.help


def test_is_an_accuracy_change_real_follows_its_sliders():
    at = page()
    assert metric(at, "verdict") == "within noise" and metric(at, "p-value") == "0.625"   # 3 wrong, 1 right
    at.slider(key="learn_noise_better").set_value(0).run()
    at.slider(key="learn_noise_worse").set_value(6).run()
    assert metric(at, "verdict") == "drop" and metric(at, "p-value") == "0.031"
    assert metric(at, "accuracy change") == "-1.67 pt"
    at.slider(key="learn_noise_worse").set_value(0).run()
    assert metric(at, "verdict") == "identical"
