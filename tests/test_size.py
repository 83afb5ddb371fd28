"""size: dense, sparse and low-bit storage of weight tensors, plus non-weight initializers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.errors import WorkbenchError
from workbench.onnx_graph import weight_tensors
from workbench.size import gzip_size, size_stats, tensor_min_bits


def model_bytes(w: np.ndarray, bias: np.ndarray | None = None) -> bytes:
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", inputs, ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def stats_for(data: bytes, storage_bits: int | None = None):
    return size_stats(data, weight_tensors(onnx.load_from_string(data)), storage_bits)


def weights(sparsity: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((100, 10)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0.0
    return w


def test_dense_fp32() -> None:
    data = model_bytes(weights())
    s = stats_for(data)
    assert s.params == 1000 and s.nonzero == 1000 and s.sparsity == 0.0
    assert s.bits_per_weight == 32 and s.storage_bits == 32
    assert s.min_storage_bytes == 4000
    assert s.file_bytes == len(data) > 4000
    assert set(s.to_dict()) == {"file_bytes", "gzip_bytes", "params", "nonzero", "sparsity", "bits_per_weight",
                                "min_storage_bytes", "storage_bits"}


def test_other_initializers_count_at_stored_size() -> None:
    s = stats_for(model_bytes(weights(), bias=np.zeros(10, np.float32)))
    assert s.params == 1000 and s.min_storage_bytes == 4000 + 40


def test_sparse_is_smaller() -> None:
    w = weights(sparsity=0.9)
    s = stats_for(model_bytes(w))
    nnz = int(np.count_nonzero(w))
    assert s.nonzero == nnz and s.sparsity == pytest.approx(1 - nnz / 1000)
    assert s.min_storage_bytes < 4000 / 4
    assert s.min_storage_bytes == -(-(nnz * 32 + min(1000, nnz * 10)) // 8)  # 10 = ceil(log2 1000)
    assert s.gzip_bytes < s.file_bytes


def test_storage_bits_override() -> None:
    s = stats_for(model_bytes(weights()), storage_bits=4)
    assert s.bits_per_weight == 32 and s.storage_bits == 4
    assert s.min_storage_bytes == 500


def test_tensor_min_bits_picks_cheapest() -> None:
    assert tensor_min_bits(1000, 1000, 8) == 8000           # dense
    assert tensor_min_bits(1000, 500, 8) == 500 * 8 + 1000  # bitmap
    assert tensor_min_bits(1000, 10, 8) == 10 * 8 + 10 * 10  # coordinate list
    assert tensor_min_bits(1000, 0, 8) == 0
    assert tensor_min_bits(0, 0, 8) == 0


def test_gzip_size_and_errors() -> None:
    assert gzip_size(bytes(10_000)) < 100
    assert gzip_size(b"abc") == gzip_size(b"abc")
    with pytest.raises(WorkbenchError, match="ONNX"):
        size_stats(b"\x00\xffgarbage", [])
