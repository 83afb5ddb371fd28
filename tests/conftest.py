"""Shared fixtures: an isolated data dir, fast measurement settings, tiny models written to disk."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")   # before any test imports onnxruntime

FAST_MEASURE = {"batch_sizes": [1, 32], "warmup": 1, "repeats": 5, "threads": 1, "min_time_s": 0}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own WORKBENCH_HOME, so nothing touches the user's data dir."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A small float Conv+Gemm ONNX model on (N, 1, 8, 8) inputs, built with onnx.helper (no torch)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv_w = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)
    fc_w = rng.normal(size=(10, 8 * 6 * 6)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.weight"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(conv_w, "conv.weight"), numpy_helper.from_array(fc_w, "fc.weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def einsum_onnx(tmp_path_factory):
    """A digits classifier whose one layer is an Einsum: ONNX Runtime runs it, but it has no Conv/Gemm/MatMul
    layer and no torch conversion (node 'mix')."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("Einsum", ["flat", "w"], ["logits"], equation="bi,io->bo", name="mix")], "einsum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "einsum.onnx"
    onnx.save(model, str(path))
    return path
