import numpy as np
import pytest
import torch

from workbench.data import digits_splits
from workbench.errors import WorkbenchError
from workbench.evaluate import score, torch_predict
from workbench.finetune import finetune, finetune_steps, schedule_window
from workbench.pruning import prune_torch, torch_weights
from workbench.specs import FinetuneSpec, PruneSpec
from workbench.training import lr_schedule
from workbench.zoo import load_sample


def test_recovery_keeps_the_mask_and_recovers_accuracy():
    splits = digits_splits()
    model = load_sample("digits-mlp")
    masks = prune_torch(model, PruneSpec(sparsity=0.9))
    before = score(torch_predict(model, splits.test), splits.test.labels)["accuracy"]
    finetune(model, FinetuneSpec(epochs=5, lr=0.01), splits.train, masks)
    after = score(torch_predict(model, splits.test), splits.test.labels)["accuracy"]
    assert after > before + 0.3
    for name, param in torch_weights(model).items():
        assert (param.detach().numpy()[~masks[name]] == 0).all(), name
    assert not model.training


def test_without_masks_pruned_weights_would_grow_back():
    """The control for the test above: Adam revives zeros unless the mask is re-applied."""
    splits = digits_splits()
    model = load_sample("digits-mlp")
    masks = prune_torch(model, PruneSpec(sparsity=0.9))
    finetune(model, FinetuneSpec(epochs=1, lr=0.01), splits.train, masks=None)
    revived = sum(int((p.detach().numpy()[~masks[n]] != 0).sum()) for n, p in torch_weights(model).items())
    assert revived > 0


def test_cosine_schedule_decays_to_zero():
    f = lr_schedule("cosine", 100)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert lr_schedule("constant", 100)(99) == 1.0


def test_unlabelled_data_is_an_error():
    splits = digits_splits()
    unlabelled = type(splits.train)("x", splits.train.inputs, None)
    with pytest.raises(WorkbenchError, match="no labels"):
        finetune(torch.nn.Linear(64, 10), FinetuneSpec(epochs=1), unlabelled)


def test_cancel_stops_training():
    splits = digits_splits()
    model = load_sample("digits-mlp")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    finetune(model, FinetuneSpec(epochs=50, lr=0.01), splits.train, cancelled=lambda: True)
    moved = sum(float((p.detach() - start[n]).abs().sum()) for n, p in model.named_parameters())
    assert moved > 0  # one step ran
    assert np.isfinite(moved)


def _lr_trace(monkeypatch) -> list[float]:
    """The learning rate of every optimizer step that finetune takes from now on."""
    trace, step = [], torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        trace.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return trace


def test_a_window_trains_that_slice_of_a_longer_schedule(monkeypatch):
    train = digits_splits().train.take(128)           # 2 steps per epoch at batch 64
    spec = FinetuneSpec(epochs=2, lr=0.01)
    assert finetune_steps(spec, len(train)) == 4
    trace = _lr_trace(monkeypatch)
    finetune(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), spec, train, offset=4, total=12)
    assert trace == pytest.approx([0.01 * lr_schedule("cosine", 12)(s) for s in range(4, 8)])
    with pytest.raises(WorkbenchError, match="outside the schedule"):
        finetune(torch.nn.Linear(64, 10), spec, train, offset=10, total=12)


def test_schedule_windows_restart_or_continue():
    assert [schedule_window("lr", r, 3, 10) for r in range(3)] == [(0, 10)] * 3
    assert [schedule_window("weight", r, 3, 10) for r in range(3)] == [(0, 10)] * 3
    assert [schedule_window("none", r, 3, 10) for r in range(3)] == [(0, 30), (10, 30), (20, 30)]


def test_distillation_from_the_dense_model_pulls_the_pruned_one_towards_its_outputs():
    import copy

    splits = digits_splits()
    teacher = load_sample("digits-mlp")
    start = copy.deepcopy(teacher)
    masks = prune_torch(start, PruneSpec(sparsity=0.9))
    x = torch.from_numpy(splits.test.inputs[0])

    def gap(model) -> float:     # KL(teacher || model) on the test split
        with torch.no_grad():
            return torch.nn.functional.kl_div(model(x).log_softmax(-1), teacher(x).log_softmax(-1),
                                              log_target=True, reduction="batchmean").item()

    runs = {}
    for distill in (0.0, 1.0):
        model = copy.deepcopy(start)
        finetune(model, FinetuneSpec(epochs=3, lr=0.01, distill=distill, temperature=2.0), splits.train, masks,
                 teacher=teacher)
        runs[distill] = gap(model)
        for name, param in torch_weights(model).items():
            assert (param.detach().numpy()[~masks[name]] == 0).all(), name
    assert runs[1.0] < runs[0.0]          # trained on the teacher's outputs, it ends closer to them
    assert not teacher.training
    with pytest.raises(WorkbenchError, match="finetune.distill: needs the run's original torch model"):
        finetune(copy.deepcopy(start), FinetuneSpec(epochs=1, distill=0.5), splits.train, masks)
