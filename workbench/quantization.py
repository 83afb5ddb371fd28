"""Quantize an ONNX model with ONNX Runtime's own tools, one registered function per `QuantSpec.method`.

Contract: `quantize(model, spec, calib)` never modifies `model`; it returns a `QuantResult` whose model
ONNX Runtime's CPU provider can load and run, with the same graph inputs and outputs. `simulated` says
whether the artifact still stores/computes in float (method "fake"), `storage_bits` is what a real
deployment would store per weight (the parameter-weighted mean, rounded, when bits differ per layer),
`layer_bits` the bits each weight's values need where the file cannot show it (fake with per-layer bits),
and `notes` are plain-language remarks for users (why something is slow, simulated, or left in float,
and which layers got which bits). Every failure surfaces as one-line
`WorkbenchError("quantize(<method>): <reason>")`.

Per layer: `QuantSpec.exclude` keeps the matching weights (initializer names, matched like prune patterns by
`workbench.pruning._matches`) in float; `QuantSpec.overrides` gives them their own weight bits. A pattern
that matches no weight is an error. ORT's quantizers take nodes, not weights: the nodes reading an excluded
weight go into `nodes_to_exclude`, and weight_only runs MatMulNBitsQuantizer once per distinct bitwidth
with every other layer excluded.

Methods:
  static       int8 QDQ (S8S8) via `quantize_static`, activation ranges calibrated on `calib`.
  dynamic      int8 weights, activations quantized per batch at run time, via `quantize_dynamic`.
  weight_only  2/4/8-bit block-wise weights in `MatMulNBits` via `MatMulNBitsQuantizer`; Gemm layers
               (torch's nn.Linear) are first rewritten as MatMul(+Add) so the quantizer applies; Conv
               layers stay float.
  fp16         half-precision weights (and math, where kernels exist) via `convert_float_to_float16`;
               graph inputs/outputs stay float32.
  fake         weights (and optionally activations) rounded to N bits but kept in float32.

Non-goals: models over 2 GB (external data), control-flow subgraphs for "fake", QOperator format,
choosing a method for the user, and measuring speed or accuracy (other modules do that).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from workbench.data import Dataset, adapt_to_shape
from workbench.errors import WorkbenchError
from workbench.onnx_graph import COMPUTE_OPS, WeightTensor, op_coverage, weight_tensors
from workbench.onnx_rewrite import gemm_to_matmul, tensor_names, unique_name
from workbench.pruning import _matches, check_patterns, override_for
from workbench.specs import QuantSpec

logger = logging.getLogger(__name__)

ENTROPY_BINS = 512  # entropy histogram bins; the KL search costs ~bins², ORT's own default (128) searches nothing
CALIB_BATCH = 16  # small batches bound calibration memory; ranges do not depend on batch size
DYNAMIC_DEFAULT_OPS = ("MatMul", "Gemm")
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})
CONV_DYNAMIC_NOTE = "dynamic int8 Conv (ConvInteger) is typically 5–7× slower than float on CPU; prefer static"


@dataclass(frozen=True)
class QuantResult:
    """A quantized model plus what a user needs to read its numbers honestly."""

    model: onnx.ModelProto
    simulated: bool            # True when the artifact still computes/stores in float (fake-quant)
    storage_bits: int          # bits per weight a real deployment would store (mean when per layer)
    notes: tuple[str, ...]     # plain-language remarks shown to users
    layer_bits: dict[str, int] = field(default_factory=dict)   # fake, per layer: weight name -> value bits


Quantizer = Callable[[onnx.ModelProto, QuantSpec, Dataset], QuantResult]
QUANTIZERS: dict[str, Quantizer] = {}


def quantizer(method: str) -> Callable[[Quantizer], Quantizer]:
    """Register a function as the implementation of `QuantSpec.method == method`.

    Registered functions may edit the model they receive: `quantize` always hands them a copy.
    """
    def register(fn: Quantizer) -> Quantizer:
        QUANTIZERS[method] = fn
        return fn
    return register


def quantize(model: onnx.ModelProto, spec: QuantSpec, calib: Dataset) -> QuantResult:
    """Quantize a copy of `model` as `spec` says; calibration data is used by static and fake methods."""
    method = spec.method
    fn = QUANTIZERS.get(method)
    if fn is None:
        raise WorkbenchError(f"quantize({method}): unknown method (known: {', '.join(sorted(QUANTIZERS))})")
    try:
        _check_input(model)
        with _root_logging_preserved():
            result = fn(_copy(model), spec, calib)
        _check_loadable(result.model)
    except WorkbenchError as exc:
        raise WorkbenchError(f"quantize({method}): {exc}") from None
    except Exception as exc:  # ORT/onnx raise many types (Fail, ValidationError, ValueError, AssertionError ...)
        logger.debug("quantize(%s) failed", method, exc_info=True)
        raise WorkbenchError(f"quantize({method}): {_one_line(exc)}") from exc
    logger.info("quantize(%s): %s", method, "; ".join(result.notes))
    return result


# ---------------------------------------------------------------------------------------------- helpers


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text.startswith("[ONNXRuntimeError]"):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_input(model: onnx.ModelProto) -> None:
    if not isinstance(model, onnx.ModelProto):
        raise WorkbenchError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    if not model.graph.node:
        raise WorkbenchError("the model graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise WorkbenchError(f"not a valid ONNX model ({_one_line(exc)})") from None


def _session(model: onnx.ModelProto):  # -> onnxruntime.InferenceSession (imported lazily)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT warns about every unused initializer; users cannot act on that
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _check_loadable(model: onnx.ModelProto) -> None:
    """The contract promises an ORT-runnable artifact; fail here rather than at measurement time."""
    _session(model)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _feeds(model: onnx.ModelProto, data: Dataset, batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `data` shaped and typed for the model's graph inputs, matched by position."""
    inputs = _graph_inputs(model)
    if len(inputs) != len(data.inputs):
        names = ", ".join(i.name for i in inputs)
        raise WorkbenchError(f"{data.name}: has {len(data.inputs)} input array(s), the model takes "
                             f"{len(inputs)} ({names})")
    arrays, fixed_batch = {}, None
    for info, x in zip(inputs, data.inputs, strict=True):
        tensor_type = info.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if not tensor_type.HasField("shape"):
            arrays[info.name] = np.asarray(x).astype(dtype, copy=False)
            continue
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        arrays[info.name] = adapt_to_shape(np.asarray(x), shape, dtype, data.name)
        if shape and isinstance(shape[0], int) and shape[0] > 0:
            fixed_batch = shape[0]
    # A model exported with a fixed batch size only accepts exactly that many samples per run.
    step = fixed_batch or batch
    if fixed_batch and len(data) < fixed_batch:
        raise WorkbenchError(f"{data.name}: {len(data)} samples, fewer than the model's fixed batch {fixed_batch}")
    for start in range(0, len(data) - (len(data) % step if fixed_batch else 0), step):
        yield {name: a[start:start + step] for name, a in arrays.items()}


