"""Recovery fine-tuning of a torch model that keeps pruning masks (pruned weights stay exactly zero).

Cross-entropy training (optional label smoothing), optionally mixed with knowledge distillation from a
teacher (`FinetuneSpec.distill`: Hinton's soft-target loss against the uncompressed model's logits,
computed once), with Adam and a cosine or constant learning rate on the training split; masks are
re-applied after every optimizer step, so Adam's momentum cannot revive a pruned weight. A call can
train one window of a longer schedule (`offset`, `total` in optimizer steps): that is how pruning
rounds share one learning-rate decay instead of restarting it (see `schedule_window`).
Knows nothing about ONNX or measurement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from workbench.data import Dataset
from workbench.errors import WorkbenchError
from workbench.pruning import torch_weights
from workbench.specs import FinetuneSpec
from workbench.training import lr_schedule, train_epochs

log = logging.getLogger(__name__)


def finetune(module: nn.Module, spec: FinetuneSpec, train: Dataset, masks: dict[str, np.ndarray] | None = None,
             progress: Callable[[float], None] | None = None, cancelled: Callable[[], bool] | None = None,
             offset: int = 0, total: int | None = None, teacher: nn.Module | None = None) -> float:
    """Train `module` in place for `spec.epochs`; returns the last epoch's mean loss. The learning rate
    follows steps offset.. of a `spec.schedule` spanning `total` steps (default: just this call's steps)."""
    if train.labels is None:
        raise WorkbenchError("finetune: the training data has no labels")
    if spec.epochs == 0:
        return float("nan")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise WorkbenchError("finetune: the model has no trainable parameters")
    weights = torch_weights(module)
    mask_tensors = {n: torch.from_numpy(m).to(weights[n].dtype) for n, m in (masks or {}).items() if n in weights}
    x = tuple(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in train.inputs)
    y = torch.from_numpy(train.labels)
    optimizer = torch.optim.Adam(params, lr=spec.lr)
    steps = finetune_steps(spec, len(y))
    total = steps if total is None else total
    if offset < 0 or offset + steps > total:
        raise WorkbenchError(f"finetune: steps {offset}..{offset + steps} lie outside the schedule of {total} steps")
    factor = lr_schedule(spec.schedule, total)
    last = float("nan")
    for epoch, last in train_epochs(module, x, y, _loss(spec, teacher, x), optimizer, spec.epochs, spec.batch_size,
                                    spec.seed, lambda step: factor(offset + step),
                                    after_step=lambda: _reapply(weights, mask_tensors), cancelled=cancelled):
        log.info("finetune epoch %d/%d loss %.4f", epoch, spec.epochs, last)
        if progress:
            progress(epoch / spec.epochs)
    return last


def hinton_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels).
    T^2 keeps the soft gradients' scale independent of T (Hinton et al. 2015, section 2)."""
    from torch.nn import functional

    soft = functional.kl_div(functional.log_softmax(student / temperature, dim=-1),
                             functional.log_softmax(teacher / temperature, dim=-1),
                             log_target=True, reduction="batchmean")
    hard = functional.cross_entropy(student, labels, label_smoothing=label_smoothing)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def _loss(spec: FinetuneSpec, teacher: nn.Module | None, x: tuple[torch.Tensor, ...]):
    """loss(outputs, labels, batch indices): cross-entropy, or mixed with the teacher's soft targets."""
    if spec.distill == 0:
        ce = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
        return lambda out, labels, idx: ce(out, labels)
    if teacher is None:
        raise WorkbenchError("finetune.distill: needs the run's original torch model as the teacher "
                             "(ONNX models cannot teach; set distill: 0)")
    with torch.no_grad():
        was_training = teacher.training
        teacher.eval()
        logits = torch.cat([teacher(*(t[i:i + 256] for t in x)) for i in range(0, len(x[0]), 256)])
        teacher.train(was_training)
    return lambda out, labels, idx: hinton_loss(out, logits[idx], labels, spec.temperature, spec.distill,
                                                spec.label_smoothing)


def finetune_steps(spec: FinetuneSpec, samples: int) -> int:
    """Optimizer steps of one `finetune` call on `samples` training samples."""
    return spec.epochs * -(-samples // spec.batch_size)


def schedule_window(rewind: str, round_index: int, rounds: int, steps: int) -> tuple[int, int]:
    """(offset, total) of pruning round `round_index` (from 0) of `rounds`, each training `steps` steps:
    rewind "none" spreads one schedule over all rounds (fine-tuning); "lr" and "weight" restart it at its
    peak every round (learning-rate rewinding, Renda et al. 2020). Adam's moments restart each round in
    every mode: only the learning rate is continued."""
    if rewind == "none":
        return round_index * steps, rounds * steps
    return 0, steps


def _reapply(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask)
