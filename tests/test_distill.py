"""Knowledge distillation: a narrower student of the teacher's architecture, trained with the Hinton loss."""

import pytest
import torch
from torch import nn

from tests.conftest import FAST_MEASURE
from workbench.data import digits_splits
from workbench.distill import make_student, run_distill
from workbench.errors import WorkbenchError
from workbench.finetune import hinton_loss
from workbench.pipeline import example_inputs, run_pipeline
from workbench.specs import DistillSpec, RunSpec
from workbench.stages import Cancelled, Context, Variant
from workbench.zoo import load_sample


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


def _ctx(splits, cancelled=lambda: False) -> Context:
    return Context(RunSpec.from_dict({"model": "digits-mlp"}), splits, example_inputs(splits.test),
                   lambda f, msg: None, cancelled)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_hinton_loss_is_cross_entropy_at_alpha_0_and_its_soft_part_vanishes_on_equal_logits():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    labels = torch.randint(0, 10, (16,), generator=gen)
    ce = nn.functional.cross_entropy(student, labels)
    assert torch.allclose(hinton_loss(student, teacher, labels, 4.0, 0.0), ce)
    assert hinton_loss(student, student.clone(), labels, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    soft = hinton_loss(student, teacher, labels, 4.0, 1.0)
    assert soft.item() > 0
    # alpha mixes linearly: alpha * soft + (1 - alpha) * CE
    assert torch.allclose(hinton_loss(student, teacher, labels, 4.0, 0.25), 0.25 * soft + 0.75 * ce)


def test_student_is_narrower_and_learns_digits_quickly(splits):
    teacher = load_sample("digits-mlp")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = run_distill(Variant(module=teacher), DistillSpec(width=0.5, epochs=6), _ctx(splits))
    student = out.module
    assert (student.fc1.out_features, student.fc2.out_features, student.fc3.out_features) == (150, 50, 10)
    assert _params(student) < 0.4 * _params(teacher)
    assert out.structured and out.masks == {}
    assert out.history[-1]["epoch"] == 6 and out.history[-1]["accuracy"] >= 0.95
    assert out.history[-1]["loss"] < out.history[0]["loss"]
    assert "17,810 params vs the teacher's 50,610" in out.notes[0]
    assert "teacher test accuracy" in out.notes[1]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched


def test_random_init_differs_from_the_teacher_init_and_is_reproducible(splits):
    teacher, example = load_sample("digits-mlp"), example_inputs(splits.test)
    kept, _ = make_student(teacher, example, DistillSpec(width=0.5, init="teacher"))
    fresh, report = make_student(teacher, example, DistillSpec(width=0.5, init="random", seed=3))
    again, _ = make_student(teacher, example, DistillSpec(width=0.5, init="random", seed=3))
    assert report["reinit_extra"] == []
    for (name, a), b, c in zip(kept.named_parameters(), fresh.parameters(), again.parameters(), strict=True):
        assert a.shape == b.shape and not torch.equal(a, b), name
        assert torch.equal(b, c), name
    # the teacher-initialised student keeps the teacher's weights of the kept neurons
    rows = [i for i in range(300) if any(torch.equal(teacher.fc1.weight[i], r) for r in kept.fc1.weight)]
    assert len(rows) == 150


def test_parameters_no_module_resets_are_redrawn_and_named():
    class WithEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.ones(1, 16))
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x + self.pos)))

    student, report = make_student(WithEmbedding(), (torch.randn(2, 16),), DistillSpec(width=0.5, init="random"))
    assert report["reinit_extra"] == ["pos"] and not torch.equal(student.pos, torch.ones(1, 16))
    assert student.fc1.out_features == 16


def test_width_one_distills_into_a_same_size_copy(splits):
    teacher = load_sample("digits-mlp")
    student, report = make_student(teacher, example_inputs(splits.test), DistillSpec(width=1.0))
    assert report["params_after"] == report["params_before"] == _params(teacher)
    assert student is not teacher and torch.equal(student.fc1.weight, teacher.fc1.weight)


def test_onnx_variant_and_missing_training_data_are_clear_errors(tiny_onnx, splits):
    import onnx

    with pytest.raises(WorkbenchError, match="distill: needs a torch teacher"):
        run_distill(Variant(onnx_model=onnx.load(str(tiny_onnx))), DistillSpec(), _ctx(splits))
    no_train = Context(RunSpec.from_dict({"model": "digits-mlp"}), splits.__class__(None, splits.calib, splits.test),
                       example_inputs(splits.test), lambda f, msg: None, lambda: False)
    with pytest.raises(WorkbenchError, match="data.train_path"):
        run_distill(Variant(module=load_sample("digits-mlp")), DistillSpec(), no_train)


def test_cancel_stops_between_epochs(splits):
    with pytest.raises(Cancelled):
        run_distill(Variant(module=load_sample("digits-mlp")), DistillSpec(epochs=50), _ctx(splits, lambda: True))


def test_pipeline_student_is_really_smaller_and_exports(tmp_path):
    spec = RunSpec.from_dict({"model": "digits-cnn", "measure": FAST_MEASURE,
                              "stages": [{"distill": {"width": 0.25, "epochs": 2}}]})
    report = run_pipeline(spec, out_dir=tmp_path)
    student = report.final
    assert student.facts.structured
    file_size = next(c for c in student.claims if c.aspect == "file size")
    assert file_size.kind == "real" and file_size.ratio > 5
    assert student.history and "accuracy" in student.history[-1]