def _calibration_reader(feeds: Iterator[dict[str, np.ndarray]]):  # -> CalibrationDataReader
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = feeds

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return _Reader()


@contextlib.contextmanager
def _root_logging_preserved() -> Iterator[None]:
    """ORT's quantization code logs through `logging.info(...)` on the root logger, which silently calls
    `basicConfig()` and so installs a stderr handler in the host application; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _stdout_to_log() -> Iterator[None]:
    """ORT's histogram calibrators print progress to stdout; keep the CLI's output ours (log it instead)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.debug("onnxruntime: %s", buffer.getvalue().strip())


def _float_ops_note(model: onnx.ModelProto) -> tuple[str, ...]:
    cov = op_coverage(model)
    if cov.float_ops == 0:
        return ()
    names = ", ".join(cov.float_names[:5]) + (" ..." if cov.float_ops > 5 else "")
    return (f"{cov.float_ops} of {cov.quantized + cov.float_ops} compute op(s) still run in float: {names}",)


# ----------------------------------------------------------------------------------------- per layer


def layer_bits(model: onnx.ModelProto, spec: QuantSpec) -> dict[str, int | None]:
    """Per weight of `model`: its bits (the first matching override, else `weight_bits`), or None where an
    `exclude` pattern keeps it in float. A pattern that matches no weight is an error naming the layers."""
    names = [w.name for w in weight_tensors(model)]
    check_patterns(names, "exclude", spec.exclude)
    check_patterns(names, "overrides", spec.overrides)
    return {n: None if _matches(n, spec.exclude) else
            override_for(n, spec.overrides, spec.weight_bits) for n in names}


