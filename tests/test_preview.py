import numpy as np
import pytest

from workbench.data import digits_splits
from workbench.models import load_model
from workbench.preview import fake_quantize, model_weights, preview
from workbench.specs import ModelRef


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
