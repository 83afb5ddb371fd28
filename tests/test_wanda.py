"""`prune.method: wanda`: |w| times the RMS of its input on the solving data, on torch modules and ONNX graphs."""

import numpy as np
import pytest
import torch
from torch import nn

from workbench import activations, zoo
from workbench.data import Dataset, Splits, digits_splits
from workbench.evaluate import score, torch_predict
from workbench.export import export_onnx
from workbench.pruning import compute_masks, onnx_weights
from workbench.specs import PruneSpec, RunSpec
from workbench.stages import STAGE_RUNNERS, Context, Variant

BLANK = [0, 32, 39]      # pixels that are zero in every digits image


def _run(prune: dict, source: Variant, data: int = 512) -> Variant:
    spec = RunSpec.from_dict({"model": "digits-mlp", "stages": [{"prune": prune}]})
    full = digits_splits()
    ctx = Context(spec, Splits(full.train.take(data), full.calib, full.test), (), lambda *_: None, lambda: False)
    return STAGE_RUNNERS["prune"](source, spec.stages[0], ctx)


def _accuracy(module) -> float:
    test = digits_splits().test
    return score(torch_predict(module, test), test.labels)["accuracy"]


def test_a_large_weight_on_an_input_that_is_always_zero_goes_first():
    weights = {"w": np.array([[5.0, 1.0, 0.5]])}
    rms = {"w": np.array([[0.0, 1.0, 1.0]])}
    spec = dict(sparsity=1 / 3, method="wanda")
    assert compute_masks(weights, PruneSpec(**spec), rms=rms)["w"].tolist() == [[False, True, True]]
    # without input statistics a layer is ranked by |w| alone, as magnitude ranks it
    assert compute_masks(weights, PruneSpec(**spec))["w"].tolist() == [[True, True, False]]


def test_a_2_4_mask_keeps_the_two_largest_contributions_of_each_group():
    weights = {"w": np.array([[5.0, 1.0, 0.5, 0.4, 3.0, 2.0, 1.0, 0.1]])}
    rms = {"w": np.array([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])}
    keep = compute_masks(weights, PruneSpec(sparsity=0.5, nm="2:4", method="wanda"), rms=rms)["w"]
    assert keep.astype(int).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]


def test_wanda_prunes_the_blank_pixels_weights_and_beats_magnitude_one_shot():
    assert np.all(digits_splits().train.inputs[0].reshape(-1, 64)[:, BLANK] == 0)
    wanda = _run({"sparsity": 0.8, "method": "wanda"}, Variant(module=zoo.load_sample("digits-mlp")))
    magnitude = _run({"sparsity": 0.8}, Variant(module=zoo.load_sample("digits-mlp")))
    assert wanda.masks["fc1.weight"][:, BLANK].sum() == 0 < magnitude.masks["fc1.weight"][:, BLANK].sum()
    assert wanda.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert _accuracy(wanda.module) > _accuracy(magnitude.module) + 0.1     # 0.74 vs 0.46 on the 360 test images
    assert not any(n.startswith("wanda") for n in wanda.notes)


def test_an_onnx_graph_gets_the_mask_its_torch_model_gets():
    module = zoo.load_sample("digits-mlp")
    graph = export_onnx(module, (torch.zeros(2, 1, 8, 8),))
    from_onnx = _run({"sparsity": 0.8, "method": "wanda"}, Variant(onnx_model=graph))
    from_torch = _run({"sparsity": 0.8, "method": "wanda"}, Variant(module=module))
    pruned = onnx_weights(from_onnx.onnx_model)
    assert set(pruned) == set(from_torch.masks)       # the export keeps the layer names (Gemm, (out, in) weights)
    for name, keep in from_torch.masks.items():
        assert np.array_equal(pruned[name] != 0, keep), name


def test_every_round_reads_the_inputs_of_the_model_as_it_is_then(monkeypatch):
    calls = []
    real = activations.torch_input_rms
    monkeypatch.setattr(activations, "torch_input_rms", lambda *a: calls.append(1) or real(*a))
    out = _run({"sparsity": 0.5, "method": "wanda", "schedule": "iterative", "per_round": 0.3},
               Variant(module=zoo.load_sample("digits-mlp")), data=128)
    assert len(out.history) == len(calls) == 2


def test_weights_it_has_no_input_statistics_for_are_ranked_by_magnitude_and_named():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(10, 16))

        def forward(self, x):
            return x @ self.weight.T

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), Head())
    out = _run({"sparsity": 0.5, "method": "wanda"}, Variant(module=model), data=64)
    assert out.notes == ["wanda: no input statistics for 3.weight (Head is not a Linear or Conv1d/Conv2d): "
                         "ranked by |w| alone"]
    assert set(out.masks) == {"1.weight", "3.weight"}


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_wanda_and_reconstruction_read_calib_samples_of_every_class_from_a_sorted_training_file(monkeypatch, kind):
    from workbench import reconstruct, reconstruct_onnx

    full = digits_splits()
    order = np.argsort(full.train.labels, kind="stable")
    by_class = Splits(Dataset("sorted", (full.train.inputs[0][order],), full.train.labels[order]),
                      full.calib, full.test)
    label_of = {row.tobytes(): label for row, label in zip(by_class.train.inputs[0], by_class.train.labels,
                                                           strict=True)}
    seen: dict[str, tuple[int, set]] = {}     # inputs read, and the classes they came from

    def spy(name, module, real, data_at):
        def call(*args, **kwargs):
            inputs = data_at(args)
            seen[name] = len(inputs), {label_of[row.tobytes()] for row in inputs}
            return real(*args, **kwargs)
        monkeypatch.setattr(module, real.__name__, call)

    spy("wanda", activations, activations.input_rms, lambda a: a[1].inputs[0])
    if kind == "torch":
        spy("solve", reconstruct, reconstruct.reconstruct, lambda a: a[3][0])
        source = Variant(module=zoo.load_sample("digits-mlp"))
    else:
        spy("solve", reconstruct_onnx, reconstruct_onnx.reconstruct_onnx, lambda a: a[3].inputs[0])
        source = Variant(onnx_model=export_onnx(zoo.load_sample("digits-mlp"), (torch.zeros(2, 1, 8, 8),)))
    spec = RunSpec.from_dict({"model": "digits-mlp", "stages": [
        {"prune": {"sparsity": 0.8, "method": "wanda", "reconstruct": "refit", "calib_samples": 100}}]})
    STAGE_RUNNERS["prune"](source, spec.stages[0], Context(spec, by_class, (), lambda *_: None, lambda: False))
    for name in ("wanda", "solve"):      # 100 inputs of every class (the file's first 100 are all zeros)
        assert seen[name] == (100, set(range(10))), name