def _per_layer(spec: QuantSpec) -> bool:
    return bool(spec.exclude or spec.overrides)


def _short(name: str) -> str:
    return name.removesuffix(".weight")


def _layer_notes(plan: dict[str, int | None]) -> tuple[str, ...]:
    """Which layers stayed float and, when bits differ, which got which bits."""
    by_bits: dict[int, list[str]] = {}
    for name, bits in plan.items():
        if bits is not None:
            by_bits.setdefault(bits, []).append(_short(name))
    floats = [_short(n) for n, b in plan.items() if b is None]
    notes = [f"kept in float (exclude): {', '.join(floats)}"] if floats else []
    if len(by_bits) > 1:
        notes.append("per-layer bits: " + "; ".join(f"{b}-bit: {', '.join(names)}"
                                                       for b, names in sorted(by_bits.items(), reverse=True)))
    return tuple(notes)


def _mean_bits(weights: list[WeightTensor], bits: dict[str, int] | None = None) -> int:
    """Parameter-weighted mean bits per weight, rounded: `bits[name]`, else each tensor's stored width."""
    params = sum(w.params for w in weights)
    total = sum(w.params * (bits or {}).get(w.name, w.bits) for w in weights)
    return round(total / params) if params else 32


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: ORT's quantizers exclude nodes by name."""
    taken = tensor_names(model.graph)
    for node in model.graph.node:
        if not node.name:
            node.name = unique_name(f"{node.op_type}_node", taken)


