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
    allocate,
    allocate_size,
    analyze,
    fake_quantize_channels,
    layer_key,
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
