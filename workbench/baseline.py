"""Measure a model as it is (the baseline every run starts from) without running any stage.

Same loading, eval split, export and measurement as the baseline step of `pipeline.run_pipeline`, so a
screen can show the numbers a run will compare against. No UI and no caching here: callers cache.
"""

from __future__ import annotations

import numpy as np

from workbench.data import Splits
from workbench.measure import Measurement, measure
from workbench.models import LoadedModel
from workbench.pipeline import load_splits
from workbench.specs import RunSpec


def input_names(loaded: LoadedModel) -> list[str] | None:
    """The graph inputs of an ONNX model that are fed data (not initializers); None for torch models."""
    if loaded.onnx_model is None:
        return None
    inits = {t.name for t in loaded.onnx_model.graph.initializer}
    return [i.name for i in loaded.onnx_model.graph.input if i.name not in inits]


def eval_splits(loaded: LoadedModel, spec: RunSpec) -> Splits:
    """The train/calib/test splits a run of `spec` uses, shaped for the model."""
    return load_splits(spec, loaded, input_names(loaded))


def measure_baseline(loaded: LoadedModel, spec: RunSpec, splits: Splits | None = None) -> Measurement:
    """Accuracy (or fidelity), ONNX Runtime latency at `spec.measure.batch_sizes`, size: as a run measures it."""
    splits = splits or eval_splits(loaded, spec)
    model = loaded.onnx_model
    if loaded.module is not None:
        import torch

        from workbench.export import export_onnx

        example = tuple(torch.from_numpy(np.ascontiguousarray(x[:2])) for x in splits.test.inputs)
        model = export_onnx(loaded.module, example)
    result, _ = measure(model, splits.test, spec.measure, module=loaded.module)
    return result
