"""Pruning schedules through the real `prune` stage: gradual cubic targets, LR rewinding vs fine-tuning,
lottery-ticket weight rewinding to an early checkpoint, N:M notes, and the shipped recipes."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from workbench import zoo
from workbench.data import Splits, digits_splits
from workbench.errors import WorkbenchError
from workbench.pruning import round_targets, torch_weights
from workbench.specs import PruneSpec, RunSpec, load_recipe
from workbench.stages import STAGE_RUNNERS, Context, Variant

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ADAM_STEP = torch.optim.Adam.step


def _run(prune: dict, model: str = "digits-mlp", module: torch.nn.Module | None = None,
         splits: Splits | None = None) -> Variant:
    spec = RunSpec.from_dict({"model": model, "stages": [{"prune": prune}]})
    full = digits_splits()
    splits = splits or Splits(full.train.take(128), full.calib, full.test.take(90))
    ctx = Context(spec, splits, (), lambda *_: None, lambda: False)
    return STAGE_RUNNERS["prune"](Variant(module=module or zoo.load_sample(model)), spec.stages[0], ctx)


def test_gradual_targets_follow_the_cubic_schedule():
    spec = PruneSpec(sparsity=0.8, schedule="gradual", steps=5)
    expected = [0.8 * (1 - (1 - r / 5) ** 3) for r in range(1, 6)]
    assert round_targets(spec) == pytest.approx(expected)
    assert expected[-1] == pytest.approx(0.8) and expected[0] > 0.8 / 5   # front-loaded: prunes fast early
    history = _run({"sparsity": 0.8, "schedule": "gradual", "steps": 5}).history
    assert [h["target"] for h in history] == pytest.approx(expected, abs=1e-4)
    assert [h["sparsity"] for h in history] == pytest.approx(expected, abs=1e-3)
    assert all(h["rewind"] == "lr" and "accuracy" in h for h in history)


def test_iterative_targets_remove_a_fifth_of_the_survivors_per_round():
    targets = round_targets(PruneSpec(sparsity=0.9, schedule="iterative", per_round=0.2))
    assert len(targets) == 11 and targets[-1] == 0.9
    assert targets[:3] == pytest.approx([0.2, 0.36, 0.488])
    assert round_targets(PruneSpec(sparsity=0.7)) == [0.7]


def _lr_per_round(monkeypatch, rewind: str) -> list[list[float]]:
    """The learning rate of each optimizer step, per pruning round (3 rounds, 2 steps each)."""
    rounds: list[list[float]] = []

    def recording(self, *args, **kwargs):
        if self.state == {}:   # a fresh optimizer: finetune was called for the next round
            rounds.append([])
        rounds[-1].append(self.param_groups[0]["lr"])
        return ADAM_STEP(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    _run({"sparsity": 0.488, "schedule": "iterative", "rewind": rewind, "finetune": {"epochs": 1, "lr": 0.01}})
    return rounds


def test_lr_rewinding_restarts_the_schedule_and_fine_tuning_continues_it(monkeypatch):
    rewound = _lr_per_round(monkeypatch, "lr")
    continued = _lr_per_round(monkeypatch, "none")
    assert len(rewound) == len(continued) == 3
    assert all(r == pytest.approx([0.01, 0.005]) for r in rewound)         # peak, then half-way down, each round
    flat = [lr for r in continued for lr in r]
    assert flat[0] == 0.01 and all(a > b for a, b in zip(flat, flat[1:], strict=False))   # one decay over 6 steps
    assert continued[1][0] < 0.01


def test_weight_rewinding_resets_survivors_to_the_checkpoint(tmp_path):
    trained = zoo.load_sample("digits-cnn")
    early = zoo.build("digits-cnn")            # a different, known state: a fresh initialisation
    save_file({k: v.contiguous() for k, v in early.state_dict().items()}, str(tmp_path / "early.safetensors"))
    out = _run({"sparsity": 0.5, "rewind": "weight", "rewind_weights": str(tmp_path / "early.safetensors")},
               "digits-cnn", trained)
    expected = {n: p.detach().numpy() for n, p in early.state_dict().items()}
    for name, value in out.module.state_dict().items():
        mask = out.masks.get(name)
        got = value.detach().numpy()
        if mask is None:
            np.testing.assert_array_equal(got, expected[name], err_msg=name)      # biases, BatchNorm, buffers
        else:
            np.testing.assert_array_equal(got[mask], expected[name][mask], err_msg=name)
            assert (got[~mask] == 0).all()
    # the mask ranks the trained weights, not the checkpoint's
    w = np.abs(torch_weights(trained)["features.1.0.weight"].detach().numpy())
    kept = out.masks["features.1.0.weight"]
    assert w[kept].mean() > 2 * w[~kept].mean()


def test_samples_ship_a_rewind_checkpoint_that_is_used_by_default():
    path = zoo.rewind_checkpoint("digits-mlp")
    assert path is not None and path.name == "digits-mlp.rewind.safetensors"
    assert zoo.sample_card("digits-mlp")["training"]["rewind_epoch"] > 0
    out = _run({"sparsity": 0.3, "rewind": "weight"})
    early = zoo.load_weights(zoo.build("digits-mlp"), path, "rewind").state_dict()
    kept = out.masks["fc2.weight"]
    np.testing.assert_array_equal(out.module.fc2.weight.detach().numpy()[kept], early["fc2.weight"].numpy()[kept])


def test_missing_rewind_checkpoint_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(WorkbenchError, match=r"prune.rewind_weights: .*missing.safetensors not found"):
        _run({"sparsity": 0.5, "rewind": "weight", "rewind_weights": str(tmp_path / "missing.safetensors")})
    monkeypatch.setattr(zoo, "rewind_checkpoint", lambda name: None)
    with pytest.raises(WorkbenchError, match="sample 'digits-mlp' has no rewind checkpoint") as err:
        _run({"sparsity": 0.5, "rewind": "weight"})
    assert "\n" not in str(err.value) and "train.py --only digits-mlp" in str(err.value)
    wrong = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in zoo.build("digits-cnn").state_dict().items()}, str(wrong))
    with pytest.raises(WorkbenchError, match="do not fit the architecture"):
        _run({"sparsity": 0.5, "rewind": "weight", "rewind_weights": str(wrong)})


def test_weight_rewinding_needs_a_torch_model(tiny_onnx):
    spec = RunSpec.from_dict({"model": str(tiny_onnx), "stages": [{"prune": {"sparsity": 0.5, "rewind": "weight"}}]})
    ctx = Context(spec, digits_splits(), (), lambda *_: None, lambda: False)
    with pytest.raises(WorkbenchError, match="prune.rewind: weight rewinding needs a torch model"):
        STAGE_RUNNERS["prune"](Variant(onnx_model=onnx.load(str(tiny_onnx))), spec.stages[0], ctx)
    gradual = RunSpec.from_dict({"model": str(tiny_onnx), "stages": [{"prune": {"sparsity": 0.5,
                                                                                   "schedule": "gradual"}}]})
    out = STAGE_RUNNERS["prune"](Variant(onnx_model=onnx.load(str(tiny_onnx))), gradual.stages[0], ctx)
    assert out.history[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert any("gradual schedule without fine-tuning" in n for n in out.notes)


def test_nm_stage_notes_say_no_speedup_and_name_dense_layers():
    out = _run({"nm": "2:4", "sparsity": 0.5}, "digits-cnn")
    assert "no CPU kernel in ONNX Runtime" in out.notes[0]
    assert any("features.0.0.weight" in n and "left dense" in n for n in out.notes[1:])
    assert (out.masks["features.1.0.weight"].sum(axis=1) == 16).all()   # 2 of 4 of the 32 input channels


def test_recipes_load():
    paths = sorted(RECIPES.glob("*.yaml"))
    specs = {p.stem: load_recipe(p) for p in paths}
    prune = {name: s.stages[0] for name, s in specs.items() if s.stages and s.stages[0].kind == "prune"}
    assert prune["seed-iterative"].rewind == "lr" and prune["seed-iterative"].schedule == "iterative"
    assert prune["cnn-lottery-ticket"].rewind == "weight" and specs["cnn-lottery-ticket"].model.sample == "digits-cnn"
    assert prune["cnn-gradual"].schedule == "gradual"
    assert prune["mlp-2-4"].nm == "2:4" and specs["mlp-2-4"].model.sample == "digits-mlp"
    assert prune["mlp-obs-no-training"].reconstruct == "obs" and prune["mlp-obs-no-training"].finetune is None
    packed = specs["mlp-40x-packed"].stages     # the clustering benchmark's best full-width recipe
    assert (packed[0].schedule, packed[0].reconstruct, packed[0].rounds) == ("iterative", "obs", 11)
    assert (packed[1].clusters, packed[1].bias_clusters, packed[1].finetune.epochs) == (8, 32, 30)
    thin = specs["mlp-thin-sparse-packed"].stages    # ... and the one it chose by cross-validation
    assert [s.kind for s in thin] == ["structured", "finetune", "prune", "cluster"]
    assert (thin[0].ratio, thin[2].sparsity, thin[2].rounds, thin[2].reconstruct) == (0.5, 0.65, 5, "obs")


def test_weight_rewinding_after_a_transfer_keeps_the_new_head(tmp_path):
    from tests.conftest import FAST_MEASURE
    from workbench.pipeline import run_pipeline

    spec = RunSpec.from_dict({"model": "digits-mlp", "data": {"classes": [3, 5, 7]}, "measure": FAST_MEASURE,
                              "stages": [{"transfer": {"epochs": 3}},
                                         {"prune": {"sparsity": 0.3, "rewind": "weight"}}]})
    report = run_pipeline(spec, out_dir=tmp_path)
    pruned = report.variants[-1]
    assert any(n.startswith("weight rewinding: fc3.weight, fc3.bias (re-trained by the transfer)")
               for n in pruned.notes)
    # the backbone is the early checkpoint's (far from trained), the head the transferred one: still far above
    # chance (1/3) on the three classes
    assert pruned.measurement.metrics["accuracy"] > 0.5
