"""ONNX uploads with several inputs of different dtypes run through the whole pipeline."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import FAST_MEASURE
from workbench.pipeline import run_pipeline
from workbench.specs import RunSpec, load_recipe


def _two_input_model(path, name="x"):
    """scores = (`name` + float(ids)) @ w: a float input called `name` and an int64 input `ids`."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", [name, "ids_f"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["scores"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_float_and_int64_inputs_with_labels(tmp_path):
    w = _two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    ids = rng.integers(0, 3, size=(64, 1))
    y = ((x + ids) @ w).argmax(1)
    np.savez(tmp_path / "data.npz", x=x, ids=ids, y=y)
    spec = RunSpec.from_dict({"model": {"path": str(tmp_path / "two.onnx")},
                              "data": {"path": str(tmp_path / "data.npz")},
                              "stages": [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "dynamic"}}],
                              "measure": FAST_MEASURE})
    report = run_pipeline(spec)
    assert report.baseline.measurement.metrics["accuracy"] == 1.0
    assert report.variants[0].measurement.size.sparsity == 0.5
    assert 0 <= report.final.measurement.metrics["accuracy"] <= 1


def test_every_example_recipe_is_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        assert load_recipe(path).stages, path