def _readers(model: onnx.ModelProto, weights: set[str]) -> list[str]:
    """Names of the compute nodes whose weight input is one of `weights`. ORT's dynamic mode rewrites
    Gemm as MatMul named '<name>_MatMul' before it looks at the exclusions, so both names are listed."""
    names = []
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS and len(node.input) > 1 and node.input[1] in weights:
            names += [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
    return names


def _float_nodes(preprocessed: Path, plan: dict[str, int | None]) -> list[str]:
    """The nodes of the graph ORT quantizes that read an excluded weight."""
    floats = {n for n, b in plan.items() if b is None}
    return _readers(onnx.load(str(preprocessed)), floats) if floats else []


# ------------------------------------------------------------------------------------ static & dynamic


def _preprocessed(model: onnx.ModelProto, workdir: Path) -> Path:
    """ORT's recommended pre-pass (shape inference + basic optimizations); optional, so never fatal."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, out = workdir / "float.onnx", workdir / "preprocessed.onnx"
    onnx.save(model, src)
    try:
        quant_pre_process(str(src), str(out))
        return out
    except Exception as exc:  # symbolic shape inference fails on some graphs; quantization still works
        logger.warning("quantization pre-processing skipped: %s", _one_line(exc))
        return src


def _even_batch(n: int, limit: int) -> int:
    """The largest batch size <= limit that divides n, so every batch has the same shape."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _entropy_overrides(src: Path, feeds: Iterator[dict[str, np.ndarray]], op_types: list[str] | None,
                       workdir: Path) -> dict[str, list[dict[str, np.floating]]]:
    """KL-divergence (entropy) activation ranges, as `TensorQuantOverrides` rmin/rmax for quantize_static.

    quantize_static cannot pass `num_bins` to its entropy calibrator, and with its defaults (128 bins,
    128 quantized bins) the KL search has a single candidate: the full range, i.e. MinMax. Calibrating
    here with a finer histogram gives a real threshold search.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(src, op_types, augmented_model_path=workdir / "augmented.onnx",
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128})
    calibrator.collect_data(_calibration_reader(feeds))
    ranges = calibrator.compute_data()
    overrides = {}
    for name in ranges:
        lowest, highest = ranges[name].range_value
        # numpy scalars, not floats: ORT's compute_scale_zp reads `.dtype` from the override values
        overrides[name] = [{"rmin": np.min(lowest), "rmax": np.max(highest)}]
    return overrides


@quantizer("static")
def _static(model: onnx.ModelProto, spec: QuantSpec, calib: Dataset) -> QuantResult:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # Entropy ranges are computed separately and passed as overrides; quantize_static then only needs MinMax.
    method = CalibrationMethod.Percentile if spec.calibration == "percentile" else CalibrationMethod.MinMax
    samples = calib.take(spec.calib_samples)
    op_types = list(spec.op_types) if spec.op_types else None
    # ORT's histogram calibrators stack all batches with np.asarray, which fails on a short last batch.
    batch = CALIB_BATCH if spec.calibration == "minmax" else _even_batch(len(samples), CALIB_BATCH)
    _name_nodes(model)
    plan = layer_bits(model, spec)
    with tempfile.TemporaryDirectory(prefix="workbench-quant-") as tmp, _stdout_to_log():
        src, out = _preprocessed(model, Path(tmp)), Path(tmp) / "static.onnx"
        extra = {}
        if spec.calibration == "entropy":
            extra["TensorQuantOverrides"] = _entropy_overrides(src, _feeds(model, samples, batch), op_types, Path(tmp))
        quantize_static(str(src), str(out), _calibration_reader(_feeds(model, samples, batch)),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=spec.per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        nodes_to_exclude=_float_nodes(src, plan), extra_options=extra)
        result = onnx.load(str(out))
    if op_coverage(result).quantized == 0:
        raise WorkbenchError("no operator was quantized (check op_types)")
    notes = [f"static int8 (QDQ, S8S8): activation ranges from {len(samples)} calibration samples ({spec.calibration})"]
    if spec.calibration != "minmax":
        notes.append(f"{spec.calibration} calibration keeps all calibration activations in memory; "
                     "lower calib_samples if it runs out of memory")
    return _int8_result(result, spec, plan, notes)


def _int8_result(result: onnx.ModelProto, spec: QuantSpec, plan: dict[str, int | None],
                 notes: list[str]) -> QuantResult:
    storage = _mean_bits(weight_tensors(result)) if _per_layer(spec) else 8
    return QuantResult(result, False, storage, (*notes, *_layer_notes(plan), *_float_ops_note(result)))


@quantizer("dynamic")
def _dynamic(model: onnx.ModelProto, spec: QuantSpec, calib: Dataset) -> QuantResult:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = list(spec.op_types or DYNAMIC_DEFAULT_OPS)
    _name_nodes(model)
    plan = layer_bits(model, spec)
    exclude: list[str] = []
    if "Gemm" in op_types and "MatMul" not in op_types:
        # ORT's dynamic mode turns every Gemm into MatMul before matching op types; quantize only those.
        op_types.append("MatMul")
        exclude = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    with tempfile.TemporaryDirectory(prefix="workbench-quant-") as tmp:
        src, out = _preprocessed(model, Path(tmp)), Path(tmp) / "dynamic.onnx"
        quantize_dynamic(str(src), str(out), op_types_to_quantize=op_types, per_channel=spec.per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude + _float_nodes(src, plan))
        result = onnx.load(str(out))
    if op_coverage(result).quantized == 0:
        raise WorkbenchError(f"no operator of type {', '.join(sorted(set(op_types)))} was quantized")
    notes = ["dynamic int8: weights stored int8, activation ranges computed per batch at run time "
             "(outputs vary slightly with batch composition)"]
    if "Conv" in op_types:
        notes.append(CONV_DYNAMIC_NOTE)
    return _int8_result(result, spec, plan, notes)


# ------------------------------------------------------------------------------------------ weight-only


def _nbits_quantizer_class() -> type:
    # Importing this module calls logging.basicConfig(level=INFO): without the guard, every node it
    # quantizes would be logged to stderr during this very call.
    with _root_logging_preserved():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    return MatMulNBitsQuantizer


def _matmul_weights(model: onnx.ModelProto, before: dict[str, str]) -> dict[str, str]:
    """MatMul node name -> the weight it multiplies by, as named before `gemm_to_matmul`: `before` maps each
    MatMul/Gemm output to its weight, and a rewritten Gemm's output is its MatMul's, or the Add's after it."""
    added = {i: node.output[0] for node in model.graph.node if node.op_type == "Add" for i in node.input}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            weight = before.get(node.output[0]) or before.get(added.get(node.output[0], ""))
            out[node.name] = weight or node.input[1]
    return out


