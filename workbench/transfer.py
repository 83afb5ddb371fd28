"""Transfer to a new task: replace the classification head with a fresh Linear sized to the training
labels' classes (max label + 1) and train it on the run's training data.

- The head is the last `nn.Linear` to run in the forward pass, and its output must have the model
  output's shape (a softmax after it is fine; a pooling after it is not): a clear error otherwise.
- Frozen backbone (the default): every other parameter stays fixed and the backbone stays in eval mode
  (BatchNorm statistics and dropout unchanged), so its features are computed once and only the head is
  trained on them; the backbone's weights and buffers come out bit-identical.
- `train_backbone`: the whole model trains (train mode); the backbone's learning rate is `lr / 10`
  (discriminative fine-tuning) so the head's large default rate does not wreck pretrained features.
- Adam with a cosine learning rate per step, cross-entropy, `epochs` over the training split shuffled by
  `seed`. History: every few epochs the loss and the test accuracy on the new task. Trainability flags
  are restored afterwards, so later stages (prune + finetune) train the whole model again.
As the first stage of a run, the pipeline measures the baseline after this stage (see workbench.pipeline).
Torch only.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.models import copy_module, needs_layer_modules
from workbench.specs import TransferSpec
from workbench.stages import Context, Variant, runner

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workbench.data import Dataset

log = logging.getLogger(__name__)
BACKBONE_LR_FACTOR = 0.1


def find_head(module: nn.Module, example: tuple) -> str:
    """The name of the classification head: the last nn.Linear run, whose output is shaped like the model's."""
    import torch
    from torch import nn

    linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    calls: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: calls.append((n, tuple(out.shape))))
             for n, m in linears.items()]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            result = module(*example)
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise WorkbenchError(f"transfer: the model does not run on the example input ({line})") from None
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    if not isinstance(result, torch.Tensor):
        raise WorkbenchError("transfer: the model must return one tensor of class scores")
    if not calls:
        raise WorkbenchError("transfer: no nn.Linear runs in the model's forward pass, so there is no head to replace")
    name, shape = calls[-1]
    if shape != tuple(result.shape):
        raise WorkbenchError(f"transfer: the last Linear ({name}) outputs {shape}, the model {tuple(result.shape)}: "
                             "the output is not produced by a Linear head")
    return name


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _features(module: nn.Module, head: nn.Module, data: Dataset, batch_size: int = 256) -> torch.Tensor:
    """The inputs the head receives for every sample (the module in eval mode, no gradients)."""
    import torch

    parts: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: parts.append(args[0].detach()))
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                module(*(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32))
                         for x in data.inputs))
    finally:
        hook.remove()
    return torch.cat(parts)


def _old_head_accuracy(module: nn.Module, test: Dataset, classes: int) -> float | None:
    """The accuracy of the unchanged model on the new labels (its outputs read as class indices)."""
    from workbench.evaluate import score, torch_predict

    if test.labels is None:
        return None
    outputs = torch_predict(module, test)
    if outputs.ndim != 2 or outputs.shape[1] < classes:
        return None
    return score(outputs, test.labels)["accuracy"]


