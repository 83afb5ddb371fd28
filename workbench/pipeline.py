"""run_pipeline(spec, progress, cancel) -> Report: load, measure the baseline once, run each stage,
measure each variant the same way, and write the artifacts.

When the first stage is `transfer` (a new head for the user's task), it runs before the baseline is
measured: the baseline is then the transferred, uncompressed model (named "baseline (after transfer)",
with the transfer stage's notes and history), and later stages are compared with it. `DataRef.classes`
keeps only the samples of those labels, relabelled 0..k-1 in the given order, in every split.

Progress is reported as (fraction of the whole run, stage label, message); `cancel` is polled between
stages and inside long loops. This module does orchestration only: loading, compression, measurement
and claims live in their own modules.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from workbench.claims import Facts, claims_for
from workbench.data import Dataset, Splits, adapt_to_shape, check_training_data, digits_splits, load_user_data
from workbench.environment import environment
from workbench.errors import WorkbenchError
from workbench.measure import measure
from workbench.measure_plan import heavy_calls
from workbench.models import LoadedModel, load_model, traced_kind
from workbench.onnx_graph import kernel_signature
from workbench.packed_model import split_graph
from workbench.packing import unpack
from workbench.report import Report, VariantResult
from workbench.size import gzip_size
from workbench.specs import RunSpec, StageSpec, stage_dict
from workbench.stage_needs import needs_conversion
from workbench.stages import STAGE_RUNNERS, Context, Variant, to_onnx
from workbench.summary import model_macs

log = logging.getLogger(__name__)
BASELINE_AFTER_TRANSFER = "baseline (after transfer)"
Progress = Callable[[float, str, str], None]


def load_splits(spec: RunSpec, model: LoadedModel) -> Splits:
    """Train/calib/test for the run, shaped for the model when its input shape is known."""
    ref = spec.data
    names = model.input_names()
    if ref.builtin == "digits":
        splits = digits_splits()
    else:
        test = load_user_data(ref.path, names, ref.label_column)
        train = load_user_data(ref.train_path, names, ref.label_column) if ref.train_path else None
        if train is not None:
            check_training_data(train, test)
        # calibration comes from the training data when there is some, else from the evaluation file; shuffled
        # either way, since calibration takes a prefix and a file sorted by class starts with one class only
        source = test if train is None else train
        splits = Splits(train=train, calib=source.sample(len(source)), test=test)
    if ref.classes is not None:
        splits = Splits(*(None if d is None else select_classes(d, ref.classes)
                          for d in (splits.train, splits.calib, splits.test)))
    limit = ref.max_samples or spec.measure.max_eval_samples
    if limit and limit < len(splits.test):   # a fixed random draw, fair to every class of a sorted file
        splits = dataclasses.replace(splits, test=splits.test.sample(limit))
    if model.input_shape is not None:
        parts = (splits.train, splits.calib, splits.test)
        splits = Splits(*(None if d is None else _shaped(d, model.input_shape) for d in parts))
    return splits


def select_classes(data: Dataset, classes: tuple[int, ...]) -> Dataset:
    """Only the samples labelled one of `classes`, relabelled 0..k-1 in the order given."""
    if data.labels is None:
        raise WorkbenchError(f"data.classes: {data.name} has no labels to select classes from")
    missing = [c for c in classes if not np.any(data.labels == c)]
    if missing:
        raise WorkbenchError(f"data.classes: class {missing[0]} has no samples in {data.name}")
    keep = np.isin(data.labels, classes)
    order = np.argsort(classes)
    labels = order[np.searchsorted(np.asarray(classes)[order], data.labels[keep])].astype(np.int64)
    return Dataset(data.name, tuple(x[keep] for x in data.inputs), labels)


def _shaped(data: Dataset, shape: tuple[int, ...]) -> Dataset:
    if len(data.inputs) != 1:
        return data
    x = adapt_to_shape(data.inputs[0], [None, *shape], np.dtype(np.float32), data.name)
    return dataclasses.replace(data, inputs=(x,))


def example_inputs(test: Dataset) -> tuple:
    """Two test samples as torch tensors: what a torch model is exported (and traced for pruning) with."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(x[:2])) for x in test.inputs)


