"""Compress page: the preview follows the knobs, each method's knobs yield the expected recipe stages, presets
and the URL set the knobs, Launch runs to the end."""

import pytest
import torch
from torch import nn

from tests.app_fixtures import chart_specs, drain_queue, fresh_app_env, metric, open_app, rerun_until, texts
from workbench.presets import PRESETS, CompressSettings, preset_spec
from workbench.specs import ModelRef, PruneSpec, QuantSpec, RunSpec
from workbench.store import Store

PAGE = "views/compress.py"


@pytest.fixture(autouse=True)
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


def launched_spec(at, home) -> RunSpec:
    """Click Launch run and return the recipe the page queued (no worker: tests run the queue themselves)."""
    at.button(key="launch_run").click().run()
    assert not at.exception
    return RunSpec.from_dict(Store(home).list()[0].spec)


def gain(at, aspect: str) -> str:
    return next(t for t in texts(at) if f"**{aspect}**" in t)


def test_sliders_move_the_preview_and_bitwidth_3_is_simulated():
    at = open_app(PAGE)
    assert not at.exception
    assert metric(at, "nonzero") == "50,200"
    at.slider(key="sparsity").set_value(90).run()
    assert metric(at, "nonzero") == "5,020"
    assert "simulated" in gain(at, "sparsity")
    assert any(spec["mark"]["type"] == "bar" for spec in chart_specs(at))  # per-layer sparsity bars
    at.select_slider(key="bits").set_value(3).run()
    assert "simulated" in gain(at, "bitwidth") and "3-bit" in gain(at, "bitwidth")
    at.select_slider(key="bits").set_value(8).run()
    assert "real" in gain(at, "bitwidth")


def test_url_restores_the_knobs_and_they_survive_page_switches():
    at = open_app(PAGE, query={"model": "digits-cnn", "sparsity": "70", "bits": "4", "epochs": "5"})
    assert not at.exception
    assert at.slider(key="sparsity").value == 70 and at.select_slider(key="bits").value == 4
    assert at.slider(key="epochs").value == 5
    assert at.session_state["model_ref"] == {"sample": "digits-cnn"}
    assert any("digits-cnn" in t for t in texts(at))
    at = open_app(PAGE, query={"technique": "structured", "ratio": "70"})
    assert at.radio(key="technique").value == "structured" and at.slider(key="ratio").value == 70
    at = open_app(PAGE)
    at.slider(key="sparsity").set_value(40).run()
    at.radio(key="scope").set_value("layer").run()
    at.switch_page("views/home.py").run()
    at.switch_page(PAGE).run()
    assert at.slider(key="sparsity").value == 40 and at.radio(key="scope").value == "layer"


def test_presets_set_the_knobs():
    at = open_app(PAGE)
    next(b for b in at.button if b.label == "Seed recipe: iterative 20% + LR rewinding").click().run()
    assert not at.exception
    assert at.slider(key="sparsity").value == 90 and at.select_slider(key="bits").value == 8
    assert at.radio(key="schedule").value == "iterative" and at.slider(key="epochs").value == 2
    assert at.radio(key="rewind").value == "lr" and at.slider(key="per_round").value == 20
    assert "'schedule': 'iterative'" in at.code[0].value and "'rewind': 'lr'" in at.code[0].value
    next(b for b in at.button if b.label == "Real speed: structured 50%").click().run()
    assert at.radio(key="technique").value == "structured" and at.slider(key="ratio").value == 50
    assert "'structured': {" in at.code[0].value and "'ratio': 0.5" in at.code[0].value   # Copy as Python
    next(b for b in at.button if b.label == "Deep Compression: 90% + k=16 + packed").click().run()
    assert at.radio(key="technique").value == "unstructured" and at.select_slider(key="clusters").value == 16
    assert metric(at, "index bits") == "4 bits"
    next(b for b in at.button if b.label == "No training: 90% + OBS repair").click().run()
    assert at.radio(key="reconstruct").value == "obs" and at.slider(key="sparsity").value == 90
    assert at.select_slider(key="clusters").value == 0 and at.slider(key="epochs").value == 0
    assert "'reconstruct': 'obs'" in at.code[0].value
    next(b for b in at.button if b.label == "Smallest packed: channels first + 65% + k=8").click().run()
    assert at.slider(key="thin").value == 50 and at.slider(key="sparsity").value == 65
    assert at.radio(key="schedule").value == "iterative" and at.select_slider(key="clusters").value == 8
    assert metric(at, "parameters") == "17,600" and "'structured': {" in at.code[0].value
    assert at.slider(key="thin_epochs").value == 30 and at.selectbox(key="lr").value == 0.003   # as the recipe


