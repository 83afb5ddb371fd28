import numpy as np
import onnx
import pytest
import torch

from workbench import pruning
from workbench.errors import WorkbenchError
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


def test_a_pattern_matches_the_weight_its_layer_or_a_module_holding_it():
    assert pruning._matches("fc1.0.weight", ["fc1"]) and pruning._matches("fc1.1.weight", ["fc1.1"])
    assert pruning._matches("attn.out_proj.weight", ["attn"]) and pruning._matches("fc1.weight", ["fc1.weight"])
    assert not pruning._matches("fc10.weight", ["fc1"]) and not pruning._matches("fc1.weight", ["fc1.0"])
    assert pruning.override_for("fc1.0.weight", {"fc2": 2, "fc*": 4}) == 4


@pytest.mark.parametrize("field", ["exclude", "overrides"])
def test_a_layer_pattern_that_matches_nothing_is_an_error_naming_the_layers(weights, field):
    value = ("fc9",) if field == "exclude" else {"fc9": 0.5}
    with pytest.raises(WorkbenchError, match=rf"^prune {field}: 'fc9' matches no layer \(layers: a, b\)$"):
        compute_masks(weights, PruneSpec(sparsity=0.8, **{field: value}))


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


# --- N:M (semi-structured) masks -----------------------------------------------------------------

def _groups(mask: np.ndarray, axis: int, m: int = 4) -> np.ndarray:
    """Kept count per group of `m` consecutive entries along `axis` (the input dimension)."""
    moved = np.moveaxis(mask, axis, -1)
    return moved.reshape(*moved.shape[:-1], -1, m).sum(-1)


@pytest.mark.parametrize("method", PRUNE_METHODS)
def test_nm_keeps_exactly_n_of_every_m_along_the_input_dimension(method):
    rng = np.random.default_rng(1)
    weights = {"fc.weight": rng.normal(size=(6, 16)), "conv.weight": rng.normal(size=(5, 8, 3, 3))}
    masks = compute_masks(weights, PruneSpec(nm="2:4", sparsity=0.5, method=method))
    assert (_groups(masks["fc.weight"], 1) == 2).all()
    assert (_groups(masks["conv.weight"], 1) == 2).all()   # grouped along in-channels per (out, kh, kw)
    assert sparsity_of(masks) == 0.5


def test_nm_magnitude_keeps_the_largest_of_each_group():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 9.0, -8.0, 0.0, 7.0]])
    mask = compute_masks({"w": w}, PruneSpec(nm="2:4", sparsity=0.5))["w"]
    assert mask.tolist() == [[False, True, True, False, True, True, False, False]]
    mask = compute_masks({"w": w}, PruneSpec(nm="1:4", sparsity=0.75))["w"]
    assert mask.sum() == 2 and mask[0, 1] and mask[0, 4]


def test_nm_remainder_stays_dense_and_is_named():
    weights = {"fc.weight": np.arange(1.0, 31.0).reshape(3, 10), "stem.weight": np.ones((4, 1, 3, 3)),
               "head.weight": np.ones((2, 8))}
    spec = PruneSpec(nm="2:4", sparsity=0.5)
    masks = compute_masks(weights, spec)
    assert (_groups(masks["fc.weight"][:, :8], 1) == 2).all()
    assert masks["fc.weight"][:, 8:].all()             # the last 2 inputs of every row: no full group
    assert masks["stem.weight"].all()                  # input dimension 1: nothing to group
    notes = pruning.nm_notes(weights, spec)
    assert "no CPU kernel" in notes[0] and "no speedup expected" in notes[0]
    assert any("fc.weight" in n and "input dimension 10" in n for n in notes)
    assert any("stem.weight" in n for n in notes) and not any("head.weight" in n for n in notes)


def test_nm_respects_exclusions_and_earlier_masks():
    rng = np.random.default_rng(2)
    weights = {"a.weight": rng.normal(size=(4, 8)), "b.weight": rng.normal(size=(4, 8))}
    earlier = {"a.weight": np.ones((4, 8), bool), "b.weight": np.ones((4, 8), bool)}
    earlier["a.weight"][:, :3] = False
    masks = compute_masks(weights, PruneSpec(nm="2:4", sparsity=0.5, exclude=("b",)), keep=earlier)
    assert masks["b.weight"].all()
    assert not masks["a.weight"][:, :3].any() and (_groups(masks["a.weight"], 1) <= 2).all()


def test_nm_on_torch_zeroes_two_of_four_per_group():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 12))
    prune_torch(model, PruneSpec(nm="2:4", sparsity=0.5))
    conv, fc = (m.weight.detach().numpy() != 0 for m in (model[0], model[2]))
    assert (_groups(conv, 1) == 2).all() and (_groups(fc, 1) == 2).all()
    up = torch.nn.ConvTranspose2d(8, 3, 2)             # weight (in=8, out=3, 2, 2): inputs on axis 0
    prune_torch(up, PruneSpec(nm="2:4", sparsity=0.5))
    assert (_groups(up.weight.detach().numpy() != 0, 0) == 2).all()


