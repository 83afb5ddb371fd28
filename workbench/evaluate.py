"""Run a model on a `Dataset` and score what comes out.

Contract:
- `make_session` builds a deterministic, single-stream ONNX Runtime CPU session (sequential execution,
  one inter-op thread, `threads` intra-op threads, warnings silenced). Load failures become a one-line
  `WorkbenchError`.
- `feeds` maps the dataset's positional inputs onto the session's inputs in declaration order and
  reshapes/casts each to the declared per-sample shape and dtype (`data.adapt_to_shape`).
- `predict` / `torch_predict` return the model's *first* output for every sample, as float32,
  concatenated over batches. A model whose batch axis is a fixed number is run at that batch size
  (the last partial batch is padded by repeating samples and the padding is dropped from the result).
- `score` turns outputs into metrics: accuracy against labels (`answers`: right or wrong per sample), and
  fidelity (top-1 agreement, output MSE, mean per-sample cosine) against a reference model's outputs on the
  same inputs.

ONNX Runtime is imported with this module; torch is imported only by `torch_predict`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from workbench.data import Dataset, adapt_to_shape
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

ModelSource = onnx.ModelProto | bytes | str | Path

# ONNX Runtime raises its own exception types (all plain `Exception` subclasses) plus RuntimeError.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(_ort_state, name) for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail",
    ) if isinstance(getattr(_ort_state, name, None), type)
) + (RuntimeError,)

ORT_TYPES: dict[str, np.dtype] = {
    f"tensor({name})": np.dtype(dtype) for name, dtype in {
        "float": np.float32, "double": np.float64, "float16": np.float16,
        "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
        "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
        "bool": np.bool_,
    }.items()
}


def ort_message(exc: BaseException) -> str:
    """First line of an ONNX Runtime error, without the '[ONNXRuntimeError] : 7 : CODE :' prefix and the
    C++ source location and signature some messages carry."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\s*/onnxruntime_src/\S+:\d+ .*?\)(?= )", "", text)
    return re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)


