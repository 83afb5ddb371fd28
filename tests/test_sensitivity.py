import copy

import numpy as np
import pytest
import torch

from workbench.charts import sensitivity_heatmap
from workbench.data import Dataset, digits_splits
from workbench.errors import WorkbenchError
from workbench.evaluate import score, torch_predict
from workbench.models import LoadedModel, load_model
from workbench.pruning import _matches, compute_masks, prune_torch, sparsity_of, torch_weights
from workbench.sensitivity import (
    BITS,
    SPARSITIES,
    Cell,
    Sensitivity,
    allocate,
    allocate_bits,
    allocate_size,
    analyze,
    fake_quantize_channels,
    layer_key,
    matmul_only,
    weight_bytes,
)
from workbench.specs import ModelRef, PruneSpec


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


@pytest.fixture(scope="module")
def mlp():
    return load_model(ModelRef(sample="digits-mlp"))


@pytest.fixture(scope="module")
def mlp_sens(mlp, splits):
    return analyze(mlp, splits.test)


def _accuracy(module, spec: PruneSpec, test: Dataset) -> tuple[float, float]:
    pruned = copy.deepcopy(module)
    masks = prune_torch(pruned, spec)
    return score(torch_predict(pruned, test), test.labels)["accuracy"], sparsity_of(masks)


def test_tables_cover_every_layer_and_level_and_leave_the_model_unchanged(mlp, mlp_sens, splits):
    before = {n: p.detach().clone() for n, p in torch_weights(mlp.module).items()}
    again = analyze(mlp, splits.test)
    assert again.to_dict() | {"seconds": 0} == mlp_sens.to_dict() | {"seconds": 0}   # deterministic
    assert all(torch.equal(before[n], p) for n, p in torch_weights(mlp.module).items())
    assert mlp_sens.metric == "accuracy" and mlp_sens.params == {"fc1.weight": 19200, "fc2.weight": 30000,
                                                                 "fc3.weight": 1000}
    frame = mlp_sens.frame("sparsity")
    assert len(frame) == 3 * len(SPARSITIES) and len(mlp_sens.frame("bits")) == 3 * len(BITS)
    for layer in ("fc1.weight", "fc2.weight", "fc3.weight"):
        cells = mlp_sens.sparsity[layer]
        assert cells[0.99].drop > cells[0.2].drop + 20      # pruning a layer to 99% breaks the model
        assert cells[0.99].kl > cells[0.5].kl > cells[0.2].kl
        assert abs(mlp_sens.bits[layer][8].drop) <= 0.6     # 8-bit rounding of one layer is harmless
    baseline = score(torch_predict(mlp.module, splits.test), splits.test.labels)["accuracy"]
    assert mlp_sens.baseline == pytest.approx(baseline)


def test_a_cell_is_that_layer_alone_pruned_by_the_pipelines_masks(mlp, mlp_sens, splits):
    module = copy.deepcopy(mlp.module)
    spec = PruneSpec(scope="layer", sparsity=0.9, exclude=("fc1", "fc3"))
    accuracy, _ = _accuracy(module, spec, splits.test)
    assert mlp_sens.sparsity["fc2.weight"][0.9].metric == pytest.approx(accuracy, abs=1e-6)