def _matmul_onnx(weights: dict[str, np.ndarray], transpose: bool = False) -> onnx.ModelProto:
    """x (N, 16) -> MatMul (16, 8) -> Gemm (8, 12) with transB -> Gemm (12, 4) without, optionally with
    the first weight stored (8, 16) behind a Transpose."""
    from onnx import TensorProto, helper, numpy_helper

    first = "w1t" if transpose else "w1"
    nodes = [helper.make_node("Transpose", ["w1"], ["w1t"], perm=[1, 0])] if transpose else []
    nodes += [helper.make_node("MatMul", ["x", first], ["h1"], name="mm"),
              helper.make_node("Gemm", ["h1", "w2"], ["h2"], name="gemm_t", transB=1),
              helper.make_node("Gemm", ["h2", "w3"], ["y"], name="gemm")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [numpy_helper.from_array(w.astype(np.float32), k) for k, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nm_on_onnx_groups_along_each_ops_input_axis():
    rng = np.random.default_rng(3)
    weights = {"w1": rng.normal(size=(16, 8)), "w2": rng.normal(size=(12, 8)), "w3": rng.normal(size=(12, 4))}
    model = _matmul_onnx(weights)
    assert pruning.onnx_input_axes(model) == {"w1": 0, "w2": 1, "w3": 0}
    prune_onnx(model, PruneSpec(nm="2:4", sparsity=0.5))
    pruned = {t.name: onnx.numpy_helper.to_array(t) != 0 for t in model.graph.initializer}
    assert (_groups(pruned["w1"], 0) == 2).all()   # MatMul (in, out)
    assert (_groups(pruned["w2"], 1) == 2).all()   # Gemm transB (out, in)
    assert (_groups(pruned["w3"], 0) == 2).all()   # Gemm (in, out)
    out = make_session(model).run(None, {"x": np.ones((2, 16), np.float32)})[0]
    assert out.shape == (2, 4)


def test_nm_on_onnx_follows_a_transpose_and_prunes_conv_like_torch(tiny_onnx):
    rng = np.random.default_rng(4)
    model = _matmul_onnx({"w1": rng.normal(size=(8, 16)), "w2": rng.normal(size=(12, 8)),
                          "w3": rng.normal(size=(12, 4))}, transpose=True)
    assert pruning.onnx_input_axes(model)["w1"] == 1   # stored (out, in), transposed before the MatMul
    conv = onnx.load(str(tiny_onnx))
    masks = prune_onnx(conv, PruneSpec(nm="2:4", sparsity=0.5))
    assert masks["conv.weight"].all()                  # Conv 1 -> 8: one input channel, left dense
    assert (_groups(masks["fc.weight"], 1) == 2).all()  # Gemm transB=1: (out, in)


def test_a_layer_the_global_ranking_all_but_empties_is_named(weights):
    small = {"a.weight": weights["a.weight"], "b.weight": weights["b.weight"] / 100}   # b ranks last everywhere
    spec = PruneSpec(sparsity=0.8)
    notes = pruning.emptied_notes(compute_masks(small, spec), spec)
    assert len(notes) == 1 and notes[0].startswith("global ranking all but emptied b.weight 100.0% at 80% overall")
    for fine in (PruneSpec(sparsity=0.8, scope="layer"), PruneSpec(sparsity=0.8, overrides={"b": 0.5})):
        assert not pruning.emptied_notes(compute_masks(small, fine), fine)
    assert not pruning.emptied_notes(compute_masks(weights, spec), spec)


def test_lamp_scores_each_weight_against_the_larger_ones_of_its_layer():
    scores = PRUNERS["lamp"](np.array([[2.0, -1.0, 3.0]]), np.random.default_rng(0))
    assert scores == pytest.approx(np.array([[4 / 13, 1 / 14, 1.0]]))     # w² / sum of w² of the weights >= it


def test_lamp_ranks_like_magnitude_inside_a_layer_and_ignores_each_layers_scale(weights):
    for name in weights:   # one layer alone: the same order as |w|, so the same mask
        one = {name: weights[name]}
        assert np.array_equal(compute_masks(one, PruneSpec(sparsity=0.6, method="lamp"))[name],
                              compute_masks(one, PruneSpec(sparsity=0.6))[name])
    scaled = {"a.weight": weights["a.weight"], "b.weight": weights["b.weight"] / 100}
    lamp, lamp_scaled = (compute_masks(w, PruneSpec(sparsity=0.9, method="lamp")) for w in (weights, scaled))
    assert all(np.array_equal(lamp[n], lamp_scaled[n]) for n in weights)      # rescaling a layer changes nothing
    assert sparsity_of(lamp) == pytest.approx(0.9, abs=1e-3)


def test_lamp_keeps_the_layer_global_magnitude_empties(weights):
    """A layer at 1/100 of the others' scale (BatchNorm folded into a conv, say): |w| takes all of it."""
    small = {"a.weight": weights["a.weight"], "b.weight": weights["b.weight"] / 100}
    spec = PruneSpec(sparsity=0.8, method="lamp")
    lamp, magnitude = compute_masks(small, spec), compute_masks(small, PruneSpec(sparsity=0.8))
    assert magnitude["b.weight"].mean() == 0 and lamp["b.weight"].mean() > 0.05
    assert not pruning.emptied_notes(lamp, spec)


# --- scope unit: every output unit keeps the same share -----------------------------------------

@pytest.mark.parametrize("method", PRUNE_METHODS)
def test_unit_scope_prunes_every_output_unit_to_the_sparsity(method):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 10),
                                torch.nn.Unflatten(1, (10, 1)), torch.nn.ConvTranspose1d(10, 5, 2))
    masks = prune_torch(model, PruneSpec(sparsity=0.75, scope="unit", method=method))
    assert (masks["0.weight"].reshape(6, -1).sum(1) == 27 // 4 + 1).all()        # round(0.75 * 27) = 20 pruned
    assert (masks["2.weight"].sum(1) == 24).all()                                 # 96 inputs: 72 pruned per row
    assert (masks["4.weight"].sum(axis=(0, 2)) == 5).all()                        # (in, out, k): units on axis 1


def test_unit_scope_keeps_each_units_largest_weights_and_honours_overrides_and_exclusions():
    weights = {"a.weight": np.array([[1.0, 9.0, 8.0, 2.0], [0.1, 0.2, 0.4, 0.3]]), "b.weight": np.ones((2, 4)),
               "c.weight": np.arange(8.0).reshape(2, 4)}
    spec = PruneSpec(sparsity=0.5, scope="unit", overrides={"b": 0.25}, exclude=("c",))
    masks = compute_masks(weights, spec)
    assert masks["a.weight"].astype(int).tolist() == [[0, 1, 1, 0], [0, 0, 1, 1]]   # the small row keeps its two
    assert (masks["b.weight"].sum(1) == 3).all() and masks["c.weight"].all()
    again = compute_masks(weights, spec, sparsity=0.75, keep=masks)                 # a later round: survivors only
    assert again["a.weight"].astype(int).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]


