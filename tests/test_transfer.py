"""Transfer to a new task: a fresh head sized to the new classes, trained with the backbone frozen."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import FAST_MEASURE
from workbench.data import Splits, digits_splits
from workbench.errors import WorkbenchError
from workbench.pipeline import BASELINE_AFTER_TRANSFER, example_inputs, run_pipeline, select_classes
from workbench.specs import RunSpec, TransferSpec
from workbench.stages import Context, Variant
from workbench.transfer import find_head, run_transfer
from workbench.zoo import load_sample

NEW_TASK = (9, 8, 7, 6, 5)   # relabelled 0..4: the old head is wrong on every sample until re-trained


@pytest.fixture(scope="module")
def new_task():
    s = digits_splits()
    return Splits(*(select_classes(d, NEW_TASK) for d in (s.train, s.calib, s.test)))


def _ctx(splits) -> Context:
    return Context(RunSpec.from_dict({"model": "digits-cnn"}), splits, example_inputs(splits.test),
                   lambda f, msg: None, lambda: False)


def test_head_is_resized_backbone_frozen_and_the_new_task_learned(new_task):
    model = load_sample("digits-cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_transfer(Variant(module=model), TransferSpec(epochs=5), _ctx(new_task))
    head = out.module.head[1]
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (512, 5)
    after = out.module.state_dict()
    backbone = [k for k in before if not k.startswith("head.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BatchNorm stats
    assert all(p.requires_grad for p in out.module.parameters())  # later stages can train everything again
    assert out.history[-1]["epoch"] == 5 and out.history[-1]["accuracy"] >= 0.97
    assert "Linear(512->10) -> Linear(512->5)" in out.notes[0] and "frozen" in out.notes[0]
    assert "old head scores 0.0000" in out.notes[2]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input variant untouched


def test_train_backbone_updates_the_backbone_too(new_task):
    model = load_sample("digits-mlp")
    out = run_transfer(Variant(module=model), TransferSpec(epochs=2, train_backbone=True), _ctx(new_task))
    assert out.module.fc3.out_features == 5
    assert not torch.equal(out.module.fc1.weight, model.fc1.weight)
    assert "backbone trained too (lr 0.001" in out.notes[0]


def test_head_detection_needs_a_linear_producing_the_output():
    assert find_head(load_sample("digits-vit"), (torch.zeros(2, 1, 8, 8),)) == "head"

    class PooledAfterLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 4)

        def forward(self, x):
            return self.proj(x).mean(dim=1)

    with pytest.raises(WorkbenchError, match=r"transfer: the last Linear \(proj\) outputs \(2, 3, 4\)"):
        find_head(PooledAfterLinear(), (torch.zeros(2, 3, 8),))
    with pytest.raises(WorkbenchError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), (torch.zeros(2, 1, 8, 8),))


def test_onnx_variant_is_a_clear_error(tiny_onnx, new_task):
    import onnx

    with pytest.raises(WorkbenchError, match="transfer: needs a torch model"):
        run_transfer(Variant(onnx_model=onnx.load(str(tiny_onnx))), TransferSpec(), _ctx(new_task))


def _write(path, data, classes):
    keep = np.isin(data.labels, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    np.savez(path, x=data.inputs[0][keep].reshape(-1, 64), y=np.array([relabel[c] for c in data.labels[keep]]))
    return str(path)


def test_user_data_transfer_through_the_pipeline(tmp_path):
    s, classes = digits_splits(), (1, 3, 7)
    data = {"path": _write(tmp_path / "test.npz", s.test, classes),
            "train_path": _write(tmp_path / "train.npz", s.train, classes)}
    spec = RunSpec.from_dict({"model": "digits-mlp", "data": data, "measure": FAST_MEASURE,
                              "stages": [{"transfer": {"epochs": 8}}]})
    report = run_pipeline(spec, out_dir=tmp_path / "run")
    assert report.baseline.name == BASELINE_AFTER_TRANSFER and report.variants == ()
    assert report.baseline.measurement.metrics["accuracy"] >= 0.95
    assert report.baseline.measurement.eval_samples == np.isin(s.test.labels, classes).sum()
    missing = dataclasses.replace(spec, data=dataclasses.replace(spec.data, train_path=None))
    with pytest.raises(WorkbenchError, match="transfer: no training data.*data.train_path"):
        run_pipeline(missing)


def test_evaluation_class_the_training_labels_lack_is_a_clear_error(tmp_path):
    """A head sized to the training labels has no output for a class only the evaluation data has."""
    s = digits_splits()
    data = {"path": _write(tmp_path / "test.npz", s.test, (1, 3, 7)),
            "train_path": _write(tmp_path / "train.npz", s.train, (1, 3))}
    spec = RunSpec.from_dict({"model": "digits-mlp", "data": data, "measure": FAST_MEASURE,
                              "stages": [{"transfer": {"epochs": 1}}]})
    with pytest.raises(WorkbenchError, match=r"transfer: the evaluation data \(test.npz\) has class 2, but the "
                                             r"training labels \(train.npz\) stop at 1"):
        run_pipeline(spec, out_dir=tmp_path / "run")
