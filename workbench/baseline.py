"""Measure a model as it is (the baseline every run starts from) without running any stage.

Same loading, eval split, export and measurement as the baseline step of `pipeline.run_pipeline`, so a
screen can show the numbers a run will compare against. No UI and no caching here: callers cache.
"""

from __future__ import annotations

from workbench.data import Splits
from workbench.measure import Measurement, measure
from workbench.models import LoadedModel
from workbench.pipeline import example_inputs, load_splits
from workbench.specs import RunSpec


def measure_baseline(loaded: LoadedModel, spec: RunSpec, splits: Splits | None = None) -> Measurement:
    """Accuracy (or fidelity), ONNX Runtime latency at `spec.measure.batch_sizes`, size: as a run measures it."""
    splits = splits or load_splits(spec, loaded)
    model = loaded.onnx_model
    if loaded.module is not None:
        from workbench.export import export_onnx

        model = export_onnx(loaded.module, example_inputs(splits.test))
    result, _ = measure(model, splits.test, spec.measure, module=loaded.module)
    return result