def _mlp_graph(module):
    """digits-mlp as ONNX Gemm(transB=1) nodes, written with onnx.helper (as torch exports it, minus the wait)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(p.detach().numpy(), n) for n, p in module.named_parameters()]
    nodes = [helper.make_node("Flatten", ["input"], ["h0"])]
    for i, layer in enumerate(("fc1", "fc2", "fc3")):
        out = "logits" if layer == "fc3" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"{layer}.weight", f"{layer}.bias"], [out], transB=1))
        if layer != "fc3":
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_onnx_graphs_give_the_same_table_and_unlabelled_data_uses_agreement(mlp, mlp_sens, splits, tiny_onnx):
    graph = _mlp_graph(mlp.module)
    sens = analyze(LoadedModel("mlp.onnx", "onnx", onnx_model=graph), splits.test, sparsities=(0.5, 0.9), bits=(4,))
    for layer in mlp_sens.layers:
        assert sens.sparsity[layer][0.9].drop == pytest.approx(mlp_sens.sparsity[layer][0.9].drop, abs=0.3)
        assert sens.bits[layer][4].drop == pytest.approx(mlp_sens.bits[layer][4].drop, abs=0.3)
    tiny = load_model(ModelRef(path=str(tiny_onnx)))
    unlabelled = Dataset("x", splits.test.inputs)
    sens = analyze(tiny, unlabelled, sparsities=(0.5, 0.99), bits=(2,))
    assert sens.metric == "top1_agreement" and sens.baseline == 1.0
    assert sens.sparsity["conv.weight"][0.99].drop > 0


def test_per_channel_rounding():
    w = np.array([[1.0, -0.5, 0.25, 0.0], [10.0, 3.0, -7.0, 0.1]], dtype=np.float32)
    q = fake_quantize_channels(w, 4)
    assert q.dtype == np.float32 and q[1, 0] == 10.0 and q[0, 0] == 1.0 and q[0, 3] == 0.0
    assert np.all(np.abs(q - w) <= np.abs(w).max(axis=1, keepdims=True) / 7 / 2 + 1e-6)
    assert len(np.unique(fake_quantize_channels(w.T, 2, axis=-1)[:, 1])) <= 4


def test_allocation_hits_the_target_and_respects_exclusions_and_the_cap(mlp, mlp_sens):
    weights = {n: p.detach().numpy() for n, p in torch_weights(mlp.module).items()}
    for target in (0.3, 0.6, 0.9, 0.95):
        allocation = allocate(mlp_sens, target)
        assert allocation.achieved == pytest.approx(target, abs=1e-4) and allocation.note == ""
        assert max(allocation.sparsities.values()) <= 0.99
        masks = compute_masks(weights, allocation.prune_spec())
        assert sparsity_of(masks) == pytest.approx(target, abs=0.005)
    kept = allocate(mlp_sens, 0.6, exclude=["fc3"])
    assert kept.sparsities["fc3"] == 0.0 and kept.exclude == ("fc3",) and "fc3" not in kept.overrides
    assert kept.prune_spec().exclude == ("fc3",) and kept.achieved == pytest.approx(0.6, abs=1e-4)
    capped = allocate(mlp_sens, 0.9, exclude=["fc2"])   # fc2 holds 60% of the weights
    assert capped.achieved == pytest.approx(0.99 * 20200 / 50200, abs=1e-4) and "out of reach" in capped.note
    with pytest.raises(WorkbenchError, match="'fc9' matches no layer"):
        allocate(mlp_sens, 0.5, exclude=["fc9"])
    with pytest.raises(WorkbenchError, match="target"):
        allocate(mlp_sens, 1.0)


def test_allocation_beats_global_and_uniform_magnitude_at_equal_sparsity(mlp, splits):
    # sensitivity from the calibration split, accuracy on the test split: the allocation never saw the test set
    sens = analyze(mlp, splits.calib)
    allocated, reached = _accuracy(mlp.module, allocate(sens, 0.8).prune_spec(), splits.test)
    global_, _ = _accuracy(mlp.module, PruneSpec(sparsity=0.8), splits.test)
    uniform, _ = _accuracy(mlp.module, PruneSpec(sparsity=0.8, scope="layer"), splits.test)
    assert reached == pytest.approx(0.8, abs=0.005)
    assert allocated > global_ + 0.02 and allocated > uniform + 0.1, (allocated, global_, uniform)


def test_size_allocation_fits_the_budget(mlp_sens):
    allocation = allocate_size(mlp_sens, 20 * 1024, bits=8)
    size = weight_bytes(mlp_sens, allocation.sparsities, 8)
    assert 0.97 * 20 * 1024 <= size <= 20 * 1024 and "KB at 8 bits" in allocation.note
    assert allocate_size(mlp_sens, 10**9).achieved == 0.0     # already fits: nothing pruned
    assert "out of reach" in allocate_size(mlp_sens, 100, bits=8).note


def test_layer_keys_match_only_their_layer():
    assert layer_key("blocks.0.attn.qkv.weight") == "blocks.0.attn.qkv"
    key = layer_key("w[0]*")
    assert key == "w[[]0][*]" and _matches("w[0]*", [key]) and not _matches("w00", [key])


def test_bad_levels_and_outputs_are_one_line_errors(mlp, splits):
    with pytest.raises(WorkbenchError, match="sparsities"):
        analyze(mlp, splits.test, sparsities=(0.5, 1.0))
    with pytest.raises(WorkbenchError, match="bits"):
        analyze(mlp, splits.test, bits=(1,))
    scalar = LoadedModel("scalar", "torch", module=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1)))
    with pytest.raises(WorkbenchError, match="class scores"):
        analyze(scalar, splits.test)


def test_heatmap_spec(mlp_sens):
    spec = sensitivity_heatmap(mlp_sens.frame("sparsity"), "sparsity").to_dict()
    cells = spec["layer"][0]
    assert cells["mark"]["type"] == "rect" and cells["encoding"]["color"]["field"] == "drop"
    assert cells["encoding"]["x"]["sort"][0] == "20%" and cells["encoding"]["y"]["sort"] == ["fc1", "fc2", "fc3"]
    bits = sensitivity_heatmap(mlp_sens.frame("bits"), "bits").to_dict()
    assert bits["layer"][0]["encoding"]["x"]["sort"] == ["8-bit", "6-bit", "4-bit", "3-bit", "2-bit"]


def _constructed(kls: dict[str, dict[int, float]], params: dict[str, int]) -> Sensitivity:
    """A sensitivity whose bits table says what each layer's rounding costs (KL; drop = 100 x KL)."""
    bits = {f"{n}.weight": {b: Cell(0.9, 100 * kl, kl) for b, kl in levels.items()} for n, levels in kls.items()}
    return Sensitivity("made", "accuracy", 0.9, {f"{n}.weight": p for n, p in params.items()}, {}, bits, 0.0)