def test_the_recovery_learning_rate_defaults_to_the_models_and_reaches_the_recipe(isolated_home):
    at = open_app(PAGE)
    at.slider(key="sparsity").set_value(80).run()
    assert not [s for s in at.selectbox if s.key == "lr"]   # no training, no learning rate
    at.slider(key="epochs").set_value(5).run()
    lr = at.selectbox(key="lr")
    assert lr.value == 0.0 and lr.format_func(0.0) == "the model's (0.01)"
    assert launched_spec(at, isolated_home).stages[1].lr == 0.01
    lr.set_value(0.003).run()
    assert not at.exception and launched_spec(at, isolated_home).stages[1].lr == 0.003
    assert any(t.endswith("+ 5 ep recovery at lr 0.003") for t in texts(at) if t.startswith("**This setting:**"))
    assert open_app(PAGE, query={"sparsity": "80", "epochs": "5", "lr": "0.003"}).selectbox(key="lr").value == 0.003


def test_structured_knobs_give_a_structured_stage_and_a_counted_preview(isolated_home):
    at = open_app(PAGE, query={"model": "digits-cnn"})
    at.radio(key="technique").set_value("structured").run()
    at.slider(key="ratio").set_value(70).run()
    assert at.toggle(key="round8").value is True     # SIMD-friendly widths unless the user turns it off
    assert not at.exception
    params = next(m for m in at.metric if m.label == "parameters")
    assert "fewer" in params.proto.delta and ":blue-badge[computed]" in [m.value for m in at.markdown]
    assert "real" in gain(at, "size and MACs") and float(metric(at, "one-shot accuracy")) < 0.9   # before recovery
    assert any(s.get("title") == "Weights per layer: now and after (computed)" for s in chart_specs(at))
    at.multiselect(key="exclude").set_value(["features.1.0"]).run()
    assert "features.0.0 (coupled to excluded layer features.1.0)" in gain(at, "layers left whole")
    assert int(metric(at, "parameters").replace(",", "")) > int(params.value.replace(",", ""))
    (stage,) = launched_spec(at, isolated_home).stages
    assert stage.kind == "structured" and stage.ratio == 0.7 and stage.round_to == 8
    assert stage.exclude == ("features.1.0",)


def test_channels_first_knob_previews_the_thinner_model_and_reaches_the_recipe(isolated_home):
    at = open_app(PAGE)
    at.slider(key="sparsity").set_value(65).run()
    at.slider(key="thin").set_value(50).run()
    assert not at.exception
    assert metric(at, "parameters") == "17,600" and metric(at, "nonzero") == "6,160"   # 64-150-50-10, 35% kept
    assert "real" in gain(at, "channels first") and "50,200 -> 17,600 weights" in gain(at, "channels first")
    assert open_app(PAGE, query={"thin": "50"}).slider(key="thin").value == 50   # bound to the link
    structured, recovery, prune = launched_spec(at, isolated_home).stages
    assert (structured.kind, structured.ratio, prune.kind, prune.sparsity) == ("structured", 0.5, "prune", 0.65)
    assert (recovery.epochs, recovery.lr) == (30, 0.01)    # recovers from the removed channels unless told not to
    at.slider(key="thin_epochs").set_value(0).run()
    assert [s.kind for s in launched_spec(at, isolated_home).stages] == ["structured", "prune"]
    at.slider(key="sparsity").set_value(0).run()
    assert any("Channels first applies with a sparsity above 0" in t for t in texts(at))
    assert metric(at, "parameters") == "50,200"


def _pt2_upload(home, module, name: str) -> str:
    from ui import uploads

    batch = torch.export.Dim("batch")
    program = torch.export.export(module.eval(), (torch.zeros(2, 64),), dynamic_shapes=({0: batch},))
    path = home / name
    torch.export.save(program, str(path))
    return uploads.save_upload(path.read_bytes(), name, home / "uploads", (".pt2",)).name


