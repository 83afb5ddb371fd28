"""Compression stages: each takes the current variant and returns the next one.

A variant is a torch module (while stages can still train it) or an ONNX graph (after a quantize
stage, or for ONNX uploads). Stages are registered by spec kind in `STAGE_RUNNERS`; a new method adds
a spec class in workbench.specs and a runner here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from workbench.data import Splits
from workbench.errors import WorkbenchError
from workbench.specs import FinetuneSpec, PruneSpec, QuantSpec, RunSpec
from workbench.stage_needs import layer_edits

log = logging.getLogger(__name__)


class Cancelled(WorkbenchError):
    """The run was cancelled by request."""


@dataclass
class Variant:
    module: Any = None                                   # torch.nn.Module, the source of truth while set
    onnx_model: onnx.ModelProto | None = None            # the source of truth once module is None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    quant_method: str | None = None
    simulated_quant: bool = False
    storage_bits: int | None = None
    layer_bits: dict[str, int] = field(default_factory=dict)   # value bits per weight, when they differ (fake)
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    packed: bytes | None = None          # the weights in a purpose-built encoding (clustering), if any
    structured: bool = False             # layers physically smaller (channels removed, or low-rank factors)

    def copy_meta(self, **changes: Any) -> Variant:
        """The next stage's variant: per-stage notes/history start empty, and a packed encoding of the
        previous weights no longer describes the model unless the stage provides a new one."""
        return dataclasses.replace(self, **{"notes": [], "history": [], "packed": None, **changes})


@dataclass
class Context:
    spec: RunSpec
    splits: Splits
    example: tuple                                       # torch example inputs for export
    progress: Callable[[float, str], None]               # (fraction within the stage, message)
    cancelled: Callable[[], bool]
    teacher: Any = None      # the run's original torch model (after a leading transfer): distillation's teacher

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled("cancelled")


Runner = Callable[[Variant, Any, Context], Variant]
STAGE_RUNNERS: dict[str, Runner] = {}


def runner(kind: str) -> Callable[[Runner], Runner]:
    def register(fn: Runner) -> Runner:
        STAGE_RUNNERS[kind] = fn
        return fn

    return register


def to_onnx(variant: Variant, ctx: Context) -> onnx.ModelProto:
    if variant.module is None:
        return variant.onnx_model
    from workbench.export import export_onnx

    return export_onnx(variant.module, ctx.example)


@runner("prune")
def run_prune(variant: Variant, spec: PruneSpec, ctx: Context) -> Variant:
    """Prune round by round (one-shot, iterative or gradual targets), retraining between rounds as
    `spec.rewind` says; each round's sparsity and test accuracy go to the variant's history."""
    if variant.module is None:
        return _prune_onnx(variant, spec, ctx)
    from workbench.evaluate import score, torch_predict
    from workbench.models import copy_module, frozen_mode_note, needs_layer_modules
    from workbench.pruning import (
        emptied_notes,
        nm_notes,
        prune_torch,
        round_targets,
        sparsity_of,
        torch_input_axes,
        torch_weights,
    )

    training = spec.finetune is not None and spec.finetune.epochs > 0
    if training and ctx.splits.train is None:
        raise WorkbenchError("prune.finetune: no training data (set data.train_path for user data)")
    for edit in ("reconstruct", "wanda"):
        if edit in layer_edits(spec):
            needs_layer_modules(edit, variant.module)
    module = copy_module(variant.module)
    out = variant.copy_meta(module=module)
    checkpoint, kept = _rewind_state(module, spec, ctx) if spec.rewind == "weight" else (None, ())
    if kept:
        out.notes.append(f"weight rewinding: {', '.join(kept)} (re-trained by the transfer) rewind to their "
                         "transferred values; the checkpoint's head is for the original classes")
    masks = dict(variant.masks) or None
    targets = round_targets(spec)
    fits, skipped = [], []
    for r, target in enumerate(targets, start=1):
        ctx.check()
        rms = _input_rms(module, spec, ctx, out.notes if r == 1 else [])
        previous, masks = masks, prune_torch(module, spec, target, masks, rms)
        if spec.reconstruct != "none":
            step = f"round {r}/{len(targets)}: solving"
            masks, fits, skipped = _reconstruct(module, variant.module, spec, ctx, masks, previous,
                                                lambda f, layer, r=r, step=step: ctx.progress(
                                                    (r - 1 + f) / len(targets), f"{step} {layer}"))
        if checkpoint is not None:
            _rewind_weights(module, checkpoint, masks)
        record: dict[str, Any] = {"round": r, "target": round(target, 4), "sparsity": round(sparsity_of(masks), 4),
                                  "rewind": spec.rewind}
        if training:
            record["loss"] = _retrain(module, spec, ctx, masks, r - 1, len(targets))
        test = ctx.splits.test
        record.update(score(torch_predict(module, test), test.labels) if test.labels is not None else {})
        out.history.append(record)
        ctx.progress(r / len(targets), f"round {r}/{len(targets)}: sparsity {record['sparsity']:.1%}")
    out.masks = masks or {}
    out.notes.extend(frozen_mode_note(module) if training else [])
    out.notes.extend(emptied_notes(out.masks, spec))
    out.notes.extend(_reconstruct_notes(spec, fits, skipped))
    if spec.nm is not None:
        weights = {n: p.detach().numpy() for n, p in torch_weights(module).items()}
        out.notes.extend(nm_notes(weights, spec, torch_input_axes(module)))
    return out


def _input_rms(model: Any, spec: PruneSpec, ctx: Context, notes: list[str]) -> dict[str, np.ndarray] | None:
    """For method wanda: each weight's input RMS on the solving data, read from `model` as it is now (torch
    module or ONNX graph); the weights it cannot cover go into `notes`."""
    if spec.method != "wanda":
        return None
    from workbench.activations import input_rms

    rms, skipped = input_rms(model, ctx.splits.solving_sample(spec.calib_samples))
    if skipped:
        notes.append(f"wanda: no input statistics for {'; '.join(skipped)}: ranked by |w| alone")
    return rms


def _reconstruct(module: Any, reference: Any, spec: PruneSpec, ctx: Context, masks: dict[str, np.ndarray],
                 previous: dict[str, np.ndarray] | None, progress: Callable[[float, str], None]
                 ) -> tuple[dict[str, np.ndarray], list, list[str]]:
    """Solve the round's kept weights against the model before this stage (workbench.reconstruct):
    (keep-masks, fits, layers left as masked)."""
    from workbench.reconstruct import reconstruct

    inputs = ctx.splits.solving_sample(spec.calib_samples).inputs
    masks, fits, skipped = reconstruct(module, reference, masks, inputs, spec.reconstruct, previous, ctx.cancelled,
                                       progress)
    _check_solved(ctx, fits, skipped)
    return masks, fits, skipped


def _check_solved(ctx: Context, fits: list, skipped: list[str]) -> None:
    ctx.check()
    if not fits:
        raise WorkbenchError(f"prune.reconstruct: no layer could be solved ({'; '.join(skipped) or 'no layers'})")


def _reconstruct_notes(spec: PruneSpec, fits: list, skipped: list[str]) -> list[str]:
    """What reconstruction did, for the run's notes: the layers it left, each solved layer's output error."""
    notes = [f"reconstruct: left as masked: {'; '.join(skipped)}"] if skipped else []
    if fits:
        errors = ", ".join(f"{f.name} {f.masked_error:.1%} → {f.solved_error:.1%}" for f in fits)
        last = " (last round)" if spec.schedule != "oneshot" else ""
        notes.append(f"reconstruct ({spec.reconstruct}): each layer's output error on the calibration inputs, "
                     f"masked → solved{last}: {errors}")
        if spec.reconstruct == "obs" and (refit := [f.name for f in fits if f.method == "refit"]):
            notes.append(f"reconstruct: OBS would take too long on {', '.join(refit)} (units × removals × inputs² "
                         "over the limit): refit on the magnitude mask instead")
    return notes


def _retrain(module: Any, spec: PruneSpec, ctx: Context, masks: dict[str, np.ndarray], index: int,
             rounds: int) -> float:
    """Round `index`'s fine-tuning: its window of the learning-rate schedule depends on `spec.rewind`."""
    from workbench.finetune import finetune, finetune_steps, schedule_window

    steps = finetune_steps(spec.finetune, len(ctx.splits.train))
    offset, total = schedule_window(spec.rewind, index, rounds, steps)
    return finetune(module, spec.finetune, ctx.splits.train, masks, cancelled=ctx.cancelled,
                    offset=offset, total=total, teacher=ctx.teacher)