@quantizer("weight_only")
def _weight_only(model: onnx.ModelProto, spec: QuantSpec, calib: Dataset) -> QuantResult:
    wanted = set(spec.op_types or ("MatMul", "Gemm"))
    label = "per-layer bits" if spec.overrides else f"int{spec.weight_bits}"
    notes = [f"weight-only {label} (MatMulNBits, block {spec.block_size}, symmetric, accuracy_level 4): "
             "pays off only for big MatMul layers at batch 1 (memory-bound); small layers or large batches can "
             "be slower than float"]
    ignored = sorted(wanted - {"Gemm", "MatMul", *(("Gather",) if spec.weight_bits == 4 else ())})
    if ignored:
        notes.append(f"MatMulNBits covers MatMul/Gemm (and Gather at 4 bits); ignored: {', '.join(ignored)}")
    _name_nodes(model)
    plan = layer_bits(model, spec)
    exclude = [] if "MatMul" in wanted else [n.name for n in model.graph.node if n.op_type == "MatMul"]
    before = {n.output[0]: n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1}
    if "Gemm" in wanted:
        gemm_to_matmul(model)  # nn.Linear exports as Gemm(transB=1), which MatMulNBits does not cover
    weights = _matmul_weights(model, before)
    node_bits = {node: plan.get(weight, spec.weight_bits) for node, weight in weights.items()}
    model = _nbits_passes(model, node_bits, exclude, spec, gather="Gather" in wanted and spec.weight_bits == 4)
    if not any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in model.graph.node):
        raise WorkbenchError("no MatMul/Gemm with a constant 2-D weight to quantize; use 'static' or 'fake'")
    storage = _mean_bits(weight_tensors(model)) if _per_layer(spec) else spec.weight_bits
    covered = {w: plan[w] for w in weights.values() if w in plan}   # Conv layers stay float whatever the plan
    return QuantResult(model, False, storage, (*notes, *_layer_notes(covered), *_float_ops_note(model)))


def _nbits_passes(model: onnx.ModelProto, node_bits: dict[str, int | None], exclude: list[str], spec: QuantSpec,
                  gather: bool) -> onnx.ModelProto:
    """MatMulNBitsQuantizer takes one `bits`: one pass per bit width, every other node excluded (a node
    quantized in an earlier pass is MatMulNBits by then, which later passes leave alone)."""
    quantizer_cls = _nbits_quantizer_class()
    widths = sorted({b for b in node_bits.values() if b is not None} | ({4} if gather else set()))
    for bits in widths or [spec.weight_bits]:
        others = [n for n, b in node_bits.items() if b != bits]
        op_types = ("MatMul", "Gather") if gather and bits == 4 else ("MatMul",)
        nbits = quantizer_cls(model, bits=bits, block_size=spec.block_size, is_symmetric=True, accuracy_level=4,
                              nodes_to_exclude=exclude + others, op_types_to_quantize=op_types)
        nbits.process()
        model = nbits.model.model
    return model


# ------------------------------------------------------------------------------------------------ fp16


