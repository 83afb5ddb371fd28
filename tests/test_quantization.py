"""Quantization through ONNX Runtime: every method yields an ORT-runnable model that stays close to the
float model, and really is quantized the way its result claims (int8 QDQ, MatMulNBits, fp16, N-bit grid).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from workbench.data import Dataset, digits_splits
from workbench.errors import WorkbenchError
from workbench.onnx_graph import COMPUTE_OPS, op_coverage, weight_tensors
from workbench.onnx_rewrite import gemm_to_matmul
from workbench.quantization import CONV_DYNAMIC_NOTE, QUANTIZERS, QuantResult, fake_quantize_weight, quantize
from workbench.specs import QUANT_METHODS, QuantSpec

N_EVAL = 100


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return digits_splits()


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int) -> nn.Module:
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch steps: extra threads only contend with each other (10x slower)
    try:
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _export(model: nn.Module, example: torch.Tensor, path) -> onnx.ModelProto:
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def mlp(digits, tmp_path_factory) -> onnx.ModelProto:
    """Linear(64,128)-ReLU-Linear(128,10) on flat (N, 64) inputs: calibration data must be reshaped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    x = digits.train.inputs[0].reshape(-1, 64)
    _train(model, x, digits.train.labels, steps=150)
    return _export(model, torch.from_numpy(x[:2]), tmp_path_factory.mktemp("q") / "mlp.onnx")


@pytest.fixture(scope="module")
def cnn(digits, tmp_path_factory) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    _train(model, digits.train.inputs[0], digits.train.labels, steps=60)
    return _export(model, torch.from_numpy(digits.train.inputs[0][:2]), tmp_path_factory.mktemp("q") / "cnn.onnx")


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    x = x.reshape(len(x), *[d if isinstance(d, int) else -1 for d in feed.shape[1:]])
    return session.run(None, {feed.name: x.astype(np.float32)})[0]


def _assert_close_but_changed(result: QuantResult, reference: onnx.ModelProto, digits, min_agreement: float = 0.9):
    """Top-1 agreement with the float model stays high, yet the outputs did change (not skipped)."""
    x = digits.test.inputs[0][:N_EVAL]
    expected, got = _run(reference, x), _run(result.model, x)
    agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
    assert agreement >= min_agreement, f"top-1 agreement {agreement:.2f}"
    assert np.abs(expected - got).max() > 1e-6, "outputs identical to float: nothing was quantized"
    assert result.notes


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _weight_bytes(model: onnx.ModelProto) -> float:
    return sum(w.params * w.bits / 8 for w in weight_tensors(model))


# ----------------------------------------------------------------------------------------------- static


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_quantizes_every_compute_op_to_int8(cnn, digits, calibration):
    result = quantize(cnn, QuantSpec("static", calibration=calibration, calib_samples=100), digits.calib)
    coverage = op_coverage(result.model)
    assert coverage.quantized > 0 and coverage.float_ops == 0
    assert {w.bits for w in weight_tensors(result.model)} == {8}
    assert "QuantizeLinear" in _op_types(result.model)
    assert not result.simulated and result.storage_bits == 8
    _assert_close_but_changed(result, cnn, digits)


def test_static_per_channel_mlp_reshapes_calibration_data(mlp, digits):
    # digits samples are (1, 8, 8); the MLP takes (64,): the calibration reader must adapt them
    result = quantize(mlp, QuantSpec("static", per_channel=True, calib_samples=37), digits.calib)
    assert op_coverage(result.model).quantized == 2
    assert {w.bits for w in weight_tensors(result.model)} == {8}
    _assert_close_but_changed(result, mlp, digits)


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    weights = {w.name for w in weight_tensors(model)}
    return {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
            if t.name.endswith("_scale") and t.dims == [] and t.name.removesuffix("_scale") not in weights}


def test_entropy_calibration_differs_from_minmax(cnn, digits):
    # quantize_static's own entropy defaults degenerate to the full (min/max) range; ours must not
    minmax = _activation_scales(quantize(cnn, QuantSpec("static", calibration="minmax"), digits.calib).model)
    entropy = _activation_scales(quantize(cnn, QuantSpec("static", calibration="entropy"), digits.calib).model)
    assert minmax.keys() == entropy.keys() and minmax
    assert any(entropy[k] < minmax[k] * 0.99 for k in minmax), "entropy clipped no range"


