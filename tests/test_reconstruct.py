"""Post-training reconstruction of pruned layers (`prune.reconstruct`): the layer statistics are exact, the
solves are least squares / Optimal Brain Surgeon, masks and counts are kept, and on a sample it rescues
one-shot pruning without any training."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from workbench import reconstruct as rec
from workbench import zoo
from workbench.data import Splits, digits_splits
from workbench.errors import WorkbenchError
from workbench.evaluate import score, torch_predict
from workbench.pruning import compute_masks, onnx_weights, prune_torch, torch_weights
from workbench.specs import FinetuneSpec, ModelRef, PruneSpec, RunSpec, SpecError
from workbench.stages import STAGE_RUNNERS, Context, Variant


@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(6, 5), (7, 6)),
    (nn.Linear(6, 5, bias=False), (3, 4, 6)),                         # tokens: (batch, tokens, features)
    (nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    (nn.Conv2d(3, 4, (3, 2), stride=2, dilation=(1, 2), padding=(1, 0), bias=False), (2, 3, 9, 8)),
    (nn.Conv1d(3, 4, 3, stride=2, padding=2), (2, 3, 11)),
])
def test_input_rows_times_the_weight_rows_give_the_layer_output(layer, shape):
    x = torch.randn(shape)
    rows = rec._input_rows(layer, x)
    with torch.no_grad():
        expected = rec._output_rows(layer, layer(x))
    assert torch.allclose(rows @ rec._rows(layer).T, expected, atol=1e-5)


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module, dict, tuple[np.ndarray]]:
    torch.manual_seed(seed)
    reference = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    pruned = copy.deepcopy(reference)
    masks = prune_torch(pruned, PruneSpec(sparsity=0.7, scope="layer"))
    return pruned, reference, masks, (np.random.default_rng(seed).normal(size=(400, 12)).astype(np.float32),)


def test_refit_keeps_the_mask_and_solves_least_squares_on_it():
    pruned, reference, masks, x = _pair()
    out, fits, skipped = rec.reconstruct(pruned, reference, masks, x, "refit")
    assert skipped == [] and [f.name for f in fits] == ["0", "2"]
    assert all(np.array_equal(out[k], masks[k]) for k in masks)
    first = pruned[0].weight.detach().numpy()
    assert np.all(first[~masks["0.weight"]] == 0)
    # the first layer sees the same inputs in both models: its solve is the (lightly damped) least squares
    xa = np.hstack([x[0], np.ones((len(x[0]), 1), np.float32)]).astype(np.float64)
    y = reference[0](torch.from_numpy(x[0])).detach().numpy().astype(np.float64)
    keep = np.flatnonzero(np.append(masks["0.weight"][3], True))
    lstsq = np.linalg.lstsq(xa[:, keep], y[:, 3], rcond=None)[0]
    solved = np.append(first[3], pruned[0].bias.detach().numpy()[3])[keep]
    assert np.allclose(solved, lstsq, atol=0.02 * np.abs(lstsq).max())
    assert all(f.solved_error < f.masked_error for f in fits)


def test_obs_keeps_each_units_count_and_fits_better_than_refit_on_the_magnitude_mask():
    pruned, reference, masks, x = _pair()
    refit = copy.deepcopy(pruned)
    out, fits, _ = rec.reconstruct(pruned, reference, masks, x, "obs")
    _, refit_fits, _ = rec.reconstruct(refit, reference, masks, x, "refit")
    for key in masks:
        assert np.array_equal(out[key].sum(1), masks[key].sum(1))
        weight = dict(pruned.named_parameters())[key].detach().numpy()
        assert np.all(weight[~out[key]] == 0)
    assert not np.array_equal(out["0.weight"], masks["0.weight"])   # OBS chose other weights than magnitude
    assert fits[0].solved_error < refit_fits[0].solved_error


def test_obs_over_its_cost_limit_refits_the_magnitude_mask_and_the_run_says_so(monkeypatch):
    pruned, reference, masks, x = _pair()
    limit = rec.obs_cost(rec.with_bias(torch.from_numpy(masks["2.weight"]), True)) + 1   # layer 2 fits, 0 does not
    monkeypatch.setattr(rec, "OBS_MAX_COST", limit)
    out, fits, _ = rec.reconstruct(pruned, reference, masks, x, "obs")
    assert [f.method for f in fits] == ["refit", "obs"]
    assert np.array_equal(out["0.weight"], masks["0.weight"])
    from workbench.stages import _reconstruct_notes

    notes = _reconstruct_notes(PruneSpec(reconstruct="obs"), fits, [])
    assert notes[-1].startswith("reconstruct: OBS would take too long on 0 (")


def test_obs_removes_the_weights_pruned_in_earlier_rounds_first():
    pruned, reference, _, x = _pair(1)
    spec = PruneSpec(sparsity=0.8, scope="layer")
    earlier = compute_masks({k: v.detach().numpy() for k, v in torch_weights(pruned).items()}, spec, 0.4)
    masks = prune_torch(pruned, spec, 0.7, earlier)
    out, _, _ = rec.reconstruct(pruned, reference, masks, x, "obs", previous=earlier)
    for key in masks:
        assert not np.any(out[key] & ~earlier[key])            # nothing pruned before comes back
        assert 1 - out[key].mean() == pytest.approx(0.7, abs=0.02)


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.depthwise = nn.Conv1d(4, 4, 3, groups=4, padding=1)
        self.up = nn.ConvTranspose1d(4, 4, 2)
        self.unused = nn.Linear(4, 4)
        self.last = nn.Linear(4, 2)

    def forward(self, x):
        h = self.shared(self.shared(x))
        h = self.up(self.depthwise(h[:, :, None].expand(-1, -1, 5)))
        return self.last(h.mean(-1))


def test_layers_it_cannot_solve_keep_their_mask_and_are_named():
    torch.manual_seed(0)
    model = Odd()
    pruned = copy.deepcopy(model)
    masks = prune_torch(pruned, PruneSpec(sparsity=0.5))
    before = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    out, fits, skipped = rec.reconstruct(pruned, model, masks, (np.ones((8, 4), np.float32),), "refit")
    assert [f.name for f in fits] == ["last"]
    assert skipped == ["shared (called 2 times per forward)", "depthwise (grouped convolution)",
                       "up (ConvTranspose1d is not a Linear or Conv1d/Conv2d)", "unused (never called)"]
    assert torch.equal(pruned.shared.weight, before["shared.weight"])
    assert all(np.array_equal(out[k], masks[k]) for k in masks)


def _stage(prune: dict, model: str = "digits-mlp", data: int = 512, progress: list | None = None
           ) -> tuple[Variant, Variant]:
    spec = RunSpec.from_dict({"model": model, "stages": [{"prune": prune}]})
    full = digits_splits()
    report = (lambda f, message: progress.append((round(f, 3), message))) if progress is not None else lambda *_: None
    ctx = Context(spec, Splits(full.train.take(data), full.calib, full.test), (), report, lambda: False)
    source = Variant(module=zoo.load_sample(model))
    return source, STAGE_RUNNERS["prune"](source, spec.stages[0], ctx)


def _accuracy(variant: Variant) -> float:
    test = digits_splits().test
    return score(torch_predict(variant.module, test), test.labels)["accuracy"]


def test_reconstruction_rescues_one_shot_pruning_without_training():
    source, plain = _stage({"sparsity": 0.8})
    _, solved = _stage({"sparsity": 0.8, "reconstruct": "obs"})
    assert _accuracy(plain) < 0.7 < 0.95 < _accuracy(solved)
    assert solved.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert any(n.startswith("reconstruct (obs): each layer's output error") and "fc2" in n for n in solved.notes)
    assert torch.equal(source.module.fc1.weight, zoo.load_sample("digits-mlp").fc1.weight)   # input untouched


def test_reconstruction_runs_every_iterative_round_and_keeps_n_m_groups():
    progress: list = []
    _, iterative = _stage({"sparsity": 0.6, "schedule": "iterative", "per_round": 0.5, "reconstruct": "refit"},
                          data=256, progress=progress)
    assert [h["sparsity"] for h in iterative.history] == pytest.approx([0.5, 0.6], abs=1e-3)
    solving = [p for p in progress if "solving" in p[1]]
    assert solving[:3] == [(0.0, "round 1/2: solving fc1"), (0.167, "round 1/2: solving fc2"),
                           (0.333, "round 1/2: solving fc3")] and solving[-1] == (0.833, "round 2/2: solving fc3")
    assert _accuracy(iterative) > 0.95
    _, nm = _stage({"sparsity": 0.5, "nm": "2:4", "reconstruct": "refit"}, model="digits-cnn", data=128)
    weight = nm.module.features[1][0].weight.detach().numpy()
    groups = (weight != 0).reshape(weight.shape[0], -1, 4, *weight.shape[2:]).sum(2)
    assert groups.max() <= 2


@pytest.mark.parametrize("fields, message", [
    ({"reconstruct": "obs", "method": "random"}, "needs method magnitude"),
    ({"reconstruct": "obs", "nm": "2:4", "sparsity": 0.5}, "no nm"),
    ({"reconstruct": "refit", "schedule": "iterative", "rewind": "weight", "finetune": {"epochs": 1}},
     "weight rewinding resets"),
    ({"reconstruct": "exact"}, "unknown 'exact'"),
])
def test_combinations_that_cannot_work_are_refused_naming_the_field(fields, message):
    with pytest.raises(SpecError, match=f"reconstruct: .*{message}"):
        RunSpec.from_dict({"model": "digits-mlp", "stages": [{"prune": fields}]})


@pytest.mark.parametrize("count", [0, -5])
def test_calib_samples_must_be_a_positive_integer(count):
    with pytest.raises(SpecError, match="calib_samples: must be a positive integer"):
        RunSpec.from_dict({"model": "digits-mlp",
                           "stages": [{"prune": {"reconstruct": "refit", "calib_samples": count}}]})


def test_obs_solves_a_lamp_mask_keeping_each_units_count():
    source, pruned = _stage({"sparsity": 0.9, "method": "lamp", "reconstruct": "obs"})
    solved = dict(pruned.module.named_parameters())
    original = {n: p.detach().numpy() for n, p in torch_weights(source.module).items()}
    for name, keep in compute_masks(original, PruneSpec(sparsity=0.9, method="lamp")).items():
        # LAMP decides how many weights each unit loses, OBS which ones
        assert np.array_equal((solved[name].detach().numpy() != 0).sum(1), keep.sum(1))
    assert _accuracy(pruned) > 0.9


def _onnx_stage(model, prune: dict, data: int = 256) -> Variant:
    spec = RunSpec.from_dict({"model": "digits-mlp", "stages": [{"prune": prune}]})
    full = digits_splits()
    ctx = Context(spec, Splits(full.train.take(data), full.calib, full.test), (), lambda *_: None, lambda: False)
    return STAGE_RUNNERS["prune"](Variant(onnx_model=model), spec.stages[0], ctx)


def _onnx_accuracy(model) -> float:
    from workbench.evaluate import make_session, predict

    test = digits_splits().test
    return score(predict(make_session(model), test), test.labels)["accuracy"]


def test_onnx_graphs_are_solved_like_torch_models():
    from workbench.export import export_onnx

    test = digits_splits().test
    exported = export_onnx(zoo.load_sample("digits-mlp"), (torch.from_numpy(test.inputs[0][:2]),))
    plain = _onnx_stage(exported, {"sparsity": 0.8})
    solved = _onnx_stage(exported, {"sparsity": 0.8, "reconstruct": "obs"})
    assert _onnx_accuracy(plain.onnx_model) < 0.7 < 0.95 < _onnx_accuracy(solved.onnx_model)
    assert any(n.startswith("reconstruct (obs)") and "fc2.weight" in n for n in solved.notes)
    assert solved.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    weights = onnx_weights(solved.onnx_model)
    assert set(weights) == set(onnx_weights(exported)) and all(w.dtype == np.float32 for w in weights.values())


def test_onnx_conv_and_gemm_layouts_and_what_is_left_as_masked(tiny_onnx):
    import onnx
    from onnx import helper, numpy_helper

    from workbench.data import Dataset
    from workbench.pruning import prune_onnx
    from workbench.reconstruct_onnx import reconstruct_onnx

    model = onnx.load(tiny_onnx)
    graph = model.graph               # a second head: a MatMul fed through a Transpose is left as masked
    graph.initializer.append(numpy_helper.from_array(np.ones((10, 10), np.float32), "extra.weight"))
    graph.node.extend([helper.make_node("Transpose", ["extra.weight"], ["extra.t"]),
                       helper.make_node("MatMul", ["logits", "extra.t"], ["out2"])])
    graph.output.append(helper.make_tensor_value_info("out2", onnx.TensorProto.FLOAT, ["batch", 10]))
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    masks = prune_onnx(model, PruneSpec(sparsity=0.5, scope="layer"))
    calibration = Dataset("random", (np.random.default_rng(0).random((300, 1, 8, 8)).astype(np.float32),), None)
    out, fits, skipped = reconstruct_onnx(model, reference, masks, calibration, "refit")
    assert [f.name for f in fits] == ["conv.weight", "fc.weight"] and all(f.solved_error < f.masked_error for f in fits)
    assert skipped == ["extra.weight (not the direct weight of a MatMul/Gemm/Conv)"]
    assert all(np.array_equal(out[k], masks[k]) for k in masks)          # refit keeps the masks
    conv = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv.weight"))
    assert conv.shape == (8, 1, 3, 3) and np.all(conv[~masks["conv.weight"]] == 0)



class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return self.fc(self.fc(x.flatten(1)))[:, :10]


def test_a_model_with_no_layer_it_can_solve_fails_the_stage_naming_why():
    spec = RunSpec.from_dict({"model": "digits-mlp", "stages": [{"prune": {"sparsity": 0.5, "reconstruct": "refit"}}]})
    full = digits_splits()
    ctx = Context(spec, Splits(full.train.take(64), full.calib, full.test.take(32)), (), lambda *_: None,
                  lambda: False)
    with pytest.raises(WorkbenchError, match=r"no layer could be solved \(fc \(called 2 times per forward\)\)"):
        STAGE_RUNNERS["prune"](Variant(module=Twice()), spec.stages[0], ctx)


def test_the_repair_preview_runs_the_prune_stage_once_on_a_copy():
    from workbench.models import load_model
    from workbench.repair_preview import preview_repair

    ref = ModelRef(sample="digits-mlp")
    loaded = load_model(ref)
    before = loaded.module.fc2.weight.detach().clone()
    iterative = PruneSpec(sparsity=0.8, schedule="iterative", reconstruct="refit", finetune=FinetuneSpec(epochs=1))
    solved = preview_repair(loaded, ref, iterative, digits_splits())
    assert solved.accuracy > 0.95 and solved.seconds > 0
    assert any(n.startswith("reconstruct (refit)") for n in solved.notes)
    assert torch.equal(loaded.module.fc2.weight, before)              # the shared model is untouched
    with pytest.raises(WorkbenchError, match="does not reconstruct"):
        preview_repair(loaded, ref, PruneSpec(sparsity=0.8), digits_splits())