def train_head(module: nn.Module, head_name: str, spec: TransferSpec, ctx: Context) -> list[dict[str, Any]]:
    """Train `module` in place (the head only unless `spec.train_backbone`); returns the history."""
    import torch
    from torch import nn

    from workbench.training import lr_schedule, train_epochs

    train, test = ctx.splits.train, ctx.splits.test
    head = module.get_submodule(head_name)
    head_params = {id(p) for p in head.parameters()}
    if spec.train_backbone:
        backbone = [p for p in module.parameters() if id(p) not in head_params]
        groups = [{"params": list(head.parameters()), "lr": spec.lr},
                  {"params": backbone, "lr": spec.lr * BACKBONE_LR_FACTOR}]
        x = tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in train.inputs)
        test_x = None
        trainee = module
    else:
        groups = [{"params": list(head.parameters()), "lr": spec.lr}]
        x = (_features(module, head, train),)
        test_x = _features(module, head, test) if test.labels is not None else None
        trainee = head   # on cached features
    for p in module.parameters():
        p.requires_grad_(spec.train_backbone or id(p) in head_params)
    y = torch.from_numpy(train.labels)
    optimizer = torch.optim.Adam(groups)
    ce = nn.CrossEntropyLoss()
    every = max(1, spec.epochs // 10)
    history = []
    ctx.check()
    lr_factor = lr_schedule("cosine", spec.epochs * math.ceil(len(y) / spec.batch_size))
    for epoch, loss in train_epochs(trainee, x, y, lambda out, labels, idx: ce(out, labels), optimizer, spec.epochs,
                                    spec.batch_size, spec.seed, lr_factor):
        record: dict[str, Any] = {"epoch": epoch, "loss": round(loss, 5)}
        if epoch % every == 0 or epoch == spec.epochs:
            if test.labels is not None:
                record["accuracy"] = round(_test_accuracy(module, head, test_x, test), 4)
            history.append(record)
        ctx.progress(0.1 + 0.9 * epoch / spec.epochs, f"epoch {epoch}/{spec.epochs}: loss {record['loss']:.4f}")
        ctx.check()
    return history


def _test_accuracy(module: nn.Module, head: nn.Module, test_x: torch.Tensor | None, test: Dataset) -> float:
    """Test accuracy: the head on the cached backbone features when given, else the whole model."""
    import torch

    from workbench.evaluate import torch_predict

    if test_x is None:
        outputs = torch_predict(module, test)
    else:
        with torch.no_grad():
            outputs = head(test_x).numpy()
    return float(np.mean(np.argmax(outputs, -1) == test.labels))


@runner("transfer")
def run_transfer(variant: Variant, spec: TransferSpec, ctx: Context) -> Variant:
    import torch
    from torch import nn

    if variant.module is None:
        raise WorkbenchError("transfer: needs a torch model; this variant is ONNX (load the model as .pt2 or "
                             "safetensors + arch, and put transfer before quantize)")
    train = ctx.splits.train
    if train is None:
        raise WorkbenchError("transfer: no training data for the new task: set data.train_path to a labelled "
                             ".npz (x, y) or .csv")
    if train.labels is None:
        raise WorkbenchError(f"transfer: the training data ({train.name}, data.train_path) has no labels")
    needs_layer_modules("transfer", variant.module)
    module = copy_module(variant.module)
    grads = {n: p.requires_grad for n, p in module.named_parameters()}
    head_name = find_head(module, ctx.example)
    old = module.get_submodule(head_name)
    classes = int(train.labels.max()) + 1
    test = ctx.splits.test
    if test.labels is not None and int(test.labels.max()) >= classes:
        raise WorkbenchError(f"transfer: the evaluation data ({test.name}) has class {int(test.labels.max())}, but "
                             f"the training labels ({train.name}) stop at {classes - 1}: the new head would have "
                             f"no output for it")
    old_accuracy = _old_head_accuracy(module, ctx.splits.test, classes)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        new = nn.Linear(old.in_features, classes, bias=old.bias is not None,
                        dtype=old.weight.dtype, device=old.weight.device)
    _set_module(module, head_name, new)
    ctx.progress(0.05, f"training a {classes}-class head")
    history = train_head(module, head_name, spec, ctx)
    for n, p in module.named_parameters():
        p.requires_grad_(grads.get(n, True))
    module.eval()
    out = variant.copy_meta(module=module, masks={} if spec.train_backbone else _kept(variant.masks, head_name))
    out.history.extend(history)
    out.notes.extend(_notes(spec, head_name, old, new, module, len(train), old_accuracy))
    if variant.masks and spec.train_backbone:
        out.notes.append("earlier pruning masks were dropped: the backbone was trained, so its zeros may regrow")
    ctx.progress(1.0, "head re-trained")
    return out


def _kept(masks: dict[str, Any], head_name: str) -> dict[str, Any]:
    """Masks of a frozen backbone still hold; the old head's mask no longer fits the new head."""
    return {n: m for n, m in masks.items() if not n.startswith(head_name + ".")}


def _notes(spec: TransferSpec, name: str, old: nn.Module, new: nn.Module, module: nn.Module, samples: int,
           old_accuracy: float | None) -> list[str]:
    trained = sum(p.numel() for p in (module.parameters() if spec.train_backbone else new.parameters()))
    total = sum(p.numel() for p in module.parameters())
    how = (f"backbone trained too (lr {spec.lr * BACKBONE_LR_FACTOR:g}, head lr {spec.lr:g})" if spec.train_backbone
           else f"backbone frozen (eval mode): only the head's {trained:,} of {total:,} parameters trained")
    notes = [f"head {name} replaced: Linear({old.in_features}->{old.out_features}) -> "
             f"Linear({new.in_features}->{new.out_features}) for the {new.out_features} classes of the training "
             f"labels; trained {spec.epochs} epochs on {samples} samples, Adam lr {spec.lr:g} cosine; {how}",
             "accuracy is on the new task's labels"]
    if old_accuracy is not None:
        notes.append(f"before re-training, the old head scores {old_accuracy:.4f} on the new labels "
                     "(its outputs read as class indices)")
    return notes