def test_unit_scope_never_empties_a_unit_below_full_sparsity():
    weights = {"conv.weight": np.random.default_rng(6).normal(size=(4, 1, 3, 3))}   # 9 weights per unit
    keep = compute_masks(weights, PruneSpec(sparsity=0.95, scope="unit"))["conv.weight"]
    assert (keep.reshape(4, -1).sum(1) == 1).all()             # round(0.95 * 9) = 9 would leave only the bias


def test_unit_scope_on_onnx_finds_each_ops_output_axis():
    rng = np.random.default_rng(5)
    weights = {"w1": rng.normal(size=(16, 8)), "w2": rng.normal(size=(12, 8)), "w3": rng.normal(size=(12, 4))}
    model = _matmul_onnx(weights)
    assert pruning.onnx_output_axes(model) == {"w1": 1, "w2": 0, "w3": 1}
    masks = prune_onnx(model, PruneSpec(sparsity=0.5, scope="unit"))
    assert (masks["w1"].sum(0) == 8).all()     # MatMul (in, out): each of 8 outputs keeps 8 of 16 inputs
    assert (masks["w2"].sum(1) == 4).all()     # Gemm transB (out, in)
    assert (masks["w3"].sum(0) == 6).all()     # Gemm (in, out)
    transposed = _matmul_onnx({"w1": rng.normal(size=(8, 16)), "w2": weights["w2"], "w3": weights["w3"]},
                              transpose=True)
    assert pruning.onnx_output_axes(transposed)["w1"] == 0     # stored (out, in) behind a Transpose
    assert (prune_onnx(transposed, PruneSpec(sparsity=0.5, scope="unit"))["w1"].sum(1) == 8).all()


def test_a_weight_whose_layout_a_reshape_hides_is_pruned_as_one_layer_and_named():
    weights = {"w": np.arange(12.0).reshape(3, 4)}
    spec = PruneSpec(sparsity=0.5, scope="unit")
    mask = compute_masks(weights, spec, out_axes={"w": None})["w"]
    assert mask.sum() == 6 and mask.ravel().tolist() == [False] * 6 + [True] * 6
    assert pruning.unit_notes(weights, spec, {"w": None}) == [
        "scope unit: w: output axis unknown (weight reshaped in the graph), pruned as one layer"]
    assert pruning.unit_notes(weights, PruneSpec(sparsity=0.5), {"w": None}) == []
