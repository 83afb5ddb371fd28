"""What a recipe's stages need of the model: torch layer modules, and so a conversion when it lacks them.

One rule for both the pipeline (which converts before running) and the Compress page (which says up front
that a run will convert, or why it cannot): stages that train or reshape torch layers need an ONNX graph
converted to modules (workbench.onnx_torch); stages that edit nn.Linear/Conv modules need a traced torch
model (which has none) converted too. Pure functions of the stage specs; nothing heavy is imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workbench.models import traced_reason

TRAINING_KINDS = ("finetune", "structured", "qat", "distill", "transfer")   # train or reshape torch layers
LAYER_EDIT_KINDS = ("structured", "distill", "lowrank", "qat", "transfer")


def needs_module(stage: Any) -> bool:
    """Whether `stage` trains or reshapes torch layers, so that an ONNX model must become a torch module
    first; pruning, reconstruction, low-rank factors and clustering without fine-tuning work on the ONNX
    graph itself."""
    tuning = getattr(stage, "finetune", None)
    return (stage.kind in TRAINING_KINDS or (tuning is not None and tuning.epochs > 0)
            or getattr(stage, "rewind", None) == "weight")


def layer_edits(stage: Any) -> list[str]:
    """The edits of nn.Linear/Conv modules `stage` makes (keys of workbench.models.LAYER_EDITS)."""
    edits = [stage.kind] if stage.kind in LAYER_EDIT_KINDS else []
    if getattr(stage, "reconstruct", "none") != "none":
        edits.append("reconstruct")
    if stage.kind == "prune" and stage.method == "wanda":
        edits.append("wanda")
    tuning = getattr(stage, "finetune", None)
    if stage.kind == "cluster" and tuning is not None and tuning.epochs > 0:
        edits.append("centroids")
    return edits


def needs_conversion(stages: Iterable[Any], onnx_graph: bool, traced: str | None) -> bool:
    """Whether running `stages` converts the model to torch modules first: an ONNX graph (`onnx_graph`) that
    they train or reshape, or a traced torch model of kind `traced` (workbench.models.traced_kind) whose
    layers they edit."""
    stages = list(stages)
    if onnx_graph:
        return any(needs_module(stage) for stage in stages)
    return bool(traced) and any(traced_reason(edit, traced) for stage in stages for edit in layer_edits(stage))
