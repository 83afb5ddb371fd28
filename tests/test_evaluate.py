"""evaluate: sessions, feeds, predictions against numpy math, and scoring."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.data import Dataset
from workbench.errors import WorkbenchError
from workbench.evaluate import feeds, make_session, predict, score, torch_predict


def gemm_model(in_shape: list, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Flatten -> Gemm 64->10; `in_shape` is the declared input shape (batch axis first)."""
    w = rng.standard_normal((64, 10)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["y"])]
    graph = helper.make_graph(
        nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, w, b


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_predict_matches_numpy(rng: np.random.Generator) -> None:
    model, w, b = gemm_model(["batch", 64], rng)
    x = rng.standard_normal((37, 64))  # float64 data: cast to the model's float32
    out = predict(make_session(model), Dataset("d", (x,)), batch_size=8)
    assert out.dtype == np.float32 and out.shape == (37, 10)
    np.testing.assert_allclose(out, x.astype(np.float32) @ w + b, rtol=1e-4, atol=1e-4)


def test_session_from_bytes_and_path(rng: np.random.Generator, tmp_path) -> None:
    model, _, _ = gemm_model(["batch", 64], rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    a = predict(make_session(model.SerializeToString(), threads=2), Dataset("d", (x,)))
    c = predict(make_session(str(path)), Dataset("d", (x,)))
    np.testing.assert_array_equal(a, c)


def test_make_session_errors(tmp_path) -> None:
    with pytest.raises(WorkbenchError, match="not found"):
        make_session(tmp_path / "missing.onnx")
    with pytest.raises(WorkbenchError, match="cannot load") as info:
        make_session(b"not a model")
    assert "\n" not in str(info.value)


def test_feeds_reshapes_flat_data_to_image_input(rng: np.random.Generator) -> None:
    model, w, b = gemm_model(["batch", 1, 8, 8], rng)
    session = make_session(model)
    x = rng.standard_normal((10, 64)).astype(np.float32)
    fed = feeds(session, Dataset("d", (x,)), 2, 5)
    assert fed["x"].shape == (3, 1, 8, 8) and fed["x"].dtype == np.float32
    np.testing.assert_allclose(predict(session, Dataset("d", (x,))), x @ w + b, rtol=1e-4, atol=1e-4)


def test_feeds_errors(rng: np.random.Generator) -> None:
    session = make_session(gemm_model(["batch", 1, 8, 8], rng)[0])
    with pytest.raises(WorkbenchError, match=r"samples have shape \(63,\), the model expects \(1, 8, 8\)"):
        feeds(session, Dataset("d", (np.zeros((4, 63), np.float32),)), 0, 4)
    with pytest.raises(WorkbenchError, match=r"expects 1 input\(s\) \(x\), the data gives 2"):
        feeds(session, Dataset("d", (np.zeros((4, 64)), np.zeros((4, 64)))), 0, 4)


def test_fixed_batch_model_is_run_at_its_batch_size(rng: np.random.Generator) -> None:
    model, w, b = gemm_model([4, 64], rng)
    x = rng.standard_normal((10, 64)).astype(np.float32)  # 10 is not a multiple of 4: last batch padded
    out = predict(make_session(model), Dataset("d", (x,)), batch_size=256)
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-4, atol=1e-4)


def test_score_accuracy_known_value() -> None:
    outputs = np.eye(4, dtype=np.float32)  # predicts 0, 1, 2, 3
    assert score(outputs, labels=np.array([0, 1, 0, 0])) == {"accuracy": 0.5}


def test_score_fidelity_identical_outputs() -> None:
    outputs = np.random.default_rng(1).standard_normal((20, 5)).astype(np.float32)
    metrics = score(outputs, labels=np.argmax(outputs, 1), reference=outputs.copy())
    assert metrics["accuracy"] == 1.0
    assert metrics["top1_agreement"] == 1.0
    assert metrics["output_mse"] == 0.0
    assert metrics["output_cosine"] == pytest.approx(1.0)


def test_score_fidelity_values() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    out = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    metrics = score(out, reference=ref)
    assert metrics["top1_agreement"] == 0.5  # row 2 ties at 0 -> both argmax 0
    assert metrics["output_mse"] == pytest.approx(0.5)
    assert metrics["output_cosine"] == pytest.approx(0.5)  # orthogonal (0) and both-zero (1)
    assert score(out) == {}


def test_score_errors() -> None:
    with pytest.raises(WorkbenchError, match="classes"):
        score(np.zeros((3, 4)), labels=np.array([0, 1, 4]))
    with pytest.raises(WorkbenchError, match=r"model output has shape \(3, 2, 4\), expected \(N, classes\)"):
        score(np.zeros((3, 2, 4)), labels=np.array([0, 1, 2]))
    with pytest.raises(WorkbenchError, match="reference"):
        score(np.zeros((3, 4)), reference=np.zeros((3, 5)))
    # non-class outputs still get fidelity, without top-1 agreement
    metrics = score(np.ones((3, 2, 1)), reference=np.ones((3, 2, 1)))
    assert "top1_agreement" not in metrics and metrics["output_mse"] == 0.0


def test_torch_predict_matches_numpy_and_restores_mode() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    module.train()
    x = np.random.default_rng(2).standard_normal((9, 1, 8, 8))
    out = torch_predict(module, Dataset("d", (x,)), batch_size=4)
    w, b = module[1].weight.detach().numpy(), module[1].bias.detach().numpy()
    assert out.dtype == np.float32 and out.shape == (9, 10)
    np.testing.assert_allclose(out, x.reshape(9, 64).astype(np.float32) @ w.T + b, rtol=1e-4, atol=1e-4)
    assert module.training