class CumulativeMLP(nn.Module):
    """A traced model with an op the ONNX-to-torch conversion lacks (CumSum)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1).cumsum(1))


def test_a_pt2_upload_gets_layer_edits_through_its_conversion_or_says_why_not(isolated_home):
    """A .pt2 upload has no Linear/Conv modules: a run that edits them converts it through its ONNX export (and
    succeeds); a model whose export does not convert is refused under Run it, once, saying what failed."""
    from workbench import zoo
    from workbench.compare import load_report

    at = open_app(PAGE, query={"model": _pt2_upload(isolated_home, zoo.load_sample("digits-mlp"), "mlp.pt2"),
                               "technique": "structured", "ratio": "50", "epochs": "1"})
    assert not at.exception and not at.warning and not at.button(key="launch_run").disabled
    assert any("converted from its ONNX export" in t for t in texts(at))
    at.button(key="launch_run").click().run()
    drain_queue(isolated_home)
    (run,) = Store(isolated_home).list()
    assert run.status == "succeeded", run.error
    report = load_report(Store(isolated_home), run.id)
    sizes = [v["measurement"]["size"]["params"] for v in (report["baseline"], report["variants"][-1])]
    assert sizes[1] < 0.5 * sizes[0]

    at = open_app(PAGE, query={"model": _pt2_upload(isolated_home, CumulativeMLP(), "cumsum.pt2"),
                               "technique": "lowrank"})
    assert at.button(key="launch_run").disabled
    (warning,) = at.warning
    assert warning.value.startswith("low-rank factorization edits nn.Linear/Conv modules, and a torch.export program "
                                    "(.pt2) has none (its layers are traced into plain ops), and converting it to "
                                    "them through ONNX failed (the ONNX op CumSum")
    at.radio(key="technique").set_value("unstructured").run()
    at.slider(key="sparsity").set_value(50).run()
    at.slider(key="epochs").set_value(1).run()     # fine-tuning trains the traced program as it is
    assert not at.warning and not at.button(key="launch_run").disabled


def test_nm_shows_the_mask_and_says_there_is_no_cpu_kernel(isolated_home):
    at = open_app(PAGE, query={"technique": "nm", "epochs": "2"})
    assert not at.exception
    assert metric(at, "sparsity") == "50.0%"
    assert "no CPU kernel" in gain(at, "2:4 sparsity") and "simulated" in gain(at, "2:4 sparsity")
    prune, tune = launched_spec(at, isolated_home).stages
    assert prune.nm == "2:4" and prune.sparsity == 0.5 and tune.kind == "finetune" and tune.epochs == 2


def test_gradual_schedule_with_weight_rewinding(isolated_home):
    at = open_app(PAGE, query={"sparsity": "80", "epochs": "2", "schedule": "gradual"})
    at.slider(key="steps").set_value(5).run()
    at.radio(key="rewind").set_value("weight").run()
    assert not at.exception and any("This setting" in t and "weight rewinding" in t for t in texts(at))
    (prune,) = launched_spec(at, isolated_home).stages
    assert (prune.schedule, prune.steps, prune.rewind, prune.sparsity) == ("gradual", 5, "weight", 0.8)
    assert prune.finetune.epochs == 2


def test_lamp_ranking_reaches_the_recipe_works_with_obs_and_pairs_with_random(isolated_home):
    at = open_app(PAGE, query={"sparsity": "90", "method": "lamp", "reconstruct": "obs"})
    assert not at.exception and not at.warning and not at.button(key="launch_run").disabled
    assert "sweep_random" not in [c.key for c in at.checkbox]
    at.radio(key="reconstruct").set_value("none").run()
    (prune,) = launched_spec(at, isolated_home).stages
    assert (prune.method, prune.sparsity, prune.scope) == ("lamp", 0.9, "global")
    at.multiselect(key="sweep_sparsity").set_value([90]).run()
    at.multiselect(key="sweep_bits").set_value([32]).run()
    at.checkbox(key="sweep_random").check().run()
    at.button(key="launch_sweep").click().run()
    swept = [RunSpec.from_dict(r.spec).stages[0].method for r in Store(isolated_home).list()]
    assert sorted(swept) == ["lamp", "lamp", "random"]     # the run above, then lamp against random


def test_wanda_reads_the_training_inputs_in_the_preview_and_reaches_the_recipe(isolated_home):
    at = open_app(PAGE, query={"sparsity": "80"})
    magnitude = float(metric(at, "one-shot accuracy"))
    at.radio(key="method").set_value("wanda").run()
    assert not at.exception and metric(at, "sparsity") == "80.0%"
    assert float(metric(at, "one-shot accuracy")) > magnitude + 0.1     # 0.74 vs 0.46: the blank pixels go first
    assert not [t for t in texts(at) if "ranks by |w| alone" in t]
    (prune,) = launched_spec(at, isolated_home).stages
    assert (prune.method, prune.sparsity) == ("wanda", 0.8)


def test_unit_scope_previews_the_same_count_per_row_and_reaches_the_recipe(isolated_home):
    at = open_app(PAGE, query={"sparsity": "80", "scope": "unit"})
    # digits-mlp, 80% of every row: fc1 keeps 13 of 64 per unit (x300), fc2 60 of 300 (x100), fc3 20 of 100 (x10)
    assert not at.exception and metric(at, "nonzero") == f"{13 * 300 + 60 * 100 + 20 * 10:,}"
    (prune,) = launched_spec(at, isolated_home).stages
    assert (prune.scope, prune.sparsity) == ("unit", 0.8)


def test_the_preview_warns_about_a_layer_the_global_cut_empties():
    at = open_app(PAGE, query={"model": "digits-cnn", "sparsity": "97"})
    assert not at.exception and "features.3.0" in gain(at, "emptied layer") and ":red-badge[warning]" in \
        " ".join(texts(at))
    at.radio(key="method").set_value("lamp").run()
    assert not [t for t in texts(at) if "emptied layer" in t]


def test_reconstruction_knob_reaches_the_recipe_and_refuses_what_cannot_work(isolated_home):
    at = open_app(PAGE, query={"sparsity": "80"})
    at.radio(key="reconstruct").set_value("obs").run()
    assert not at.exception and any("This setting" in t and "OBS reconstruction" in t for t in texts(at))
    assert any("the run then solves the kept weights (obs)" in t for t in texts(at))
    assert any("no random-pruning baseline" in t for t in texts(at))
    assert "sweep_random" not in [c.key for c in at.checkbox]
    at.radio(key="method").set_value("random").run()
    assert any("OBS reconstruction chooses the pruned weights itself" in w.value for w in at.warning)
    assert at.button(key="launch_run").disabled
    at.radio(key="reconstruct").set_value("refit").run()
    assert not at.warning and not at.button(key="launch_run").disabled
    (prune,) = launched_spec(at, isolated_home).stages
    assert (prune.reconstruct, prune.method, prune.sparsity) == ("refit", "random", 0.8)


def test_calibration_samples_show_for_methods_that_read_inputs_and_reach_the_recipe(isolated_home):
    at = open_app(PAGE, query={"sparsity": "80"})
    assert "calib_samples" not in [n.key for n in at.number_input]      # magnitude reads no inputs
    at.radio(key="method").set_value("wanda").run()
    at.number_input(key="calib_samples").set_value(64).run()
    assert not at.exception
    at.radio(key="method").set_value("magnitude").run()
    at.radio(key="reconstruct").set_value("refit").run()
    assert at.number_input(key="calib_samples").value == 64
    (prune,) = launched_spec(at, isolated_home).stages
    assert (prune.method, prune.reconstruct, prune.calib_samples) == ("magnitude", "refit", 64)
    shared = open_app(PAGE, query={"sparsity": "80", "method": "wanda", "calib_samples": "32"})   # a shared link
    assert shared.number_input(key="calib_samples").value == 32


def test_the_preview_can_solve_the_kept_weights_on_request():
    at = open_app(PAGE, query={"sparsity": "90", "reconstruct": "obs"})
    assert not at.exception and "one-shot accuracy, solved" not in [m.label for m in at.metric]
    assert float(metric(at, "one-shot accuracy")) < 0.5               # the plain mask
    at.toggle(key="solve_preview").set_value(True).run()
    assert not at.exception and float(metric(at, "one-shot accuracy, solved")) > 0.95
    solved = next(m for m in at.metric if m.label == "one-shot accuracy, solved")
    assert "after obs" in solved.proto.help and "fc2" in solved.proto.help
    assert float(solved.proto.delta) < 0    # compared with the dense model, like the mask


def test_big_counts_are_short_in_the_preview_with_the_exact_value_on_hover():
    at = open_app(PAGE, query={"model": "digits-cnn"})
    macs = next(m for m in at.metric if m.label == "MACs")
    assert not at.exception and macs.value == "2.38 M" and "exactly 2,382,848" in macs.proto.help
    assert metric(at, "parameters") == "97,568"              # under a million: in full


def test_distill_and_lowrank_knobs(isolated_home):
    at = open_app(PAGE, query={"technique": "distill"})
    at.slider(key="width").set_value(25).run()
    assert not at.exception and metric(at, "parameters").replace(",", "").isdigit()
    at.radio(key="technique").set_value("lowrank").run()
    at.slider(key="energy").set_value(80).run()
    at.slider(key="epochs").set_value(3).run()
    assert not at.exception
    helptext = next(m for m in at.metric if m.label == "one-shot accuracy").proto.help
    assert "truncated SVD, no fine-tuning; against the uncompressed model, " in helptext and "McNemar" in helptext
    (stage,) = launched_spec(at, isolated_home).stages
    assert stage.kind == "lowrank" and stage.energy == 0.8 and stage.finetune.epochs == 3
    at.radio(key="technique").set_value("distill").run()
    at.button(key="launch_run").click().run()
    distill = RunSpec.from_dict(Store(isolated_home).list()[0].spec).stages[0]
    assert distill.kind == "distill" and distill.width == 0.25 and distill.epochs == 30


def test_clustering_qat_and_transfer(isolated_home):
    at = open_app(PAGE, query={"sparsity": "90", "clusters": "16", "cluster_epochs": "5", "bits": "8"})
    assert any("set the bitwidth to 32" in w.value for w in at.warning) and at.button(key="launch_run").disabled
    at.select_slider(key="bits").set_value(32).run()
    assert metric(at, "index bits") == "4 bits" and "weights.packed" in gain(at, "clustering")
    storage = metric(at, "minimum storage")
    at.select_slider(key="bias_clusters").set_value(32).run()
    assert "(biases: 32 per tensor)" in gain(at, "clustering") and metric(at, "minimum storage") != storage
    prune, cluster = launched_spec(at, isolated_home).stages
    assert cluster.kind == "cluster" and cluster.clusters == 16 and cluster.finetune.epochs == 5
    assert cluster.bias_clusters == 32
    at.select_slider(key="clusters").set_value(0).run()
    at.select_slider(key="bits").set_value(4).run()
    at.toggle(key="qat").set_value(True).run()
    at.toggle(key="qat_act8").set_value(True).run()
    at.multiselect(key="classes").set_value([3, 5]).run()
    assert not at.exception and "run" in gain(at, "transfer")
    at.button(key="launch_run").click().run()
    spec = RunSpec.from_dict(Store(isolated_home).list()[0].spec)
    assert [s.kind for s in spec.stages] == ["transfer", "prune", "qat"] and spec.data.classes == (3, 5)
    assert spec.stages[2].weight_bits == 4 and spec.stages[2].activation_bits == 8


def _onnx_upload(home, model) -> str:
    import onnx

    from ui import uploads

    path = home / "model.onnx"
    onnx.save(model, str(path))
    return uploads.save_upload(path.read_bytes(), "model.onnx", home / "uploads", (".onnx",)).name


def test_an_onnx_upload_takes_structured_pruning_through_its_torch_conversion(isolated_home):
    from workbench import zoo
    from workbench.compare import load_report
    from workbench.export import export_onnx

    model = export_onnx(zoo.load_sample("digits-cnn").eval(), (torch.zeros(2, 1, 8, 8),))
    at = open_app(PAGE, query={"model": _onnx_upload(isolated_home, model), "technique": "structured",
                               "ratio": "50", "epochs": "1"})
    assert not at.exception and not at.warning and not at.button(key="launch_run").disabled
    assert any("runs these methods as torch modules converted from it" in t for t in texts(at))
    labels = [m.label for m in at.metric]   # the preview prunes the conversion: counts and one-shot accuracy
    assert "one-shot accuracy" in labels and "channels/neurons/heads physically removed (Torch-Pruning): a " \
        "smaller dense model, so fewer weights and multiply-adds in the exported file; counted here on a pruned " \
        "copy" in " ".join(texts(at))
    spec = launched_spec(at, isolated_home)
    assert [s.kind for s in spec.stages] == ["structured", "finetune"]
    drain_queue(isolated_home)
    (run,) = Store(isolated_home).list()
    assert run.status == "succeeded", run.error
    report = load_report(Store(isolated_home), run.id)
    base, final = report["baseline"], report["variants"][-1]
    assert any("converted to torch modules from the ONNX graph" in n for n in base["notes"])
    assert final["measurement"]["size"]["params"] < 0.4 * base["measurement"]["size"]["params"]


def test_an_onnx_graph_that_does_not_convert_refuses_only_what_needs_torch(isolated_home, einsum_onnx):
    import onnx

    model = onnx.load(str(einsum_onnx))
    at = open_app(PAGE, query={"model": _onnx_upload(isolated_home, model), "technique": "structured"})
    assert not at.exception and at.button(key="launch_run").disabled
    nothing = ("the model has no Conv, Gemm or MatMul layer with its weights: nothing for this method to act on "
               "(quantization alone may still apply)")
    assert [w.value for w in at.warning] == [nothing,
        "structured pruning needs torch modules, and this ONNX graph does not convert to them: the ONNX op Einsum "
        "(node 'mix') has no torch conversion"]
    at.radio(key="technique").set_value("unstructured").run()
    at.slider(key="sparsity").set_value(50).run()
    assert [w.value for w in at.warning] == [nothing] and at.button(key="launch_run").disabled
    at.slider(key="sparsity").set_value(0).run()
    at.select_slider(key="bits").set_value(8).run()
    assert not at.warning and not at.button(key="launch_run").disabled


def test_launch_creates_a_run_that_succeeds(isolated_home):
    at = open_app(PAGE, query={"sparsity": "50", "bits": "8"})
    spec = launched_spec(at, isolated_home)
    assert [s.kind for s in spec.stages] == ["prune", "quantize"] and spec.stages[0].sparsity == 0.5
    assert spec.measure.batch_sizes == (1, 32)  # WORKBENCH_FAST_MEASURE
    (run,) = Store(isolated_home).list()
    assert any(f"Run #{run.id}" in t and "queued" in t for t in texts(at))
    drain_queue(isolated_home)
    rerun_until(at, lambda a: any(f"Run #{run.id}" in t and "succeeded" in t for t in texts(a)))
    assert Store(isolated_home).get(run.id).status == "succeeded"


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


def test_sweep_repeats_over_seeds_with_a_random_baseline(isolated_home):
    at = open_app(PAGE)
    at.multiselect(key="sweep_sparsity").set_value([50, 90]).run()
    at.multiselect(key="sweep_bits").set_value([32]).run()
    at.number_input(key="sweep_seeds").set_value(2).run()
    at.checkbox(key="sweep_random").check().run()
    assert at.button(key="launch_sweep").label == "Launch sweep (8 runs)"
    at.button(key="launch_sweep").click().run()
    assert not at.exception
    specs = [RunSpec.from_dict(r.spec) for r in Store(isolated_home).list()]
    combos = sorted((s.stages[0].sparsity, s.stages[0].method, s.seed, s.stages[0].seed) for s in specs)
    assert combos == sorted((p, m, seed, seed) for p in (0.5, 0.9) for m in ("magnitude", "random") for seed in (0, 1))


def test_sweep_adds_the_unsolved_mask_beside_the_reconstruction(isolated_home):
    at = open_app(PAGE, query={"reconstruct": "refit"})
    at.multiselect(key="sweep_sparsity").set_value([80, 90]).run()
    at.multiselect(key="sweep_bits").set_value([32]).run()
    at.checkbox(key="sweep_unsolved").check().run()
    assert at.button(key="launch_sweep").label == "Launch sweep (4 runs)"
    at.button(key="launch_sweep").click().run()
    assert not at.exception
    specs = [RunSpec.from_dict(r.spec) for r in Store(isolated_home).list()]
    assert sorted((s.stages[0].sparsity, s.stages[0].reconstruct) for s in specs) == \
        [(0.8, "none"), (0.8, "refit"), (0.9, "none"), (0.9, "refit")]
    at = open_app(PAGE)
    assert "sweep_unsolved" not in [c.key for c in at.checkbox]


def test_structured_sweep_varies_the_ratio(isolated_home):
    at = open_app(PAGE, query={"technique": "structured"})
    at.multiselect(key="sweep_ratio").set_value([25, 50]).run()
    at.multiselect(key="sweep_bits").set_value([32]).run()
    at.button(key="launch_sweep").click().run()
    assert not at.exception
    specs = [RunSpec.from_dict(r.spec) for r in Store(isolated_home).list()]
    assert sorted(s.stages[0].ratio for s in specs) == [0.25, 0.5]
    assert all([st.kind for st in s.stages] == ["structured"] for s in specs)


def test_a_shared_link_opens_the_expanders_that_hold_its_settings():
    expanded = {e.label: e.proto.expanded for e in open_app(PAGE).expander}
    assert not any(expanded[k] for k in ("Pruning options", "Weight clustering (Deep Compression)",
                                          "Transfer to a subset of the classes first", "Leave layers dense"))
    link = {"sparsity": "65", "thin": "50", "clusters": "8", "classes": ["5", "9"], "exclude": "fc3"}
    expanded = {e.label: e.proto.expanded for e in open_app(PAGE, query=link).expander}
    assert all(expanded[k] for k in ("Pruning options", "Weight clustering (Deep Compression)",
                                     "Transfer to a subset of the classes first", "Leave layers dense"))


def test_a_sweep_over_the_channels_removed_first(isolated_home):
    at = open_app(PAGE)
    assert "sweep_thin" not in [m.key for m in at.multiselect]   # only with channels removed first
    at.slider(key="sparsity").set_value(65).run()
    at.slider(key="thin").set_value(50).run()
    at.multiselect(key="sweep_sparsity").set_value([50, 70]).run()
    at.multiselect(key="sweep_bits").set_value([32]).run()
    at.multiselect(key="sweep_thin").set_value([25, 50, 70]).run()
    assert at.button(key="launch_sweep").label == "Launch sweep (6 runs)"
    at.button(key="launch_sweep").click().run()
    assert not at.exception
    specs = [RunSpec.from_dict(r.spec) for r in Store(isolated_home).list()]
    assert sorted((s.stages[0].ratio, s.stages[2].sparsity) for s in specs) == [
        (r, p) for r in (0.25, 0.5, 0.7) for p in (0.5, 0.7)]
    assert all([st.kind for st in s.stages] == ["structured", "finetune", "prune"] for s in specs)


def test_presets_round_trip_and_problems():
    for name, preset in PRESETS.items():
        spec = preset_spec(name, ModelRef(sample="digits-vit"))
        assert CompressSettings.from_spec(spec) == preset.settings, name
    deep = preset_spec("Deep compression look", ModelRef(sample="digits-vit"))
    assert deep.stages[1].lr == 1e-3  # the transformer's recovery lr
    seed = preset_spec("Seed recipe: iterative 20% + LR rewinding", ModelRef(sample="digits-mlp"))
    assert isinstance(seed.stages[0], PruneSpec) and seed.stages[0].rounds == 11 and seed.stages[0].finetune
    assert seed.stages[0].rewind == "lr" and isinstance(seed.stages[1], QuantSpec) and len(seed.stages) == 2
    assert not CompressSettings(sparsity=0.5, epochs=3).problems("onnx", True)   # an ONNX graph is converted
    assert CompressSettings(sparsity=0.5, epochs=3).problems("onnx", True, unconvertible="the ONNX op X has none")
    assert CompressSettings(sparsity=0.5, epochs=3).problems("torch", False)
    assert not CompressSettings(sparsity=0.5).problems("onnx", False)


def test_sensitivity_excludes_and_allocates_into_the_recipe(isolated_home):
    at = open_app(PAGE, query={"sparsity": "80"}, session={"sensitivity_open": True})
    at.button(key="measure_sensitivity").click().run()
    assert not at.exception
    heatmap = next(s for s in chart_specs(at) if "layer alone" in str(s.get("title")))
    assert [layer["mark"]["type"] for layer in heatmap["layer"]] == ["rect", "text"]
    at.multiselect(key="exclude").set_value(["fc3"]).run()
    at.button(key="allocate").click().run()
    assert not at.exception and "allocated" in " ".join(texts(at))
    overrides = at.session_state["overrides"]
    assert set(overrides) == {"fc1", "fc2"} and at.query_params["overrides"].startswith("{")
    (prune,) = launched_spec(at, isolated_home).stages
    assert prune.exclude == ("fc3",) and prune.overrides == overrides
    at.slider(key="sparsity").set_value(70).run()
    assert any("allocate again" in w.value for w in at.warning)
    at.button(key="clear_overrides").click().run()
    assert at.session_state["overrides"] == {} and "overrides" not in at.query_params


def test_allocate_bits_writes_per_layer_bits_into_the_recipe(isolated_home):
    at = open_app(PAGE, query={"bits": "8"}, session={"sensitivity_open": True})
    at.button(key="measure_sensitivity").click().run()
    at.number_input(key="bits_target_kb").set_value(20.0).run()
    at.button(key="allocate_bits").click().run()
    assert not at.exception and any("allocated: weights need about" in t for t in texts(at))
    method, bits = at.session_state["layer_bits"]["method"], at.session_state["layer_bits"]["bits"]
    assert method == "weight_only" and set(bits) == {"fc1", "fc2", "fc3"} and set(bits.values()) <= {8, 4, 2}
    assert sum(p * bits[k] / 8 for k, p in {"fc1": 19200, "fc2": 30000, "fc3": 1000}.items()) <= 20 * 1024
    assert at.query_params["layer_bits"].startswith("{") and any("**weight_only**" in t for t in texts(at))
    assert any("Bits are per layer" in i.value for i in at.info)
    assert "per-layer" in next(t for t in texts(at) if t.startswith("**This setting:**"))
    (quant,) = launched_spec(at, isolated_home).stages
    assert quant.method == "weight_only" and quant.overrides == bits
    at.toggle(key="bits_real").set_value(False).run()
    at.number_input(key="bits_target_kb").set_value(19.0).run()
    assert any("allocate again" in w.value for w in at.warning)
    at.button(key="allocate_bits").click().run()
    assert at.session_state["layer_bits"]["method"] == "fake" and 3 in at.session_state["layer_bits"]["bits"].values()
    assert any("**fake**" in t for t in texts(at))
    assert at.multiselect(key="sweep_sparsity") and not any(m.key == "sweep_bits" for m in at.multiselect)
    assert any("Every run keeps the per-layer bits (3 layers)" in c.value for c in at.caption)
    at.multiselect(key="sweep_sparsity").set_value([50, 90]).run()
    at.button(key="launch_sweep").click().run()
    swept = [RunSpec.from_dict(r.spec) for r in Store(isolated_home).list() if r.sweep_id]
    assert len(swept) == 2 and all(s.stages[-1].method == "fake" and 3 in s.stages[-1].overrides.values()
                                   for s in swept)
    at.button(key="clear_layer_bits").click().run()
    assert at.session_state["layer_bits"]["bits"] == {} and "layer_bits" not in at.query_params
    assert "per-layer" not in next(t for t in texts(at) if t.startswith("**This setting:**"))


def test_search_under_an_accuracy_bar_queues_candidates(isolated_home):
    at = open_app(PAGE, session={"search_open": True})
    assert "On 360 test samples one is 0.28 pt, and no change under 1.67 pt" in at.number_input(key="search_drop").help
    at.number_input(key="search_trials").set_value(3).run()
    at.number_input(key="search_drop").set_value(0.5).run()
    at.button(key="launch_search").click().run()
    assert not at.exception
    runs = Store(isolated_home).list()
    sweep = Store(isolated_home).get_sweep(runs[0].sweep_id)
    assert len(runs) == 3 and sweep.kind == "search" and sweep.settings["max_drop"] == 0.5
    assert at.session_state["last_sweep"] == sweep.id   # Compare opens with it


def test_a_search_with_clustering_keeps_32_bit_weights_and_ranks_by_weights_packed(isolated_home):
    at = open_app(PAGE, query={"clusters": "8"}, session={"search_open": True})
    assert any("(32-bit weights: clustered)" in c for c in texts(at))
    at.radio(key="search_objective").set_value("packed").run()
    at.number_input(key="search_trials").set_value(2).run()
    at.button(key="launch_search").click().run()
    assert not at.exception
    runs = Store(isolated_home).list()
    sweep = Store(isolated_home).get_sweep(runs[0].sweep_id)
    assert sweep.settings["objective"] == "packed" and "bits" not in sweep.settings["space"]
    assert all(s.kind != "quantize" for r in runs for s in RunSpec.from_dict(r.spec).stages)