def test_bits_allocation_fits_the_target_and_spares_the_sensitive_layer():
    # three equal layers; "b" degrades a hundred times faster than the others when rounded
    cheap = {8: 0.0, 6: 0.001, 4: 0.002, 3: 0.004, 2: 0.01}
    sens = _constructed({"a": cheap, "b": {b: 100 * kl for b, kl in cheap.items()}, "c": cheap},
                        {"a": 1000, "b": 1000, "c": 1000})
    target = 3000 * 4 / 8                                    # every layer at 4 bits, dense
    allocation = allocate_bits(sens, target)
    assert allocation.estimated_bytes <= target and allocation.bits["b"] > 4 > min(allocation.bits.values())
    assert allocation.estimated_bytes == sum(1000 * b / 8 for b in allocation.bits.values())
    uniform_kl = sum(sens.bits[n][4].kl for n in sens.layers)
    assert allocation.kl < uniform_kl and "estimate" in allocation.note
    assert allocation.to_overrides() == allocation.bits and allocation.quant_spec().method == "fake"
    assert allocate_bits(sens, 10**6).bits == {"a": 8, "b": 8, "c": 8}   # fits as it is: nothing lowered
    real = allocate_bits(sens, target, choices=(8, 4, 2))
    assert set(real.bits.values()) <= {8, 4, 2} and real.bits["b"] == 8
    assert real.quant_spec(matmul_only=True).method == "weight_only"
    assert real.quant_spec(matmul_only=False).method == "fake"
    kept = allocate_bits(sens, 1000 * 32 / 8 + 2000 * 3 / 8, exclude=["b"])
    assert kept.bits == {"a": 3, "b": 32, "c": 3} and kept.exclude == ("b",)
    assert kept.quant_spec().exclude == ("b",) and "b" not in kept.quant_spec().overrides


def test_bits_allocation_errors():
    sens = _constructed({"a": {8: 0.0, 4: 0.1, 2: 0.5}}, {"a": 1000})
    with pytest.raises(WorkbenchError, match=r"0.1 KB is out of reach: even 2 bits per weight need 0.2 KB"):
        allocate_bits(sens, 100, choices=(8, 4, 2))
    with pytest.raises(WorkbenchError, match=r"choices: each must be a measured bit width \(2, 4, 8\)"):
        allocate_bits(sens, 1000, choices=(8, 3))
    with pytest.raises(WorkbenchError, match="'z' matches no layer"):
        allocate_bits(sens, 1000, choices=(8, 4), exclude=["z"])
    with pytest.raises(WorkbenchError, match="every layer is excluded"):
        allocate_bits(sens, 10**6, choices=(8, 4), exclude=["a"])
    with pytest.raises(WorkbenchError, match="target_bytes"):
        allocate_bits(sens, 0)


def test_bits_allocation_on_the_mlp_runs_as_mixed_precision(mlp, mlp_sens):
    weights = torch_weights(mlp.module)
    assert matmul_only(weights) and not matmul_only({"conv": np.zeros((4, 1, 3, 3))})
    allocation = allocate_bits(mlp_sens, 20 * 1024, choices=(8, 4, 2))
    assert allocation.estimated_bytes <= 20 * 1024 and set(allocation.bits) == {"fc1", "fc2", "fc3"}
    quant = allocation.quant_spec(matmul_only(weights))
    assert quant.method == "weight_only" and quant.overrides == allocation.bits