def make_session(model: ModelSource, threads: int = 1) -> ort.InferenceSession:
    """A CPU InferenceSession: `threads` intra-op threads, 1 inter-op thread, sequential execution."""
    if threads < 1:
        raise WorkbenchError(f"threads: must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4  # errors reach the user as one WorkbenchError line, not also as a log line
    if isinstance(model, onnx.ModelProto):
        source: bytes | str = model.SerializeToString()
        label = model.graph.name or "model"
    elif isinstance(model, bytes | bytearray):
        source, label = bytes(model), "model"
    else:
        path = Path(model)
        if not path.is_file():
            raise WorkbenchError(f"{path}: model file not found")
        source, label = str(path), path.name  # a path keeps external-data files loadable
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise WorkbenchError(f"{label}: ONNX Runtime cannot load the model ({ort_message(exc)})") from None


def _input_dtype(type_str: str, name: str) -> np.dtype:
    dtype = ORT_TYPES.get(type_str)
    if dtype is None:
        raise WorkbenchError(f"model input '{name}': unsupported type {type_str}")
    return dtype


def feeds(session: ort.InferenceSession, dataset: Dataset, start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples `start:stop` of every dataset input, shaped and typed for the session's inputs."""
    inputs = session.get_inputs()
    if len(inputs) != len(dataset.inputs):
        names = ", ".join(i.name for i in inputs)
        raise WorkbenchError(
            f"{dataset.name}: the model expects {len(inputs)} input(s) ({names}), the data gives {len(dataset.inputs)}"
        )
    out: dict[str, np.ndarray] = {}
    for meta, array in zip(inputs, dataset.inputs, strict=True):
        dtype = _input_dtype(meta.type, meta.name)
        out[meta.name] = adapt_to_shape(array[start:stop], list(meta.shape), dtype, f"{dataset.name} -> {meta.name}")
    return out


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch size a model insists on (a positive int on axis 0 of its first input), else None."""
    shape = session.get_inputs()[0].shape
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return int(shape[0])
    return None


def _padded(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    return {k: np.resize(v, (size, *v.shape[1:])) if len(v) < size else v for k, v in batch.items()}


def run_first_output(session: ort.InferenceSession, batch: dict[str, np.ndarray]) -> np.ndarray:
    try:
        out = np.asarray(session.run(None, batch)[0])
    except ORT_ERRORS as exc:
        raise WorkbenchError(f"ONNX Runtime failed to run the model ({ort_message(exc)})") from None
    rows = len(next(iter(batch.values())))
    if out.ndim == 0 or len(out) != rows:
        name = session.get_outputs()[0].name
        raise WorkbenchError(f"model output '{name}' has shape {out.shape} for {rows} samples; expected one row "
                             f"per sample, e.g. (N, classes) scores")
    return out


def predict(session: ort.InferenceSession, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """The first output for every sample, float32, concatenated over batches."""
    n = len(dataset)
    if n == 0:
        raise WorkbenchError(f"{dataset.name}: no samples to evaluate")
    if batch_size < 1:
        raise WorkbenchError(f"batch_size: must be >= 1, got {batch_size}")
    fixed = fixed_batch(session)
    if fixed is not None and fixed != batch_size:
        log.info("model has a fixed batch size of %d; evaluating with it", fixed)
        batch_size = fixed
    parts = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = feeds(session, dataset, start, stop)
        if fixed is not None:
            batch = _padded(batch, fixed)
        parts.append(run_first_output(session, batch)[: stop - start])
    return np.concatenate(parts).astype(np.float32, copy=False)


def answers(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: is the top-1 class of (N, classes) `outputs` the label? Checks shapes and the label range."""
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise WorkbenchError(f"model output has shape {outputs.shape}, expected (N, classes) scores")
    labels = np.asarray(labels)
    if labels.shape != (len(outputs),):
        raise WorkbenchError(f"labels have shape {labels.shape}, expected ({len(outputs)},) to match the outputs")
    classes = outputs.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise WorkbenchError(
            f"labels range {int(labels.min())}..{int(labels.max())}, but the model scores {classes} classes"
        )
    return np.argmax(outputs, axis=1) == labels


def _fidelity(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    if outputs.shape != reference.shape:
        raise WorkbenchError(f"output shape {outputs.shape} differs from the reference output shape {reference.shape}")
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    metrics: dict[str, float] = {}
    if outputs.ndim >= 2 and outputs.shape[-1] >= 2:  # class scores (per position): top-1 is meaningful
        metrics["top1_agreement"] = float(np.mean(np.argmax(outputs, -1) == np.argmax(reference, -1)))
    metrics["output_mse"] = float(np.mean((a - b) ** 2))
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    norms = norm_a * norm_b
    cosine = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
    # a zero vector matches only another zero vector
    cosine = np.where(norms > 0, cosine, np.where((norm_a == 0) & (norm_b == 0), 1.0, 0.0))
    metrics["output_cosine"] = float(np.mean(cosine))
    return metrics


def score(outputs: np.ndarray, labels: np.ndarray | None = None,
          reference: np.ndarray | None = None) -> dict[str, float]:
    """`accuracy` with labels; `top1_agreement`, `output_mse`, `output_cosine` with reference outputs.

    `top1_agreement` is left out when the outputs are not class scores (last axis < 2 or 1-D).
    An empty dict means neither labels nor reference were given.
    """
    outputs = np.asarray(outputs)
    if len(outputs) == 0:
        raise WorkbenchError("no outputs to score")
    metrics: dict[str, float] = {}
    if labels is not None:
        metrics["accuracy"] = float(np.mean(answers(outputs, labels)))
    if reference is not None:
        metrics.update(_fidelity(outputs, np.asarray(reference)))
    return metrics


def _first_tensor(result: object) -> object:
    if isinstance(result, dict):
        result = next(iter(result.values()))
    while isinstance(result, list | tuple):
        result = result[0]
    return result


def torch_predict(module: nn.Module, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """The module's first output for every sample (eval mode, no_grad), float32.

    Inputs go in as float32 tensors shaped exactly like the dataset arrays. The module's train/eval
    mode is restored afterwards.
    """
    import torch

    if len(dataset) == 0:
        raise WorkbenchError(f"{dataset.name}: no samples to evaluate")
    was_training = module.training
    module.eval()
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                args = [torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32))
                        for x in dataset.inputs]
                out = _first_tensor(module(*args))
                parts.append(out.detach().float().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(parts).astype(np.float32, copy=False)
