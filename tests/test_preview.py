"""workbench.preview: every number labelled, counts exact, estimates close to what the stages do."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from workbench.data import digits_splits
from workbench.models import load_model
from workbench.presets import CompressSettings
from workbench.preview import (
    fake_quantize,
    make_subject,
    model_weights,
    preview,
    preview_settings,
    svd_factors,
)
from workbench.specs import ModelRef, PruneSpec


@pytest.fixture(scope="module")
def mlp():
    loaded = load_model(ModelRef(sample="digits-mlp"))
    weights, other = model_weights(loaded)
    return loaded, weights, other


def test_counts_are_exact_and_labelled(mlp):
    loaded, weights, other = mlp
    p = preview(weights, other, 0.9, 32)
    assert p.get("parameters").value == 50_200 and p.get("parameters").kind == "computed"
    assert p.get("nonzero").value == 5_020
    assert p.get("raw size").kind == "estimate" and p.get("compressed size").kind == "estimate"
    assert p.gains[0][:2] == ("sparsity", "simulated")


def test_sliders_move_the_numbers(mlp):
    loaded, weights, other = mlp
    dense = preview(weights, other, 0.0, 32)
    sparse = preview(weights, other, 0.9, 32)
    int8 = preview(weights, other, 0.9, 8)
    assert sparse.get("raw size").value == dense.get("raw size").value  # zeros stored densely
    assert sparse.get("compressed size").value < dense.get("compressed size").value / 3
    assert int8.get("raw size").value < sparse.get("raw size").value / 3
    assert int8.get("minimum storage").value < sparse.get("minimum storage").value


def test_simulated_bitwidth_does_not_shrink_the_raw_file(mlp):
    loaded, weights, other = mlp
    three = preview(weights, other, 0.0, 3)
    assert three.get("raw size").value == preview(weights, other, 0.0, 32).get("raw size").value
    assert three.gains[-1][:2] == ("bitwidth", "simulated")
    assert preview(weights, other, 0.0, 8).gains[-1][:2] == ("bitwidth", "real")


def test_one_shot_accuracy_is_measured_and_model_restored(mlp):
    loaded, weights, other = mlp
    test = digits_splits().test
    before = {n: p.detach().clone() for n, p in loaded.module.named_parameters()}
    dense = preview(weights, other, 0.0, 32, module=loaded.module, test=test).get("one-shot accuracy")
    pruned = preview(weights, other, 0.95, 32, module=loaded.module, test=test).get("one-shot accuracy")
    assert dense.kind == "measured" and dense.value > 0.98 and pruned.value < dense.value
    assert "test split of 360 samples (one is 0.28 pt; no change of fewer than 6 samples" in dense.note
    assert all((p == before[n]).all() for n, p in loaded.module.named_parameters())


def test_fake_quantize_levels_and_zeros():
    w = np.random.default_rng(0).normal(size=(50, 50))
    w[0, :10] = 0
    q = fake_quantize(w, 4)
    assert len(np.unique(q)) <= 16 and (q[0, :10] == 0).all()


def test_works_on_onnx_uploads(tiny_onnx):
    weights, other = model_weights(load_model(ModelRef(path=str(tiny_onnx))))
    assert set(weights) == {"conv.weight", "fc.weight"} and other == 0
    assert preview(weights, other, 0.5, 8).get("nonzero").value == pytest.approx(0.5 * (72 + 2880), abs=1)


@pytest.fixture(scope="module")
def cnn():
    loaded = load_model(ModelRef(sample="digits-cnn"))
    return loaded, make_subject(loaded, digits_splits().test)


def test_structured_preview_counts_what_the_stage_removes(cnn):
    from workbench.pruning import torch_weights
    from workbench.specs import StructuredSpec
    from workbench.structured import prune_structured

    loaded, subject = cnn
    p = preview_settings(CompressSettings(technique="structured", ratio=0.5), subject)
    assert p.get("parameters").kind == "computed" and p.get("MACs").kind == "computed" and p.after_kind == "computed"
    pruned, report = prune_structured(loaded.module, (torch.zeros(1, 1, 8, 8),), StructuredSpec(ratio=0.5))
    real = {n: w.numel() for n, w in torch_weights(pruned).items()}
    assert p.get("parameters").value == sum(real.values())
    assert {row["layer"] + ".weight": row["after"] for row in p.layers} == real
    conv_macs = p.get("MACs").value / sum(subject.macs.values())
    assert conv_macs == pytest.approx(report["macs_after"] / report["macs_before"], rel=0.05)   # TP counts BN too
    accuracy = p.get("one-shot accuracy")   # half the channels gone, before any recovery: measured, and it shows
    assert accuracy.kind == "measured" and accuracy.value < 0.5 and "before recovery" in accuracy.note
    assert p.layer_kind == "params" and {g[0]: g[1] for g in p.gains} == {"size and MACs": "real"}
    student = preview_settings(CompressSettings(technique="distill", width=0.5), subject)
    assert student.get("parameters").value == p.get("parameters").value   # the student keeps half the channels
    assert {g[0]: g[1] for g in student.gains} == {"size and MACs": "real", "accuracy": "run"}


def test_structured_preview_follows_the_layers_left_whole(cnn):
    """Excluding a layer keeps it and the layers coupled to it whole, in the preview as in the run."""
    _, subject = cnn
    plain = preview_settings(CompressSettings(technique="structured", ratio=0.5), subject)
    spared = preview_settings(CompressSettings(technique="structured", ratio=0.5, exclude=("features.1.0",)), subject)
    assert spared.get("parameters").value > 2 * plain.get("parameters").value
    whole = dict((g[0], g[2]) for g in spared.gains)["layers left whole"]
    assert "features.1.0 (excluded by pattern" in whole and "features.0.0 (coupled to excluded layer" in whole
    assert spared.get("one-shot accuracy").value > plain.get("one-shot accuracy").value


def test_channels_first_previews_the_mask_on_the_thinner_copy(cnn):
    """thin: the run removes channels first, then prunes what is left; the preview masks that thinner copy."""
    from workbench.pruning import torch_weights
    from workbench.specs import StructuredSpec
    from workbench.structured import prune_structured

    loaded, subject = cnn
    p = preview_settings(CompressSettings(thin=0.5, sparsity=0.6, clusters=8), subject)
    pruned, _ = prune_structured(loaded.module, (torch.zeros(1, 1, 8, 8),), StructuredSpec(ratio=0.5))
    left = sum(w.numel() for w in torch_weights(pruned).values())
    assert left < sum(w.size for w in subject.weights.values()) / 3
    assert p.get("parameters").value == left and p.get("nonzero").value == pytest.approx(0.4 * left, abs=1)
    assert p.get("MACs").value < sum(subject.macs.values()) / 3
    # the raw-size estimate is of the thinner dense file: its weights plus the baseline's graph overhead
    assert p.get("raw size").value < subject.file_bytes / 3
    assert p.get("one-shot accuracy").kind == "measured"
    gains = {g[0]: g[1:] for g in p.gains}
    assert gains["channels first"][0] == "real" and f"-> {left:,} weights" in gains["channels first"][1]
    assert gains["sparsity"][0] == "simulated" and gains["clustering"][0] == "real"
    # biases sharing 16 values: the thinner model's other parameters as 4-bit indices + 16 float16 per layer
    shared = preview_settings(CompressSettings(thin=0.5, sparsity=0.6, clusters=8, bias_clusters=16), subject)
    other = sum(x.numel() for x in pruned.parameters()) - left
    saved = (32 * other - (4 * other + 16 * 16 * len(subject.weights))) / 8
    assert p.get("minimum storage").value - shared.get("minimum storage").value == pytest.approx(saved)
    assert "4-bit indices into 16 values" in shared.get("minimum storage").note
    whole = preview_settings(CompressSettings(thin=0.5, sparsity=0.6), dataclasses.replace(subject, module=None))
    assert whole.get("parameters").value == sum(w.size for w in subject.weights.values())
    assert dict((g[0], g[1]) for g in whole.gains)["channels first"] == "run"   # no layer modules: said, not counted


def test_structured_preview_without_a_torch_model_is_an_estimate(cnn):
    _, subject = cnn
    p = preview_settings(CompressSettings(technique="structured", ratio=0.5), dataclasses.replace(subject, module=None))
    assert p.get("parameters").kind == "estimate" and p.after_kind == "estimate"
    assert {g[0]: g[1] for g in p.gains} == {"size and MACs": "real", "accuracy": "run"}


def test_an_onnx_graph_previews_structured_pruning_on_its_conversion(cnn):
    """An ONNX upload has no layer modules: the preview counts on its conversion (what the run prunes) and
    measures the one-shot accuracy, where without it the counts are estimates."""
    import torch

    from workbench.export import export_onnx
    from workbench.models import LoadedModel
    from workbench.onnx_torch import convert_for_run
    from workbench.preview import with_layers
    from workbench.structured import prune_structured

    loaded, _ = cnn
    graph = export_onnx(loaded.module, (torch.zeros(2, 1, 8, 8),))
    upload = make_subject(LoadedModel("cnn.onnx", "onnx", onnx_model=graph), digits_splits().test)
    conversion, typed = convert_for_run(graph, digits_splits())
    settings = CompressSettings(technique="structured", ratio=0.5)
    assert preview_settings(settings, upload).get("parameters").kind == "estimate"
    counted = preview_settings(settings, with_layers(upload, conversion.module, typed.test))
    assert counted.get("parameters").kind == "computed" and counted.get("one-shot accuracy").kind == "measured"
    pruned, _ = prune_structured(conversion.module, (torch.zeros(2, 1, 8, 8),), settings.method_stage)
    kept = sum(p.numel() for n, p in pruned.named_parameters() if n in upload.weights)
    assert counted.get("parameters").value == kept
    renamed = {f"onnx::{n}": w for n, w in upload.weights.items()}    # names the conversion does not carry
    other = dataclasses.replace(upload, weights=renamed)
    assert with_layers(other, conversion.module, typed.test) is other


def test_nm_preview_keeps_two_of_every_four_and_says_no_cpu_kernel(mlp):
    loaded, weights, other = mlp
    subject = make_subject(loaded, digits_splits().test)
    p = preview_settings(CompressSettings(technique="nm"), subject)
    assert p.get("sparsity").value == 0.5 and p.get("one-shot accuracy").kind == "measured"
    assert p.gains[0][:2] == ("2:4 sparsity", "simulated") and "no CPU kernel" in p.gains[0][2]
    assert p.get("MACs").value == 50_200 and p.get("MACs").kind == "computed"   # dense kernels multiply zeros


def test_clustering_preview_shows_index_bits_and_measured_accuracy(mlp):
    loaded, weights, other = mlp
    subject = make_subject(loaded, digits_splits().test)
    plain = preview_settings(CompressSettings(sparsity=0.9), subject)
    shared = preview_settings(CompressSettings(sparsity=0.9, clusters=16), subject)
    assert shared.get("index bits").value == 4 and shared.get("index bits").kind == "estimate"
    assert shared.get("minimum storage").value < plain.get("minimum storage").value
    assert shared.get("one-shot accuracy").kind == "measured"
    assert ("clustering", "real") in [g[:2] for g in shared.gains]


def test_lowrank_preview_counts_ranks_and_measures_the_truncated_model(mlp):
    loaded, weights, other = mlp
    subject = make_subject(loaded, digits_splits().test)
    full = dataclasses.replace(subject, factors=svd_factors(weights))
    p = preview_settings(CompressSettings(technique="lowrank", energy=0.9), full)
    counts = preview_settings(CompressSettings(technique="lowrank", energy=0.9), subject)  # singular values only
    assert p.get("parameters").value == counts.get("parameters").value < 50_200
    assert p.get("parameters").kind == "estimate" and p.get("one-shot accuracy").kind == "measured"
    assert "one-shot accuracy" not in [n.label for n in counts.numbers]
    for row in p.layers:
        assert row["rank"] is None or row["after"] < row["params"]   # factorized only where that saves weights
    assert p.layers[-1]["rank"] is None          # the classifier stays whole, as in the lowrank stage
    more = preview_settings(CompressSettings(technique="lowrank", energy=0.99), full)
    assert more.get("parameters").value > p.get("parameters").value   # more energy kept: higher ranks


def test_qat_and_transfer_are_labelled(mlp):
    loaded, weights, other = mlp
    subject = make_subject(loaded, digits_splits().test)
    p = preview_settings(CompressSettings(bits=3, qat=True, classes=(1, 2)), subject)
    gains = {g[0]: g for g in p.gains}
    assert gains["bitwidth"][1] == "real" and "quantization-aware training" in gains["bitwidth"][2]
    assert gains["transfer"][1] == "run"
    simulated = preview_settings(CompressSettings(bits=3), subject)   # post-training 3-bit: stored as float32
    assert p.get("raw size").value < simulated.get("raw size").value / 6    # QAT exports INT4 codes
    assert all(n.kind in ("computed", "estimate", "measured") for n in p.numbers)


def test_lowrank_estimate_matches_what_the_stage_factorizes(cnn):
    from workbench.lowrank import factorize_torch
    from workbench.pruning import torch_weights
    from workbench.specs import LowRankSpec

    loaded, subject = cnn
    p = preview_settings(CompressSettings(technique="lowrank", energy=0.8), subject)
    factorized, _, _ = factorize_torch(loaded.module, LowRankSpec(energy=0.8), (torch.zeros(2, 1, 8, 8),))
    assert p.get("parameters").value == sum(w.numel() for w in torch_weights(factorized).values())


def test_per_layer_bits_round_each_layer_and_size_it_at_its_own_bits(mlp):
    loaded, weights, other = mlp
    mixed = preview(weights, other, 0.0, 8, layer_bits={"fc1": 2, "fc2": 4}, layer_bits_real=True)
    uniform = preview(weights, other, 0.0, 8)
    fc1, fc2, fc3 = list(weights)
    expected = (weights[fc1].size * 2 + weights[fc2].size * 4 + weights[fc3].size * 8) / 50_200
    assert mixed.get("bits per weight").value == pytest.approx(expected, abs=0.01)
    assert "fc1 2" in mixed.get("bits per weight").note and "fc3 8" in mixed.get("bits per weight").note
    saved = (weights[fc1].size * 6 + weights[fc2].size * 4) / 8
    assert uniform.get("raw size").value - mixed.get("raw size").value == pytest.approx(saved)
    assert uniform.get("minimum storage").value > mixed.get("minimum storage").value
    assert mixed.gains[-1][:2] == ("bitwidth", "real") and "4/2" in mixed.gains[-1][2]
    fake = preview(weights, other, 0.0, 8, layer_bits={"fc1": 2, "fc2": 4})
    assert fake.get("raw size").value > uniform.get("raw size").value   # simulated: stored as float32
    assert fake.gains[-1][:2] == ("bitwidth", "simulated")


def test_per_layer_bits_change_the_one_shot_accuracy(mlp):
    loaded, weights, other = mlp
    test = digits_splits().test
    kwargs = {"module": loaded.module, "test": test}
    uniform = preview(weights, other, 0.0, 8, **kwargs).get("one-shot accuracy").value
    crushed = preview(weights, other, 0.0, 8, layer_bits={"fc1": 2}, **kwargs).get("one-shot accuracy").value
    assert crushed < uniform


def test_settings_with_per_layer_bits_preview_them(mlp):
    loaded, weights, other = mlp
    subject = make_subject(loaded, digits_splits().test)
    base = CompressSettings(sparsity=0.5, bits=8)
    mixed = dataclasses.replace(base, layer_bits=(("fc1", 2), ("fc2", 4), ("fc3", 8)),
                                layer_bits_method="weight_only")
    assert preview_settings(mixed, subject).get("raw size").value < preview_settings(base, subject).get(
        "raw size").value


@pytest.mark.parametrize("technique", ["structured", "distill", "lowrank"])
def test_shape_changing_methods_count_each_layer_at_its_bits(mlp, technique):
    loaded, weights, _ = mlp
    subject = dataclasses.replace(make_subject(loaded, digits_splits().test), factors=svd_factors(weights))
    base = CompressSettings(technique=technique, bits=8)
    layer_bits = (("fc1", 2), ("fc2", 4), ("fc3", 8))
    real = preview_settings(dataclasses.replace(base, layer_bits=layer_bits, layer_bits_method="weight_only"),
                            subject)
    fake = preview_settings(dataclasses.replace(base, layer_bits=layer_bits), subject)
    uniform = preview_settings(base, subject)
    after = {row["layer"]: row["after"] for row in uniform.layers}
    assert real.get("minimum storage").value == fake.get("minimum storage").value == pytest.approx(
        uniform.get("minimum storage").value - (after["fc1"] * 6 + after["fc2"] * 4) / 8)
    assert real.get("raw size").value < uniform.get("raw size").value < fake.get("raw size").value
    assert 2 < real.get("bits per weight").value < 8 and "fc1 2" in real.get("bits per weight").note
    assert real.gains[-1][:2] == ("bitwidth", "real") and fake.gains[-1][:2] == ("bitwidth", "simulated")
    if technique == "lowrank":   # the one-shot accuracy of the truncated weights rounds fc1 to 2 bits
        assert fake.get("one-shot accuracy").value < uniform.get("one-shot accuracy").value


def test_the_preview_warns_when_the_global_cut_empties_a_layer_and_lamp_does_not():
    rng = np.random.default_rng(0)
    weights = {"a.weight": rng.normal(size=(100, 50)), "b.weight": rng.normal(size=(10, 100)) / 100}
    plain = preview(weights, 0, 0.8, 32, spec=PruneSpec(sparsity=0.8))
    (warning,) = [g for g in plain.gains if g[1] == "warning"]
    assert warning[0] == "emptied layer" and "b.weight 100.0%" in warning[2] and "method: lamp" in warning[2]
    lamp = preview(weights, 0, 0.8, 32, spec=PruneSpec(sparsity=0.8, method="lamp"))
    assert not [g for g in lamp.gains if g[1] == "warning"]


def test_an_onnx_upload_gets_its_one_shot_accuracy_through_onnx_runtime(tmp_path):
    """The same mask on the exported graph scores as on the torch model: an ONNX user sees what the cut costs."""
    from workbench.export import export_onnx
    from workbench.zoo import load_sample

    test = digits_splits().test
    path = tmp_path / "mlp.onnx"
    onnx.save(export_onnx(load_sample("digits-mlp"), (torch.from_numpy(test.inputs[0][:2]),)), str(path))
    graph = make_subject(load_model(ModelRef(path=str(path))), test)
    eager = make_subject(load_model(ModelRef(sample="digits-mlp")), test)
    setting = CompressSettings(sparsity=0.9)
    onnx_accuracy = preview_settings(setting, graph).get("one-shot accuracy")
    assert onnx_accuracy.kind == "measured" and onnx_accuracy.note.startswith("ONNX Runtime")
    assert onnx_accuracy.value == pytest.approx(preview_settings(setting, eager).get("one-shot accuracy").value)
    assert onnx_accuracy.value < preview_settings(CompressSettings(sparsity=0.5), graph).get("one-shot accuracy").value


def test_one_shot_accuracy_is_paired_with_the_uncompressed_models_answers(mlp):
    from ui.view import _delta
    from workbench.evaluate import answers, torch_predict

    loaded, _, _ = mlp
    test = digits_splits().test
    subject = make_subject(loaded, test)
    np.testing.assert_array_equal(subject.dense_answers, answers(torch_predict(loaded.module, test), test.labels))
    dense = preview_settings(CompressSettings(sparsity=0.0), subject).get("one-shot accuracy")
    assert dense.change == "identical"
    light = preview_settings(CompressSettings(sparsity=0.3), subject).get("one-shot accuracy")
    heavy = preview_settings(CompressSettings(sparsity=0.9), subject).get("one-shot accuracy")
    assert heavy.change == "drop" and "beyond test-set noise" in heavy.note
    assert light.change in ("identical", "within noise")     # 30% one-shot moves at most a sample or two
    noisy = dataclasses.replace(light, value=dense.value - 0.003, change="within noise")
    assert _delta(noisy, dense) == "-0.003, within noise" and _delta(heavy, dense).count(",") == 0
    assert make_subject(loaded, None).dense_answers is None   # no test data: nothing to pair


def test_wanda_ranks_by_the_subjects_input_statistics_and_says_when_it_has_none():
    from workbench.activations import input_rms

    loaded = load_model(ModelRef(sample="digits-mlp"))
    subject = make_subject(loaded, digits_splits().test)
    settings = CompressSettings(method="wanda", sparsity=0.8)
    blind = preview_settings(settings, subject)
    assert ("ranking", "run") in [g[:2] for g in blind.gains]
    seeing = preview_settings(settings, dataclasses.replace(
        subject, rms=input_rms(loaded.module, digits_splits().solving_sample(settings.calib_samples))[0]))
    assert ("ranking", "run") not in [g[:2] for g in seeing.gains]
    blind_acc, seeing_acc = (next(n.value for n in p.numbers if n.label == "one-shot accuracy")
                             for p in (blind, seeing))
    assert seeing_acc > blind_acc + 0.1
