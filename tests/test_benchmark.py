"""benchmark: one LatencyStats per batch size, sane numbers, tiling, thread restore."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.benchmark import LatencyStats, ort_latency, tiled_inputs, time_calls, torch_latency
from workbench.data import Dataset
from workbench.errors import WorkbenchError


def gemm_model(batch: str | int = "batch") -> bytes:
    w = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def dataset(n: int) -> Dataset:
    return Dataset("d", (np.random.default_rng(1).standard_normal((n, 64)).astype(np.float32),))


def check(stats: list[LatencyStats], engine: str, sizes: list[int], threads: int) -> None:
    assert [s.batch_size for s in stats] == sizes
    for s in stats:
        assert s.engine == engine and s.threads == threads
        assert 0 < s.median_ms <= s.p90_ms and s.mean_ms > 0
        assert s.repeats >= 5 and s.warmup == 2
        assert set(s.to_dict()) == {"engine", "batch_size", "threads", "median_ms", "p90_ms", "mean_ms",
                                    "repeats", "warmup"}


def test_ort_latency_per_batch_size_with_tiling() -> None:
    stats = ort_latency(gemm_model(), dataset(3), batch_sizes=[1, 16], threads=1, warmup=2, repeats=8)
    check(stats, "onnxruntime", [1, 16], 1)
    assert all(s.repeats == 8 for s in stats)


def test_tiled_inputs_repeats_samples() -> None:
    data = dataset(3)
    tiled = tiled_inputs(data, 7).inputs[0]
    assert tiled.shape == (7, 64)
    np.testing.assert_array_equal(tiled[3:6], data.inputs[0])
    np.testing.assert_array_equal(tiled_inputs(data, 2).inputs[0], data.inputs[0][:2])


def test_time_budget_stops_early_but_keeps_five_calls() -> None:
    times = time_calls(lambda: sum(range(1000)), warmup=1, repeats=10_000, budget_s=0.0)
    assert len(times) == 5 and all(t > 0 for t in times)
    assert len(time_calls(lambda: None, warmup=0, repeats=2)) == 2


def test_fixed_batch_model_skips_other_sizes() -> None:
    stats = ort_latency(gemm_model(batch=4), dataset(10), batch_sizes=[1, 4], threads=1, warmup=2, repeats=5)
    assert [s.batch_size for s in stats] == [4]


def test_bad_arguments() -> None:
    with pytest.raises(WorkbenchError, match="batch_sizes"):
        ort_latency(gemm_model(), dataset(3), batch_sizes=[0], threads=1, warmup=1, repeats=5)


def test_torch_latency_restores_threads() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(64, 10)
    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    stats = torch_latency(module, dataset(3), batch_sizes=[1, 8], threads=target, warmup=2, repeats=6)
    check(stats, "torch-eager", [1, 8], target)
    assert torch.get_num_threads() == before
    assert module.training


def test_min_time_keeps_timing_fast_calls():
    from workbench.benchmark import time_calls

    times = time_calls(lambda: None, warmup=0, repeats=5, min_time_s=0.05)
    assert len(times) > 5  # far more than `repeats`: a no-op takes well under 10 ms
    assert len(time_calls(lambda: None, warmup=0, repeats=5)) == 5
