import numpy as np
import onnx
import pytest
import torch

from workbench.evaluate import make_session
from workbench.pruning import PRUNERS, compute_masks, prune_onnx, prune_torch, sparsity_of, torch_weights
from workbench.specs import PRUNE_METHODS, PruneSpec


@pytest.fixture()
def weights():
    rng = np.random.default_rng(0)
    return {"a.weight": rng.normal(size=(100, 50)), "b.weight": 3 * rng.normal(size=(10, 100))}


def test_every_spec_method_is_registered():
    assert set(PRUNERS) == set(PRUNE_METHODS)


def test_global_ranks_all_layers_together(weights):
    masks = compute_masks(weights, PruneSpec(sparsity=0.9))
    assert sparsity_of(masks) == pytest.approx(0.9, abs=1e-3)
    # b's weights are 3x larger, so a global threshold prunes b less than a
    assert (1 - masks["b.weight"].mean()) < 0.9 < (1 - masks["a.weight"].mean())


def test_layer_scope_prunes_each_layer_equally(weights):
    masks = compute_masks(weights, PruneSpec(sparsity=0.7, scope="layer"))
    for m in masks.values():
        assert 1 - m.mean() == pytest.approx(0.7, abs=1e-3)


def test_magnitude_keeps_the_largest_weights(weights):
    masks = compute_masks(weights, PruneSpec(sparsity=0.5, scope="layer"))
    w, m = np.abs(weights["a.weight"]), masks["a.weight"]
    assert w[m].min() >= w[~m].max()


def test_random_differs_from_magnitude_and_is_seeded(weights):
    mag = compute_masks(weights, PruneSpec(sparsity=0.5, method="magnitude"))
    rnd = compute_masks(weights, PruneSpec(sparsity=0.5, method="random"))
    again = compute_masks(weights, PruneSpec(sparsity=0.5, method="random"))
    assert not np.array_equal(mag["a.weight"], rnd["a.weight"])
    assert all(np.array_equal(rnd[k], again[k]) for k in rnd)


def test_exclusions_and_overrides(weights):
    masks = compute_masks(weights, PruneSpec(sparsity=0.8, exclude=("b",)))
    assert masks["b.weight"].all()
    assert 1 - masks["a.weight"].mean() == pytest.approx(0.8, abs=1e-3)
    masks = compute_masks(weights, PruneSpec(sparsity=0.8, overrides={"b*": 0.25}))
    assert 1 - masks["b.weight"].mean() == pytest.approx(0.25, abs=1e-3)


def test_iterative_rounds_only_remove_survivors(weights):
    spec = PruneSpec(sparsity=0.9, schedule="iterative")
    first = compute_masks(weights, spec, sparsity=0.2)
    second = compute_masks(weights, spec, sparsity=0.36, keep=first)
    assert sparsity_of(second) == pytest.approx(0.36, abs=1e-3)
    assert all((second[k] <= first[k]).all() for k in first)


def test_prune_torch_zeroes_linear_and_conv_weights_only():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(144, 10))
    assert set(torch_weights(model)) == {"0.weight", "3.weight"}
    masks = prune_torch(model, PruneSpec(sparsity=0.5))
    zeros = sum(int((p == 0).sum()) for p in torch_weights(model).values())
    assert zeros == sum(int((~m).sum()) for m in masks.values()) > 0
    assert (model[1].weight != 0).all()  # BatchNorm untouched


def test_prune_onnx_without_torch_keeps_the_model_runnable(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    masks = prune_onnx(model, PruneSpec(sparsity=0.9))
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    total = sum(a.size for a in arrays.values())
    assert sum(int((a == 0).sum()) for a in arrays.values()) / total == pytest.approx(0.9, abs=1e-3)
    assert sparsity_of(masks) == pytest.approx(0.9, abs=1e-3)
    out = make_session(model).run(None, {"input": np.ones((2, 1, 8, 8), np.float32)})[0]
    assert out.shape == (2, 10)