def _fp16_weights_at_runtime(model: onnx.ModelProto) -> tuple[int, int]:
    """(fp16 initializers after ORT's CPU graph optimizations, fp16 initializers before).

    Where the CPU provider lacks fp16 kernels it inserts Casts and constant-folds them, i.e. turns the
    weights back into float32 at load time; reading the optimized graph tells us instead of guessing.
    """
    import onnxruntime as ort

    def half(m: onnx.ModelProto) -> int:
        return sum(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)

    with tempfile.TemporaryDirectory(prefix="workbench-quant-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return half(onnx.load(options.optimized_model_filepath)), half(model)


@quantizer("fp16")
def _fp16(model: onnx.ModelProto, spec: QuantSpec, calib: Dataset) -> QuantResult:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    result = convert_float_to_float16(model, keep_io_types=True)
    kept, total = _fp16_weights_at_runtime(result)
    if kept == 0:
        note = ("fp16 halves the file only: ONNX Runtime's CPU provider has no fp16 kernels for these ops here, "
                "so it casts the weights back to float32 when loading; memory and speed stay as float32")
    else:
        note = (f"fp16 halves weight storage; {kept} of {total} fp16 tensor(s) stay fp16 in ONNX Runtime's CPU "
                "session (the rest are cast back to float32); speed-up depends on this CPU's fp16 support")
    return QuantResult(result, False, 16, (note,))


# ------------------------------------------------------------------------------------------------ fake


def fake_quantize_weight(w: np.ndarray, bits: int, axis: int | None = None) -> np.ndarray:
    """Symmetric round-to-nearest onto 2^(bits-1)-1 levels per side, per tensor or per slice of `axis`.

    Zeros map to exactly zero (pruned weights stay pruned); the result keeps `w`'s float dtype.
    """
    qmax = 2 ** (bits - 1) - 1
    w64 = w.astype(np.float64)
    reduce = None if axis is None else tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.max(np.abs(w64), axis=reduce, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return (np.clip(np.round(w64 / scale), -qmax, qmax) * scale).astype(w.dtype)


def _channel_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a compute op's weight input."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1 if node.op_type == "MatMul" else 0  # MatMul weight is [..., K, N]; Conv is [M, C, ...]


def _fake_quantize_weights(model: onnx.ModelProto, plan: dict[str, int | None], per_channel: bool,
                           ops: frozenset[str]) -> dict[str, int]:
    """Round each weight to its bits in `plan` (None: left float); returns the bits of those rounded."""
    inits = {t.name: t for t in model.graph.initializer}
    direct = {n.input[1]: n for n in model.graph.node if n.op_type in ops and len(n.input) > 1}
    rounded = {}
    for weight in weight_tensors(model):
        tensor, bits = inits.get(weight.name), plan.get(weight.name)
        if weight.op_type not in ops or tensor is None or tensor.data_type not in FLOAT_TYPES or bits is None:
            continue
        array = numpy_helper.to_array(tensor)
        # A weight reached through Transpose/Cast has no reliable channel axis; fall back to per-tensor.
        axis = _channel_axis(direct[weight.name], array.ndim) if per_channel and weight.name in direct else None
        tensor.CopyFrom(numpy_helper.from_array(fake_quantize_weight(array, bits, axis), weight.name))
        rounded[weight.name] = bits
    return rounded


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted, so one pass suffices
        if node.op_type == "Constant" or (node.input and all(not i or i in constant for i in node.input)):
            constant.update(node.output)
    return constant


def _activation_targets(model: onnx.ModelProto, ops: frozenset[str]) -> list[str]:
    """Non-constant data inputs (A, and B of activation-activation MatMuls) of the `ops` nodes."""
    constant = _constant_tensors(model.graph)
    targets: list[str] = []
    for node in model.graph.node:
        if node.op_type in ops:
            targets.extend(n for n in node.input[:2] if n and n not in constant and n not in targets)
    return targets


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}


def _activation_ranges(model: onnx.ModelProto, names: list[str], types: dict[str, int],
                       calib: Dataset) -> dict[str, tuple[float, float]]:
    """Min/max of each tensor over `calib`, by exposing the tensors as extra graph outputs."""
    probe = _copy(model)
    exposed = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    for name in names:
        if name not in exposed:
            probe.graph.output.append(helper.make_tensor_value_info(name, types.get(name) or onnx.TensorProto.FLOAT,
                                                                    None))
    session = _session(probe)
    outputs = [o.name for o in session.get_outputs()]
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for feed in _feeds(model, calib, CALIB_BATCH):
        values = {**dict(zip(outputs, session.run(outputs, feed), strict=True)), **feed}
        for name in names:
            value = values[name]
            lo[name] = min(lo[name], float(np.min(value)))
            hi[name] = max(hi[name], float(np.max(value)))
    return {name: (lo[name], hi[name]) for name in names}


def _fake_quant_nodes(x: str, lo: float, hi: float, bits: int, dtype: np.dtype, taken: set[str],
                      graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], str]:
    """Asymmetric uint fake-quant from standard ops: (clip(round(x/s)+zp, 0, 2^b-1) - zp) * s."""
    levels = 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exactly representable (padding, ReLU zeros)
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero_point = float(np.clip(np.round(-lo / scale), 0, levels))
    base = f"{x}_fq{bits}"
    consts = {}
    for key, value in (("scale", scale), ("zp", zero_point), ("qmin", 0.0), ("qmax", float(levels))):
        consts[key] = unique_name(f"{base}_{key}", taken)
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), consts[key]))
    steps = [("Div", [x, consts["scale"]]), ("Round", []), ("Add", [consts["zp"]]),
             ("Clip", [consts["qmin"], consts["qmax"]]), ("Sub", [consts["zp"]]), ("Mul", [consts["scale"]])]
    nodes, current = [], x
    for i, (op, args) in enumerate(steps):
        out = unique_name(f"{base}_{op.lower()}", taken)
        inputs = args if i == 0 else [current, *args]
        nodes.append(helper.make_node(op, inputs, [out], name=unique_name(f"{base}_{op}", taken)))
        current = out
    return nodes, current


