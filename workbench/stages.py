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
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    packed: bytes | None = None          # the weights in a purpose-built encoding (clustering), if any
    structured: bool = False             # channels/neurons/heads were physically removed

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
    if variant.module is None:
        return _prune_onnx(variant, spec)
    import copy

    from workbench.evaluate import score, torch_predict
    from workbench.finetune import finetune
    from workbench.pruning import prune_torch, sparsity_of

    module = copy.deepcopy(variant.module)
    out = variant.copy_meta(module=module)
    masks = dict(variant.masks) or None
    rounds = spec.rounds
    for r in range(1, rounds + 1):
        ctx.check()
        target = spec.sparsity if r == rounds else 1 - (1 - spec.per_round) ** r
        masks = prune_torch(module, spec, target, masks)
        record: dict[str, Any] = {"round": r, "target": round(target, 4), "sparsity": round(sparsity_of(masks), 4)}
        if spec.finetune is not None and spec.finetune.epochs > 0:
            if ctx.splits.train is None:
                raise WorkbenchError("prune.finetune: no training data (set data.train_path for user data)")
            record["loss"] = finetune(module, spec.finetune, ctx.splits.train, masks, cancelled=ctx.cancelled)
        test = ctx.splits.test
        record.update(score(torch_predict(module, test), test.labels) if test.labels is not None else {})
        out.history.append(record)
        ctx.progress(r / rounds, f"round {r}/{rounds}: sparsity {record['sparsity']:.1%}")
    out.masks = masks or {}
    return out


def _prune_onnx(variant: Variant, spec: PruneSpec) -> Variant:
    from workbench.pruning import onnx_weights, prune_onnx, sparsity_of

    if spec.finetune is not None and spec.finetune.epochs > 0:
        raise WorkbenchError("prune.finetune: fine-tuning needs a torch model; this variant is ONNX "
                             "(prune and fine-tune before quantize, or load a torch model)")
    if not onnx_weights(variant.onnx_model):
        raise WorkbenchError("prune: no float Linear/Conv weights to prune (prune before quantizing)")
    model = onnx.ModelProto()
    model.CopyFrom(variant.onnx_model)
    out = variant.copy_meta(onnx_model=model)
    masks = prune_onnx(model, spec)
    out.history.append({"round": 1, "target": spec.sparsity, "sparsity": round(sparsity_of(masks), 4)})
    if spec.schedule == "iterative":
        out.notes.append("iterative schedule without fine-tuning equals one-shot pruning on ONNX")
    return out


@runner("finetune")
def run_finetune(variant: Variant, spec: FinetuneSpec, ctx: Context) -> Variant:
    import copy

    from workbench.finetune import finetune

    if variant.module is None:
        raise WorkbenchError("finetune: needs a torch model; this variant is ONNX (put finetune before quantize)")
    if ctx.splits.train is None:
        raise WorkbenchError("finetune: no training data (set data.train_path for user data)")
    module = copy.deepcopy(variant.module)
    out = variant.copy_meta(module=module, masks=dict(variant.masks))
    loss = finetune(module, spec, ctx.splits.train, variant.masks,
                    progress=lambda f: ctx.progress(f, "fine-tuning"), cancelled=ctx.cancelled)
    ctx.check()
    out.history.append({"epochs": spec.epochs, "loss": loss})
    return out


@runner("quantize")
def run_quantize(variant: Variant, spec: QuantSpec, ctx: Context) -> Variant:
    from workbench.quantization import quantize

    if variant.quant_method is not None:
        raise WorkbenchError(f"quantize: the model is already quantized ({variant.quant_method})")
    result = quantize(to_onnx(variant, ctx), spec, ctx.splits.calib)
    out = variant.copy_meta(module=None, onnx_model=result.model, quant_method=spec.method,
                            simulated_quant=result.simulated, storage_bits=result.storage_bits)
    out.notes.extend(result.notes)
    return out


# Method modules register their runners on import; they import this module, so they come last.
import workbench.clustering  # noqa: E402,F401  (the "cluster" stage)
import workbench.distill  # noqa: E402,F401  (the "distill" stage)
import workbench.lowrank  # noqa: E402,F401  (the "lowrank" stage)
import workbench.qat  # noqa: E402,F401  (the "qat" stage)
import workbench.structured  # noqa: E402,F401  (the "structured" stage)
import workbench.transfer  # noqa: E402,F401  (the "transfer" stage)