# ---------------------------------------------------------------------------------------------- dynamic


def test_dynamic_default_quantizes_linear_layers_and_leaves_conv_float(cnn, digits):
    result = quantize(cnn, QuantSpec("dynamic"), digits.calib)
    ops = _op_types(result.model)
    assert "Conv" in ops and "ConvInteger" not in ops
    assert "MatMulInteger" in ops and "Gemm" not in ops
    assert op_coverage(result.model).float_ops == 1
    assert CONV_DYNAMIC_NOTE not in result.notes
    assert result.storage_bits == 8 and not result.simulated
    _assert_close_but_changed(result, cnn, digits)


def test_dynamic_with_conv_warns_that_it_is_slow(cnn, digits):
    result = quantize(cnn, QuantSpec("dynamic", op_types=("Conv", "Gemm")), digits.calib)
    assert "ConvInteger" in _op_types(result.model)
    assert op_coverage(result.model).float_ops == 0
    assert CONV_DYNAMIC_NOTE in result.notes
    _assert_close_but_changed(result, cnn, digits)


# ------------------------------------------------------------------------------------------ weight-only


def test_weight_only_4bit_replaces_linear_layers_with_matmulnbits(mlp, digits):
    result = quantize(mlp, QuantSpec("weight_only", weight_bits=4, block_size=32), digits.calib)
    ops = _op_types(result.model)
    assert ops.count("MatMulNBits") == 2 and "Gemm" not in ops
    assert {w.bits for w in weight_tensors(result.model)} == {4}
    assert result.storage_bits == 4 and not result.simulated
    assert any("batch 1" in note for note in result.notes)
    _assert_close_but_changed(result, mlp, digits)


@pytest.mark.parametrize("bits", [2, 8])
def test_weight_only_other_bit_widths_run(mlp, digits, bits):
    result = quantize(mlp, QuantSpec("weight_only", weight_bits=bits), digits.calib)
    assert {w.bits for w in weight_tensors(result.model)} == {bits}
    _assert_close_but_changed(result, mlp, digits, min_agreement=0.9 if bits == 8 else 0.3)


def _dequantized_by_ort(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The (K, N) weights ONNX Runtime's own MatMulNBits kernel decodes: the node alone, fed an identity matrix,
    computing in float (accuracy_level 0; level 4 quantizes the input to int8 and leaves rounding residue)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} | {"accuracy_level": 0}
    k, n = attrs["K"], attrs["N"]
    inits = [t for t in model.graph.initializer if t.name in node.input]
    single = helper.make_node("MatMulNBits", ["a", *node.input[1:]], ["w"], domain="com.microsoft", **attrs)
    graph = helper.make_graph([single], "one", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, [k, n])], inits)
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"a": np.eye(k, dtype=np.float32)})[0]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_only_counts_the_zeros_inside_packed_codes(pruned_mlp, digits, bits):
    """A pruned model stays sparse through MatMulNBits: the count of nonzero weights is what ORT's kernel
    decodes, not every packed code (which showed a 50%-pruned 4-bit model as 0% sparse)."""
    result = quantize(pruned_mlp, QuantSpec("weight_only", weight_bits=bits, block_size=32), digits.calib)
    counted = {w.layer: w.nonzero for w in weight_tensors(result.model)}
    for node in (n for n in result.model.graph.node if n.op_type == "MatMulNBits"):
        assert counted[node.name or node.output[0]] == np.count_nonzero(_dequantized_by_ort(result.model, node))
    before = sum(w.nonzero for w in weight_tensors(pruned_mlp))
    assert before * 0.5 < sum(counted.values()) <= before     # the zeros stay zero; some small weights join them