def run_pipeline(spec: RunSpec, progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                 out_dir: str | Path | None = None) -> Report:
    """Run `spec` end to end; if `out_dir` is given, write model.onnx, report.json and recipe.yaml there."""
    started = time.perf_counter()
    report_progress = progress or (lambda *_: None)
    cancelled = cancel or (lambda: False)
    steps = len(spec.stages) + 1

    report_progress(0.0, "load", f"loading {spec.model.label}")
    loaded = load_model(spec.model)
    splits = load_splits(spec, loaded)
    module, graph, converted = loaded.module, loaded.onnx_model, ()
    if _converts(loaded, spec):
        from workbench.onnx_torch import convert_loaded

        report_progress(0.01, "load", "converting the model to torch modules")
        conversion, splits, graph = convert_loaded(loaded, splits)
        module, converted = conversion.module, (conversion.note(),)
    eager = not converted   # a converted module's eager latency is not the user's model's: time ONNX only
    variant = Variant(module=module, onnx_model=graph)
    ctx = Context(spec, splits, example_inputs(splits.test) if module is not None else (),
                  lambda f, msg: None, cancelled)

    stages = list(enumerate(spec.stages, start=1))
    base_name, base_stage, base_notes, base_history = "baseline", None, converted, ()
    if stages and stages[0][1].kind == "transfer":  # the baseline is the transferred, uncompressed model
        i, stage = stages.pop(0)
        variant = _run_stage(variant, i, stage, ctx, report_progress, steps)
        base_name, base_stage = BASELINE_AFTER_TRANSFER, stage_dict(stage)
        base_notes, base_history = (*converted, *variant.notes), tuple(variant.history)
    ctx.teacher = variant.module     # what recovery fine-tuning may distill from: the uncompressed model

    report_progress(0.02 if base_stage is None else 1.85 / (steps + 1), "baseline", "exporting the baseline")
    # a converted model is measured as the graph it was converted from (an ONNX upload: as uploaded)
    base_model = graph if converted and base_stage is None else to_onnx(variant, ctx)
    counted = model_macs(base_model)
    heavy = heavy_calls(counted[0] if counted else None, spec.measure.batch_sizes)
    timing = f"measuring ({heavy}: seconds per timed call)" if heavy else "measuring"
    report_progress(0.03 if base_stage is None else 1.9 / (steps + 1), "baseline", timing)
    base_m, base_outputs = measure(base_model, splits.test, spec.measure, module=variant.module if eager else None)
    baseline = VariantResult(base_name, base_stage, base_m, Facts(), (), base_notes, base_history)
    labelled = splits.test.labels is not None   # accuracy (paired with the baseline's answers), else fidelity

    results, model, base_signature, graph = [], base_model, kernel_signature(base_model), None
    for i, stage in stages:
        variant = _run_stage(variant, i, stage, ctx, report_progress, steps)
        if stage.kind == "transfer":
            variant.notes.append("transfer is not the first stage, so it is measured as a variant: its accuracy "
                                 "is on the new task, the baseline's is the original head on the same labels")
        label = f"{i}: {stage.kind}"
        report_progress((i + 0.85) / (steps + 1), label, timing)
        model = to_onnx(variant, ctx)
        m, _ = measure(model, splits.test, spec.measure, module=variant.module if eager else None,
                       reference=None if labelled else base_outputs,
                       storage_bits=variant.storage_bits if _computed_bits(variant) else None,
                       layer_bits=variant.layer_bits if _computed_bits(variant) else None,
                       baseline_outputs=base_outputs if labelled else None)
        graph = split_graph(model, unpack(variant.packed)) if variant.packed else None
        facts = Facts(m.size.sparsity, variant.quant_method, variant.simulated_quant, variant.storage_bits,
                      layer_bits=tuple(sorted(set(variant.layer_bits.values()), reverse=True)),
                      same_kernels=kernel_signature(model) == base_signature, structured=variant.structured,
                      packed_bytes=len(variant.packed) if variant.packed else None,
                      graph_gzip_bytes=gzip_size(graph) if graph else None)
        results.append(VariantResult(label, stage_dict(stage), m, facts,
                                     tuple(claims_for(base_m, m, facts)), tuple(variant.notes),
                                     tuple(variant.history)))
    report = Report(spec.to_dict(), environment(spec.measure.threads), baseline, tuple(results),
                    round(time.perf_counter() - started, 2))
    if out_dir is not None:
        program = _torch_archive(variant, ctx)
        report = write_artifacts(report, model, spec, Path(out_dir), variant.packed, program, graph)
    report_progress(1.0, "done", f"finished in {report.seconds:.1f} s")
    return report