def _rewind_state(module: Any, spec: PruneSpec, ctx: Context) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The early-training checkpoint weight rewinding resets to, checked against `module`'s layout, and
    the tensors it leaves at their current values: after a transfer, the new head's (the checkpoint's head
    has the original classes)."""
    from pathlib import Path

    from workbench.models import copy_module
    from workbench.zoo import load_weights, rewind_checkpoint

    sample = ctx.spec.model.sample
    how = "set rewind_weights to a .safetensors state dict of this model saved early in training"
    if spec.rewind_weights:
        path = Path(spec.rewind_weights)
        if not path.is_file():
            raise WorkbenchError(f"prune.rewind_weights: {path} not found ({how})")
    elif sample and (path := rewind_checkpoint(sample)) is None:
        raise WorkbenchError(f"prune.rewind_weights: sample '{sample}' has no rewind checkpoint "
                             f"(run python sample_models/train.py --only {sample}, or {how})")
    elif not sample:
        raise WorkbenchError(f"prune.rewind_weights: rewind: weight needs an early-training checkpoint; {how}")
    keep: tuple[str, ...] = ()
    if any(stage.kind == "transfer" for stage in ctx.spec.stages):
        from workbench.transfer import find_head

        head = find_head(module, ctx.example)
        keep = tuple(f"{head}.{n}" for n, _ in module.get_submodule(head).named_parameters())
    template = load_weights(copy_module(module), path, f"prune.rewind_weights ({path.name})", frozenset(keep))
    return {k: v.detach().clone() for k, v in template.state_dict().items()}, keep


def _rewind_weights(module: Any, checkpoint: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
    """Reset every parameter and buffer to the checkpoint, then zero the pruned weights again."""
    import torch

    from workbench.pruning import torch_weights

    module.load_state_dict(checkpoint)
    weights = torch_weights(module)
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(torch.from_numpy(mask).to(weights[name].dtype))


def _prune_onnx(variant: Variant, spec: PruneSpec, ctx: Context) -> Variant:
    from workbench.pruning import (
        emptied_notes,
        nm_notes,
        onnx_input_axes,
        onnx_output_axes,
        onnx_weights,
        prune_onnx,
        sparsity_of,
        unit_notes,
    )

    if spec.finetune is not None and spec.finetune.epochs > 0:
        raise WorkbenchError("prune.finetune: fine-tuning needs a torch model; this variant is ONNX "
                             "(prune and fine-tune before quantize, or load a torch model)")
    if spec.rewind == "weight":
        raise WorkbenchError("prune.rewind: weight rewinding needs a torch model; this variant is ONNX "
                             "(prune before quantize, or load a torch model)")
    weights = onnx_weights(variant.onnx_model)
    if not weights:
        raise WorkbenchError("prune: no float Linear/Conv weights to prune (prune before quantizing)")
    model = onnx.ModelProto()
    model.CopyFrom(variant.onnx_model)
    out = variant.copy_meta(onnx_model=model)
    masks = prune_onnx(model, spec, rms=_input_rms(model, spec, ctx, out.notes))
    out.notes.extend(emptied_notes(masks, spec) + unit_notes(weights, spec, onnx_output_axes(model)))
    if spec.reconstruct != "none":
        from workbench.reconstruct_onnx import reconstruct_onnx

        data = ctx.splits.solving_sample(spec.calib_samples)
        masks, fits, skipped = reconstruct_onnx(model, variant.onnx_model, masks, data, spec.reconstruct, ctx.cancelled,
                                                lambda f, layer: ctx.progress(f, f"solving {layer}"))
        _check_solved(ctx, fits, skipped)
        out.notes.extend(_reconstruct_notes(spec, fits, skipped))
    out.history.append({"round": 1, "target": spec.sparsity, "sparsity": round(sparsity_of(masks), 4)})
    if spec.schedule != "oneshot":
        out.notes.append(f"{spec.schedule} schedule without fine-tuning equals one-shot pruning on ONNX")
    if spec.nm is not None:
        out.notes.extend(nm_notes(weights, spec, onnx_input_axes(model)))
    return out


@runner("finetune")
def run_finetune(variant: Variant, spec: FinetuneSpec, ctx: Context) -> Variant:
    from workbench.finetune import finetune
    from workbench.models import copy_module, frozen_mode_note

    if variant.module is None:
        raise WorkbenchError("finetune: needs a torch model; this variant is ONNX (put finetune before quantize)")
    if ctx.splits.train is None:
        raise WorkbenchError("finetune: no training data (set data.train_path for user data)")
    module = copy_module(variant.module)
    out = variant.copy_meta(module=module, masks=dict(variant.masks))
    loss = finetune(module, spec, ctx.splits.train, variant.masks,
                    progress=lambda f: ctx.progress(f, "fine-tuning"), cancelled=ctx.cancelled, teacher=ctx.teacher)
    ctx.check()
    out.history.append({"epochs": spec.epochs, "loss": loss})
    out.notes.extend(frozen_mode_note(module))
    return out


@runner("quantize")
def run_quantize(variant: Variant, spec: QuantSpec, ctx: Context) -> Variant:
    from workbench.quantization import quantize

    if variant.quant_method is not None:
        raise WorkbenchError(f"quantize: the model is already quantized ({variant.quant_method})")
    result = quantize(to_onnx(variant, ctx), spec, ctx.splits.calib)
    out = variant.copy_meta(module=None, onnx_model=result.model, quant_method=spec.method,
                            simulated_quant=result.simulated, storage_bits=result.storage_bits,
                            layer_bits=result.layer_bits)
    out.notes.extend(result.notes)
    calibrates = spec.method == "static" or (spec.method == "fake" and spec.activation_bits is not None)
    if calibrates and ctx.splits.calib.name == ctx.splits.test.name:
        out.notes.append(f"calibrated on the evaluation data itself ({ctx.splits.test.name}), so its accuracy may "
                         "read a little high; give a separate training file (data.train_path) to calibrate on")
    return out


# Method modules register their runners on import; they import this module, so they come last.
import workbench.clustering  # noqa: E402,F401  (the "cluster" stage)
import workbench.distill  # noqa: E402,F401  (the "distill" stage)
import workbench.lowrank  # noqa: E402,F401  (the "lowrank" stage)
import workbench.qat  # noqa: E402,F401  (the "qat" stage)
import workbench.structured  # noqa: E402,F401  (the "structured" stage)
import workbench.transfer  # noqa: E402,F401  (the "transfer" stage)
