"""Knowledge distillation (Hinton, Vinyals & Dean 2015): train a narrower copy of the model (the student)
on the softened outputs of the current one (the teacher).

- The student is the teacher's own architecture with `width` of every prunable group's channels /
  neurons / heads kept, built by `workbench.structured.prune_structured` (ratio = 1 - width), so any
  torch model works, coupled layers included; the classifier keeps its outputs. `init="teacher"` starts
  from the teacher's most important channels (l1); `init="random"` re-initialises every parameter with
  `seed` (`reset_parameters` of the modules that have one; parameters owned by no such module, e.g. a
  position embedding, are drawn from N(0, 0.02) and named in the notes).
- Loss: alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels),
  AdamW (weight decay 1e-4) with a cosine learning rate per step, on the training split. The teacher's
  logits are computed once, in eval mode without gradients.
- No data augmentation: the samples' pixel shift only fits 8x8 images, while this stage takes any torch
  model and input; it also keeps distillation on equal footing with the recovery fine-tune it is compared
  with (which does not augment), and lets the teacher's logits be computed once.
- The student is a smaller dense model (`Variant.structured`): its size and speed gains are real.
Torch only: an ONNX variant is a clear error.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.models import copy_module, needs_layer_modules
from workbench.specs import DistillSpec, StructuredSpec
from workbench.stages import Context, Variant, runner

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workbench.data import Dataset

log = logging.getLogger(__name__)
WEIGHT_DECAY = 1e-4
EMBEDDING_STD = 0.02   # for parameters no module re-initialises (position embeddings, class tokens)


def make_student(teacher: nn.Module, example: tuple, spec: DistillSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher's architecture keeping `spec.width` of each prunable group (a new module), initialised
    from the teacher's kept channels or at random (`spec.init`), plus the structured-pruning report
    (params/MACs before and after, layers left whole) and `reinit_extra`: parameters drawn from N(0, 0.02)."""
    from workbench.structured import prune_structured

    needs_layer_modules("distill", teacher)
    if spec.width >= 1:
        student, report = copy_module(teacher).eval(), None
    else:
        try:
            student, report = prune_structured(teacher, example, StructuredSpec(ratio=1 - spec.width))
        except WorkbenchError as exc:
            raise WorkbenchError(f"distill: no student at width {spec.width:g} ({exc})") from None
    params = sum(p.numel() for p in student.parameters())
    report = report or {"params_before": params, "params_after": params, "macs_before": None, "macs_after": None,
                        "pruned_layers": [], "heads": {}, "skipped": []}
    report["reinit_extra"] = reinitialise(student, spec.seed) if spec.init == "random" else []
    return student, report


def reinitialise(module: nn.Module, seed: int) -> list[str]:
    """Re-initialise every parameter of `module` in place, reproducibly from `seed`; returns the names of
    the parameters no module resets, which are drawn from N(0, EMBEDDING_STD)."""
    import torch

    covered: set[str] = set()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for name, m in module.named_modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False))
        extra = [n for n, _ in module.named_parameters() if n not in covered]
        params = dict(module.named_parameters())
        for name in extra:
            params[name].normal_(0.0, EMBEDDING_STD)
    return extra


def _tensors(data: Dataset) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    import torch

    inputs = tuple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in data.inputs)
    return inputs, torch.from_numpy(data.labels)


def _accuracy(module: nn.Module, data: Dataset) -> float | None:
    from workbench.evaluate import score, torch_predict

    if data.labels is None:
        return None
    return score(torch_predict(module, data), data.labels)["accuracy"]