def _converts(loaded: LoadedModel, spec: RunSpec) -> bool:
    """Whether the stages need torch modules the model lacks (workbench.stage_needs)."""
    traced = None if loaded.module is None else traced_kind(loaded.module)
    return needs_conversion(spec.stages, loaded.module is None, traced)


def _run_stage(variant: Variant, i: int, stage: StageSpec, ctx: Context, report_progress: Progress,
               steps: int) -> Variant:
    """Run stage `i` (1-based) of `steps - 1`; its own work fills 80% of its progress slot, measuring the rest."""
    ctx.check()
    label = f"{i}: {stage.kind}"
    ctx.progress = lambda f, msg: report_progress((i + 0.8 * min(f, 1.0)) / (steps + 1), label, msg)
    ctx.progress(0.0, f"running {stage.kind}")
    if stage.kind not in STAGE_RUNNERS:
        raise WorkbenchError(f"stages[{i - 1}]: the '{stage.kind}' stage is not available in this installation")
    return STAGE_RUNNERS[stage.kind](variant, stage, ctx)


def _computed_bits(variant: Variant) -> bool:
    """Whether the variant's values need fewer bits than the file stores them in (fake-quant floats,
    clustered indices, QAT's sub-byte codes in int4/int8 containers): the minimum-storage estimate uses them."""
    return bool(variant.simulated_quant or variant.packed or variant.quant_method == "qat")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_archive(variant: Variant, ctx: Context) -> bytes | None:
    """The final variant as model.pt2 when it is still a torch model (after ONNX Runtime quantization it is not:
    then model.onnx is the model); None, with the reason in the log, when torch.export cannot trace it."""
    if variant.module is None:
        return None
    from workbench.export import export_program

    try:
        return export_program(variant.module, ctx.example)
    except WorkbenchError as exc:
        log.warning("model.pt2 not written (model.onnx has the compressed model): %s", exc)
        return None


def write_artifacts(report: Report, model, spec: RunSpec, out_dir: Path, packed: bytes | None = None,
                    program: bytes | None = None, graph: bytes | None = None) -> Report:
    from workbench.specs import dump_recipe

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(out_dir / "model.onnx", model.SerializeToString())
        _atomic_write(out_dir / "recipe.yaml", dump_recipe(spec).encode())
        artifacts = {"model": "model.onnx", "recipe": "recipe.yaml", "report": "report.json"}
        if packed:
            _atomic_write(out_dir / "weights.packed", packed)
            artifacts["packed"] = "weights.packed"
        if graph:   # the network without the packed weights (only beside them): the two restore model.onnx
            _atomic_write(out_dir / "graph.onnx", graph)
            artifacts["graph"] = "graph.onnx"
        if program:
            _atomic_write(out_dir / "model.pt2", program)
            artifacts["torch"] = "model.pt2"
        report = dataclasses.replace(report, artifacts=artifacts)
        _atomic_write(out_dir / "report.json", json.dumps(report.to_dict(), indent=2, default=_json).encode())
    except OSError as exc:
        raise WorkbenchError(f"{out_dir}: could not write artifacts ({exc.strerror or exc})") from None
    return report


def _json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