def _insert_activation_fake_quant(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                                  types: dict[str, int], bits: int, ops: frozenset[str]) -> int:
    graph, taken = model.graph, tensor_names(model.graph)
    replaced: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type in ops:
            for i, name in enumerate(node.input[:2]):
                if name not in ranges:
                    continue
                if name not in replaced:  # one shared fake-quant chain per tensor, placed before first use
                    dtype = helper.tensor_dtype_to_np_dtype(types.get(name) or onnx.TensorProto.FLOAT)
                    chain, replaced[name] = _fake_quant_nodes(name, *ranges[name], bits, dtype, taken, graph)
                    new_nodes.extend(chain)
                node.input[i] = replaced[name]
        new_nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    return len(replaced)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _fake_quantize_activations(model: onnx.ModelProto, bits: int, ops: frozenset[str], samples: Dataset) -> int:
    if _opset(model) < 11:  # Round and Clip-with-inputs arrived in opset 11
        raise WorkbenchError(f"fake activation quantization needs opset >= 11, the model has {_opset(model)}")
    types = _tensor_types(model)
    targets = [t for t in _activation_targets(model, ops) if types.get(t, onnx.TensorProto.FLOAT) in FLOAT_TYPES]
    if not targets:
        return 0
    ranges = _activation_ranges(model, targets, types, samples)
    return _insert_activation_fake_quant(model, ranges, types, bits, ops)


@quantizer("fake")
def _fake(model: onnx.ModelProto, spec: QuantSpec, calib: Dataset) -> QuantResult:
    ops = COMPUTE_OPS & frozenset(spec.op_types) if spec.op_types else COMPUTE_OPS
    plan = layer_bits(model, spec)
    weights = weight_tensors(model)
    rounded = _fake_quantize_weights(model, plan, spec.per_channel, ops)
    count = len(rounded)
    granularity = "per channel" if spec.per_channel else "per tensor"
    if spec.overrides:
        head = (f"simulated: values rounded to per-layer bits but stored and computed in float32 ({count} weight "
                f"tensor(s), symmetric {granularity}); the minimum storage counts each layer at its bits")
    else:
        head = (f"simulated: values rounded to {spec.weight_bits} bits but stored and computed in float32; "
                f"no ORT kernel for {spec.weight_bits}-bit ({count} weight tensor(s), symmetric {granularity})")
    notes = [head, *_layer_notes({w.name: plan[w.name] for w in weights if w.op_type in ops})]
    inserted = 0
    if spec.activation_bits is not None:
        samples = calib.take(spec.calib_samples)
        inserted = _fake_quantize_activations(model, spec.activation_bits, ops, samples)
        notes.append(f"activations into {inserted} tensor(s) fake-quantized to {spec.activation_bits}-bit "
                     f"asymmetric uint, min/max ranges from {len(samples)} calibration samples")
    if count == 0 and inserted == 0:
        raise WorkbenchError(f"nothing to quantize: no float weight or activation of {', '.join(sorted(ops))}")
    if not _per_layer(spec):
        return QuantResult(model, True, spec.weight_bits, tuple(notes))
    # weights left float (excluded, or outside op_types) need their 32 bits in the size estimate
    value_bits = {w.name: rounded.get(w.name, w.bits) for w in weights}
    return QuantResult(model, True, _mean_bits(weights, value_bits), tuple(notes), value_bits)