def distill(student: nn.Module, teacher: nn.Module, spec: DistillSpec, ctx: Context) -> list[dict[str, Any]]:
    """Train `student` in place on `ctx.splits.train` with the Hinton loss; returns the history: every few
    epochs (and the last) the mean loss and the student's test accuracy (or top-1 agreement with the
    teacher when the test data has no labels)."""
    import torch

    from workbench.evaluate import torch_predict
    from workbench.finetune import hinton_loss
    from workbench.training import lr_schedule, train_epochs

    train, test = ctx.splits.train, ctx.splits.test
    x, y = _tensors(train)
    soft_targets = torch.from_numpy(torch_predict(teacher, train))
    teacher_test = torch_predict(teacher, test) if test.labels is None else None
    params = list(student.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=WEIGHT_DECAY)
    every = max(1, spec.epochs // 10)
    history = []

    def loss_fn(out: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return hinton_loss(out, soft_targets[idx], labels, spec.temperature, spec.alpha)

    ctx.check()
    lr_factor = lr_schedule("cosine", spec.epochs * math.ceil(len(y) / spec.batch_size))
    for epoch, loss in train_epochs(student, x, y, loss_fn, optimizer, spec.epochs, spec.batch_size, spec.seed,
                                    lr_factor):
        record: dict[str, Any] = {"epoch": epoch, "loss": round(loss, 5)}
        if epoch % every == 0 or epoch == spec.epochs:
            if teacher_test is None:
                record["accuracy"] = round(_accuracy(student, test), 4)
            else:
                agree = np.argmax(torch_predict(student, test), -1) == np.argmax(teacher_test, -1)
                record["top1_agreement"] = round(float(np.mean(agree)), 4)
            history.append(record)
        ctx.progress(0.1 + 0.9 * epoch / spec.epochs, f"epoch {epoch}/{spec.epochs}: loss {record['loss']:.4f}")
        ctx.check()
    return history


@runner("distill")
def run_distill(variant: Variant, spec: DistillSpec, ctx: Context) -> Variant:
    if variant.module is None:
        raise WorkbenchError("distill: needs a torch teacher; this variant is ONNX (put distill before quantize, "
                             "or load the model as safetensors + arch)")
    train = ctx.splits.train
    if train is None or train.labels is None:
        raise WorkbenchError("distill: no labelled training data (set data.train_path for user data)")
    teacher = copy_module(variant.module).eval()
    ctx.progress(0.02, f"building the student (width {spec.width:g})")
    student, report = make_student(teacher, ctx.example, spec)
    ctx.check()
    history = distill(student, teacher, spec, ctx)
    out = variant.copy_meta(module=student, masks={}, structured=spec.width < 1)
    out.history.extend(history)
    out.notes.extend(_notes(spec, report, teacher, ctx, variant))
    ctx.progress(1.0, "distilled")
    return out


def _notes(spec: DistillSpec, report: dict[str, Any], teacher: nn.Module, ctx: Context, teacher_variant: Variant
           ) -> list[str]:
    before, after = report["params_before"], report["params_after"]
    macs = (f", MACs/sample {report['macs_before']:,} -> {report['macs_after']:,}"
            if report["macs_before"] is not None and report["macs_after"] is not None else "")
    init = ("the teacher's most important channels (l1)" if spec.init == "teacher"
            else f"random (seed {spec.seed})")
    teacher_acc = _accuracy(teacher, ctx.splits.test)
    notes = [f"student at width {spec.width:g}: {after:,} params vs the teacher's {before:,} "
             f"({after / before:.0%}){macs}; initialised from {init}",
             f"trained {spec.epochs} epochs on {len(ctx.splits.train)} samples with the Hinton loss "
             f"(T={spec.temperature:g}, alpha={spec.alpha:g}), AdamW lr {spec.lr:g} cosine, no augmentation"
             + (f"; teacher test accuracy {teacher_acc:.4f}" if teacher_acc is not None else "")]
    left = [n for n, _ in report["skipped"]]
    if left:
        notes.append(f"kept at full width: {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}")
    if report["reinit_extra"]:
        extra = ", ".join(report["reinit_extra"])
        notes.append(f"re-drawn from N(0, {EMBEDDING_STD}) (no module resets them): {extra}")
    if teacher_variant.masks:
        notes.append("the teacher's pruning masks do not carry over: the student is trained dense")
    return notes