def test_weight_only_without_linear_layers_is_an_error(digits):
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(WorkbenchError, match=r"quantize\(weight_only\): no MatMul/Gemm"):
        quantize(model, QuantSpec("weight_only", weight_bits=4), digits.calib)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_to_matmul_keeps_the_math(trans_b):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 7) if trans_b else (7, 5)).astype(np.float32)
    c = rng.normal(size=(5,)).astype(np.float32)
    # two Gemms share (tie) one weight: the rewrite must keep one [K, N] copy, not one per node
    nodes = [helper.make_node("Gemm", ["a", "w", "c"], ["h"], alpha=0.5, beta=2.0, transB=trans_b),
             helper.make_node("Gemm", ["a", "w"], ["g"], alpha=0.5, transB=trans_b),
             helper.make_node("Add", ["h", "g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = rng.normal(size=(3, 7)).astype(np.float32)
    before = _run(model, a)
    assert gemm_to_matmul(model) == 2
    assert _op_types(model) == ["MatMul", "Add", "MatMul", "Add"]
    assert sum(len(t.dims) == 2 for t in model.graph.initializer) == 1
    np.testing.assert_allclose(_run(model, a), before, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------- fp16


def test_fp16_halves_weight_bytes_and_keeps_float32_io(cnn, digits):
    result = quantize(cnn, QuantSpec("fp16", weight_bits=16), digits.calib)
    assert _weight_bytes(result.model) == pytest.approx(_weight_bytes(cnn) / 2)
    assert {w.bits for w in weight_tensors(result.model)} == {16}
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert result.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert result.storage_bits == 16 and not result.simulated
    _assert_close_but_changed(result, cnn, digits, min_agreement=0.98)


# ------------------------------------------------------------------------------------------------- fake


@pytest.fixture(scope="module")
def pruned_mlp(mlp) -> onnx.ModelProto:
    """The MLP with the smaller half of each weight matrix set to exactly zero."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(mlp)
    names = {w.name for w in weight_tensors(pruned)}
    for tensor in pruned.graph.initializer:
        if tensor.name in names:
            w = numpy_helper.to_array(tensor).copy()
            w[np.abs(w) < np.median(np.abs(w))] = 0.0
            tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    return pruned


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_4bit_weights_lie_on_a_16_level_grid_and_keep_zeros(pruned_mlp, digits, per_channel):
    result = quantize(pruned_mlp, QuantSpec("fake", weight_bits=4, per_channel=per_channel), digits.calib)
    assert result.simulated and result.storage_bits == 4
    assert any("simulated" in note and "4 bits" in note for note in result.notes)
    before = {t.name: numpy_helper.to_array(t) for t in pruned_mlp.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for weight in weight_tensors(result.model):
        w, original = after[weight.name], before[weight.name]
        assert w.dtype == np.float32 and w.shape == original.shape
        assert np.all(w[original == 0] == 0), "a pruned weight came back"
        # Gemm(transB=1) weights are [out, in]: one grid per row when per-channel
        for row in (w if per_channel else [w]):
            assert len(np.unique(row)) <= 16
        assert not np.array_equal(w, original)
    _assert_close_but_changed(result, pruned_mlp, digits)


def test_fake_quantize_weight_channel_axis_and_edge_cases():
    w = np.array([[0.0, 1.5, -2.0], [0.0, 0.0, 0.0], [0.1, 0.2, 0.3]], dtype=np.float32)
    per_row = fake_quantize_weight(w, bits=2, axis=0)  # levels {-s, 0, s} per row
    np.testing.assert_array_equal(per_row[1], 0.0)  # an all-zero channel stays zero (no 0/0)
    np.testing.assert_allclose(per_row[0], [0.0, 2.0, -2.0])
    assert len(np.unique(fake_quantize_weight(w, bits=3, axis=None))) <= 7


def test_fake_activation_bits_insert_fake_quant_nodes(cnn, digits):
    weights_only = quantize(cnn, QuantSpec("fake", weight_bits=8), digits.calib)
    both = quantize(cnn, QuantSpec("fake", weight_bits=8, activation_bits=4, calib_samples=64), digits.calib)
    compute_ops = sum(1 for n in cnn.graph.node if n.op_type in COMPUTE_OPS)
    assert _op_types(both.model).count("Round") == compute_ops  # one chain on each op's data input
    assert "Round" not in _op_types(weights_only.model)
    x = digits.test.inputs[0][:N_EVAL]
    assert np.abs(_run(both.model, x) - _run(weights_only.model, x)).max() > 1e-4
    assert any("activations" in note for note in both.notes)
    _assert_close_but_changed(both, cnn, digits)


# ------------------------------------------------------------------------------------- contract & errors


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_every_method_leaves_the_input_model_untouched(mlp, digits, method):
    bits = {"weight_only": 4, "fp16": 16, "fake": 4}.get(method, 8)
    before = mlp.SerializeToString()
    result = quantize(mlp, QuantSpec(method, weight_bits=bits, calib_samples=32), digits.calib)
    assert mlp.SerializeToString() == before
    assert _run(result.model, digits.test.inputs[0][:4]).shape == (4, 10)


@pytest.mark.parametrize("method", ["static", "dynamic", "weight_only"])
def test_host_logging_configuration_is_left_alone(mlp, digits, method):
    # ORT calls logging.info() on the root logger, which would install a stderr handler in our CLI
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = []  # pytest's capture handlers would hide the side effect
    try:
        quantize(mlp, QuantSpec(method, weight_bits=4 if method == "weight_only" else 8), digits.calib)
        assert root.handlers == [] and root.level == saved_level
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_registry_has_every_spec_method():
    assert set(QUANTIZERS) == set(QUANT_METHODS)


def test_empty_model_is_a_workbench_error(digits):
    with pytest.raises(WorkbenchError, match=r"^quantize\(static\): "):
        quantize(onnx.ModelProto(), QuantSpec("static"), digits.calib)


def test_broken_graph_is_a_one_line_workbench_error(mlp, digits):
    broken = onnx.ModelProto()
    broken.CopyFrom(mlp)
    broken.graph.node[-1].input[0] = "no_such_tensor"
    with pytest.raises(WorkbenchError, match=r"^quantize\(dynamic\): ") as info:
        quantize(broken, QuantSpec("dynamic"), digits.calib)
    assert "\n" not in str(info.value)


def test_calibration_data_of_the_wrong_shape_is_a_workbench_error(mlp):
    calib = Dataset("odd", (np.zeros((8, 10), np.float32),))
    with pytest.raises(WorkbenchError, match=r"quantize\(static\): odd: samples have shape"):
        quantize(mlp, QuantSpec("static"), calib)


def test_unknown_method_is_a_workbench_error(mlp, digits):
    spec = QuantSpec("static")
    object.__setattr__(spec, "method", "int3")  # bypass spec validation to reach quantize's own guard
    with pytest.raises(WorkbenchError, match=r"quantize\(int3\): unknown method"):
        quantize(mlp, spec, digits.calib)



# ------------------------------------------------------------------------------------------- per layer


def _bits_by_layer(model: onnx.ModelProto) -> dict[str, int]:
    """Stored bits per layer ("0", "2": the Sequential index), whatever ORT renamed the weight to."""
    return {w.name.split(".")[0]: w.bits for w in weight_tensors(model)}


@pytest.mark.parametrize(("method", "bits"), [("static", 8), ("dynamic", 8), ("weight_only", 4)])
def test_exclude_keeps_that_layer_float(mlp, digits, method, bits):
    result = quantize(mlp, QuantSpec(method, weight_bits=bits, exclude=("0",), calib_samples=32), digits.calib)
    assert _bits_by_layer(result.model) == {"0": 32, "2": bits}
    inits = {t.name: t for t in result.model.graph.initializer}
    float_weight = next(w for w in weight_tensors(result.model) if w.name.startswith("0."))
    assert inits[float_weight.name].data_type == TensorProto.FLOAT
    assert op_coverage(result.model).float_ops == 1 and op_coverage(result.model).quantized == 1
    assert "kept in float (exclude): 0" in result.notes
    # the mean over both layers, weighted by their weights: 8192 float, 1280 quantized
    assert result.storage_bits == round((8192 * 32 + 1280 * bits) / 9472)
    _assert_close_but_changed(result, mlp, digits)


def test_exclude_keeps_a_conv_float_in_static_qdq(cnn, digits):
    result = quantize(cnn, QuantSpec("static", exclude=("0",), calib_samples=32), digits.calib)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    inits = {t.name: t for t in result.model.graph.initializer}
    assert conv.input[1] in inits and inits[conv.input[1]].data_type == TensorProto.FLOAT
    assert _bits_by_layer(result.model) == {"0": 32, "5": 8}


def test_weight_only_overrides_give_each_matmulnbits_node_its_bits(mlp, digits):
    result = quantize(mlp, QuantSpec("weight_only", weight_bits=4, overrides={"0": 8, "2": 2}), digits.calib)
    nodes = [n for n in result.model.graph.node if n.op_type == "MatMulNBits"]
    bits = {n.input[1].split(".")[0]: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
            for n in nodes}
    assert bits == {"0": 8, "2": 2} and _bits_by_layer(result.model) == {"0": 8, "2": 2}
    assert result.storage_bits == round((8192 * 8 + 1280 * 2) / 9472) and not result.simulated
    assert "per-layer bits: 8-bit: 0; 2-bit: 2" in result.notes
    _assert_close_but_changed(result, mlp, digits, min_agreement=0.5)


def test_fake_overrides_round_each_layer_to_its_own_grid_and_size_counts_each(mlp, digits):
    from workbench.size import other_tensor_bits, size_stats, tensor_min_bits

    result = quantize(mlp, QuantSpec("fake", weight_bits=6, overrides={"0": 3}), digits.calib)
    after = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert len(np.unique(after["0.weight"])) <= 2 ** 3
    assert 2 ** 3 < len(np.unique(after["2.weight"])) <= 2 ** 6
    assert result.layer_bits == {"0.weight": 3, "2.weight": 6} and result.storage_bits == 3
    weights = weight_tensors(result.model)
    stats = size_stats(result.model.SerializeToString(), weights, result.storage_bits, result.layer_bits)
    expected = sum(tensor_min_bits(w.params, w.nonzero, result.layer_bits[w.name]) for w in weights)
    expected += other_tensor_bits(result.model, {w.name for w in weights})
    assert stats.min_storage_bytes == -(-expected // 8) and stats.storage_bits == 3
    uniform = size_stats(result.model.SerializeToString(), weights, 6)
    assert uniform.min_storage_bytes > stats.min_storage_bytes
    excluded = quantize(mlp, QuantSpec("fake", weight_bits=4, exclude=("2",)), digits.calib)
    original = {t.name: numpy_helper.to_array(t) for t in mlp.graph.initializer}
    kept = {t.name: numpy_helper.to_array(t) for t in excluded.model.graph.initializer}
    assert np.array_equal(kept["2.weight"], original["2.weight"]) and not np.array_equal(kept["0.weight"],
                                                                                         original["0.weight"])
    assert excluded.layer_bits == {"0.weight": 4, "2.weight": 32}


@pytest.mark.parametrize("method", ["static", "fake"])
def test_patterns_matching_no_layer_are_errors(mlp, digits, method):
    message = rf"^quantize\({method}\): exclude: 'fc9' matches no layer \(layers: 0, 2\)"
    with pytest.raises(WorkbenchError, match=message):
        quantize(mlp, QuantSpec(method, weight_bits=8, exclude=("fc9",)), digits.calib)
    with pytest.raises(WorkbenchError, match=r"overrides: 'fc\*' matches no layer"):
        quantize(mlp, QuantSpec("fake", overrides={"fc*": 4}), digits.calib)


def test_a_run_reports_per_layer_bits_in_its_minimum_storage(tmp_path):
    from tests.conftest import FAST_MEASURE
    from workbench.pipeline import run_pipeline
    from workbench.size import other_tensor_bits, size_stats, tensor_min_bits
    from workbench.specs import RunSpec

    stages = [{"quantize": {"method": "fake", "weight_bits": 8, "overrides": {"fc2": 2}}}]
    spec = RunSpec.from_dict({"model": "digits-mlp", "stages": stages, "measure": FAST_MEASURE})
    size = run_pipeline(spec, out_dir=tmp_path).final.measurement.size
    model = onnx.load(str(tmp_path / "model.onnx"))
    weights = weight_tensors(model)
    bits = {"fc1.weight": 8, "fc2.weight": 2, "fc3.weight": 8}
    expected = sum(tensor_min_bits(w.params, w.nonzero, bits[w.name]) for w in weights)
    expected += other_tensor_bits(model, set(bits))
    assert size.min_storage_bytes == -(-expected // 8)
    assert size.storage_bits == round((20_200 * 8 + 30_000 * 2) / 50_200)
    assert size.min_storage_bytes < size_stats(model.SerializeToString(), weights, 8).min_storage_bytes
