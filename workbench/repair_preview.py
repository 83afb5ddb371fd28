"""Preview of a reconstructed mask: the prune stage run once, one shot, on a copy of the model, and scored.

The instant preview (workbench.preview) shows the mask as chosen, in milliseconds. Solving the kept weights
(`prune.reconstruct`) takes seconds, so the Compress page offers it on request: this runs the same prune
stage a run would (torch or ONNX), without its schedule or training, and measures the test accuracy.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from workbench.data import Splits
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session, predict, score, torch_predict
from workbench.specs import ModelRef, PruneSpec, RunSpec
from workbench.stages import STAGE_RUNNERS, Context, Variant


@dataclass(frozen=True)
class RepairPreview:
    accuracy: float          # test accuracy after solving (torch for torch models, ONNX Runtime for ONNX)
    seconds: float           # wall time of the prune stage
    notes: tuple[str, ...]   # the stage's notes: each layer's output error, layers left as masked


def preview_repair(loaded, ref: ModelRef, prune: PruneSpec, splits: Splits) -> RepairPreview:
    """Prune a copy of `loaded` (a models.LoadedModel) with `prune` in one shot, solving as `prune.reconstruct`
    says, and score it on the test split."""
    if prune.reconstruct == "none":
        raise WorkbenchError("preview_repair: the prune stage does not reconstruct (reconstruct: none)")
    if splits.test.labels is None:
        raise WorkbenchError("preview_repair: the test data has no labels to score")
    one_shot = dataclasses.replace(prune, schedule="oneshot", finetune=None, rewind="lr", rewind_weights=None)
    ctx = Context(RunSpec(model=ref, stages=(one_shot,)), splits, (), lambda *_: None, lambda: False)
    variant = Variant(module=loaded.module) if loaded.module is not None else Variant(onnx_model=loaded.onnx_model)
    started = time.perf_counter()
    out = STAGE_RUNNERS["prune"](variant, one_shot, ctx)
    seconds = time.perf_counter() - started
    test = splits.test
    outputs = torch_predict(out.module, test) if out.module is not None else predict(make_session(out.onnx_model),
                                                                                      test)
    return RepairPreview(score(outputs, test.labels)["accuracy"], seconds, tuple(out.notes))
