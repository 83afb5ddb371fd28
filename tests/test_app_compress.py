"""Compress page: the preview follows the sliders, presets and the URL set them, Launch runs to the end."""

import pytest

from tests.app_fixtures import chart_specs, drain_queue, fresh_app_env, metric, open_app, rerun_until, texts
from workbench.presets import PRESETS, CompressSettings, preset_spec
from workbench.specs import ModelRef, PruneSpec, QuantSpec, RunSpec
from workbench.store import Store

PAGE = "pages/compress.py"


@pytest.fixture(autouse=True)
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


def test_sliders_move_the_preview_and_bitwidth_3_is_simulated():
    at = open_app(PAGE)
    assert not at.exception
    assert metric(at, "nonzero") == "50,200"
    at.slider(key="sparsity").set_value(90).run()
    assert metric(at, "nonzero") == "5,020"
    assert any("simulated" in t and "**sparsity**" in t for t in texts(at))
    assert any(spec["mark"]["type"] == "bar" for spec in chart_specs(at))  # per-layer sparsity bars
    at.select_slider(key="bits").set_value(3).run()
    bitwidth = [t for t in texts(at) if "**bitwidth**" in t]
    assert bitwidth and "simulated" in bitwidth[0] and "3-bit" in bitwidth[0]
    at.select_slider(key="bits").set_value(8).run()
    assert "real" in next(t for t in texts(at) if "**bitwidth**" in t)


def test_url_restores_the_knobs_and_they_survive_page_switches():
    at = open_app(PAGE, query={"model": "digits-cnn", "sparsity": "70", "bits": "4", "epochs": "5"})
    assert not at.exception
    assert at.slider(key="sparsity").value == 70 and at.select_slider(key="bits").value == 4
    assert at.slider(key="epochs").value == 5
    assert at.session_state["model_ref"] == {"sample": "digits-cnn"}
    assert any("digits-cnn" in t for t in texts(at))
    at = open_app(PAGE)
    at.slider(key="sparsity").set_value(40).run()
    at.radio(key="scope").set_value("layer").run()
    at.switch_page("pages/home.py").run()
    at.switch_page(PAGE).run()
    assert at.slider(key="sparsity").value == 40 and at.radio(key="scope").value == "layer"


def test_preset_sets_the_knobs():
    at = open_app(PAGE)
    next(b for b in at.button if b.label == "Seed recipe: iterative 20% per round + fine-tuning").click().run()
    assert not at.exception
    assert at.slider(key="sparsity").value == 90 and at.select_slider(key="bits").value == 8
    assert at.radio(key="schedule").value == "iterative" and at.slider(key="epochs").value == 2
    assert "'schedule': 'iterative'" in at.code[0].value  # Copy as Python follows the knobs


def test_launch_creates_a_run_that_succeeds(isolated_home):
    at = open_app(PAGE, query={"sparsity": "50", "bits": "8"})
    at.button(key="launch_run").click().run()
    assert not at.exception
    store = Store(isolated_home)
    (run,) = store.list()
    spec = RunSpec.from_dict(run.spec)
    assert [s.kind for s in spec.stages] == ["prune", "quantize"] and spec.stages[0].sparsity == 0.5
    assert spec.measure.batch_sizes == (1, 32)  # WORKBENCH_FAST_MEASURE
    assert any(f"Run #{run.id}" in t and "queued" in t for t in texts(at))
    drain_queue(isolated_home)
    rerun_until(at, lambda a: any(f"Run #{run.id}" in t and "succeeded" in t for t in texts(a)))
    assert store.get(run.id).status == "succeeded"


def test_sweep_queues_the_grid_and_recipe_and_code_match(isolated_home):
    at = open_app(PAGE, query={"method": "random"})
    at.multiselect(key="sweep_sparsity").set_value([50, 90]).run()
    at.multiselect(key="sweep_bits").set_value([8, 32]).run()
    at.button(key="launch_sweep").click().run()
    assert not at.exception
    runs = Store(isolated_home).list()
    assert len(runs) == 4 and len({r.sweep_id for r in runs}) == 1
    assert at.session_state["last_sweep"] == runs[0].sweep_id
    specs = [RunSpec.from_dict(r.spec) for r in runs]
    assert all(s.stages[0].method == "random" for s in specs)  # the sweep keeps the other knobs
    assert sorted((s.stages[0].sparsity, len(s.stages)) for s in specs) == [(0.5, 1), (0.5, 2), (0.9, 1), (0.9, 2)]
    assert "RunSpec.from_dict" in at.code[0].value


def test_presets_round_trip_and_problems():
    for name, preset in PRESETS.items():
        spec = preset_spec(name, ModelRef(sample="digits-vit"))
        assert CompressSettings.from_spec(spec) == preset.settings
    deep = preset_spec("Deep compression look", ModelRef(sample="digits-vit"))
    assert deep.stages[1].lr == 1e-3  # the transformer's recovery lr
    seed = PRESETS["Seed recipe: iterative 20% per round + fine-tuning"].settings.to_spec(ModelRef(sample="digits-mlp"))
    assert isinstance(seed.stages[0], PruneSpec) and seed.stages[0].rounds == 11 and seed.stages[0].finetune
    assert isinstance(seed.stages[1], QuantSpec) and len(seed.stages) == 2
    assert CompressSettings(sparsity=0.5, epochs=3).problems("onnx", True)
    assert CompressSettings(sparsity=0.5, epochs=3).problems("torch", False)
    assert not CompressSettings(sparsity=0.5).problems("onnx", False)
