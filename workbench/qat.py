"""Quantization-aware training (the "qat" stage): train a torch model with its Linear/Conv weights
fake-quantized, then export ONNX in QDQ form with the weights stored as integers.

- Weights: symmetric round-to-nearest onto 2^(bits-1)-1 levels per side (the levels of the "fake"
  quantize method), one scale per output channel (`per_channel`) or per tensor, taken from the current
  weights at every step as a clipping range of 0.3..1.0 x max|w|; the ratio with the least squared
  rounding error is searched again every 20 training steps. Gradients pass rounding and clipping
  unchanged (straight-through estimator). Zero weights stay exactly zero, and pruning masks are
  re-applied after every optimizer step (workbench.finetune), so a pruned model stays pruned.
- Activations (`activation_bits: 8`): the input of every quantized layer is fake-quantized to uint8
  (asymmetric, zero exactly representable); ranges come from one pass over the training data, then
  follow an exponential moving average of each batch's min/max while training.
- Export: the trained weights are written back as code x scale, exported (workbench.export), and each
  weight initializer is replaced by its integer codes + DequantizeLinear, found by name or, where the
  exporter renamed/transposed it, by value; a weight whose export changed by a per-channel factor (a
  BatchNorm folded in) keeps its codes with rescaled per-channel scales.
- Storage and kernels (checked with onnxruntime 1.32): without activation quantization, weights of
  <= 4 bits are stored as ONNX INT4 (opset 21); ONNX Runtime dequantizes them on every call before a
  float Gemm/Conv, and fuses DequantizeLinear -> MatMul into MatMulNBits. With int8 activations the
  weights go in int8 containers and Gemm/Conv biases become int32 (explicit zero points throughout):
  ONNX Runtime fuses only that form into integer kernels (QGemm, QLinearConv, MatMulIntegerToFloat).
  The notes say which kernels ONNX Runtime's optimized graph really contains.

Non-goals: learned weight scales, ONNX input models (QAT needs training), per-layer bitwidths.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from workbench.errors import WorkbenchError
from workbench.models import copy_module, needs_layer_modules
from workbench.onnx_graph import COMPUTE_OPS, QUANTIZED_KERNEL_OPS
from workbench.onnx_rewrite import tensor_names, unique_name
from workbench.specs import FinetuneSpec, QATSpec
from workbench.stages import Context, Variant, runner

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)
INT4_OPSET, INT4_IR = 21, 10     # ONNX INT4 tensors and DequantizeLinear on them arrived in opset 21 / IR 10
EMA = 0.1                        # weight of each training batch's min/max in the activation ranges
ACT_LEVELS = 255                 # uint8 activations
CLIP_RATIOS = tuple(0.3 + 0.05 * i for i in range(15))   # candidate weight ranges, fractions of max|w|
RATIO_REFRESH = 20               # training steps between two searches of the clipping ratios


# --- torch: fake-quantized training ----------------------------------------------------------------

@dataclass
class ActRange:
    """The observed range of one layer's input and its uint8 quantization parameters."""

    lo: float = math.inf
    hi: float = -math.inf

    def update(self, lo: float, hi: float, weight: float) -> None:
        if math.isinf(self.lo):
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = self.lo + weight * (lo - self.lo), self.hi + weight * (hi - self.hi)

    def qparams(self) -> tuple[float, int]:
        """(float32-exact scale, uint8 zero point); zero is always exactly representable."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        scale = float(np.float32((hi - lo) / ACT_LEVELS)) if hi > lo else 1.0
        return scale, int(np.clip(round(-lo / scale), 0, ACT_LEVELS))


@dataclass
class QuantLayer:
    """A Linear/Conv layer under QAT: its forward fake-quantizes the weight (and input) while attached."""

    name: str
    layer: Any                       # the torch module
    bits: int
    per_channel: bool
    act: ActRange | None = None
    observing: bool = False          # collect exact min/max, no activation rounding (the first pass)
    ratio: Any = None                # clipping ratio per channel (a tensor), see clip_ratio
    steps: int = 0                   # training forward passes so far


@dataclass(frozen=True)
class Codes:
    """One layer's quantized weight as torch holds it: weight == q * scale (scale per output channel)."""

    layer: str
    q: np.ndarray                    # int8 codes, torch layout (out, in, ...)
    scale: np.ndarray                # float32, shape (out,) or () per tensor
    act: tuple[float, int] | None    # uint8 (scale, zero point) of the layer's input, when quantized


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _channels(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """`w` as (channels, values): one row per output channel, or a single row."""
    return w.detach().flatten(1) if per_channel else w.detach().reshape(1, -1)


def clip_ratio(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Per channel (or one), the fraction of max|w| among CLIP_RATIOS whose range rounds `w` with the least
    squared error. At 2-3 bits clipping a few large weights beats max-abs scaling by far (digits-mlp,
    2 bits, no training: 80% accuracy instead of 11%)."""
    import torch

    qmax, flat = _qmax(bits), _channels(w, per_channel)
    ratios = torch.tensor(CLIP_RATIOS, dtype=w.dtype)
    steps = (ratios[:, None] * flat.abs().amax(dim=1)[None, :] / qmax).clamp_min(torch.finfo(w.dtype).tiny)
    error = ((torch.clamp(torch.round(flat / steps[..., None]), -qmax, qmax) * steps[..., None] - flat) ** 2).sum(-1)
    return ratios[error.argmin(0)]


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool, ratio: torch.Tensor) -> torch.Tensor:
    """ratio x max|w| / qmax per output channel (dim 0) or per tensor, broadcastable to `w`; 1 for zeros."""
    import torch

    amax = _channels(w, per_channel).abs().amax(dim=1)
    scale = torch.where(amax > 0, ratio * amax / _qmax(bits), torch.ones_like(amax))
    return scale.reshape(-1, *([1] * (w.dim() - 1))) if per_channel else scale[0]


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool,
                    ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes as float, scale): w ~ codes * scale."""
    import torch

    scale = weight_scale(w, bits, per_channel, ratio)
    return torch.clamp(torch.round(w / scale), -_qmax(bits), _qmax(bits)), scale


def fake_quant_weight(w: torch.Tensor, bits: int, per_channel: bool, ratio: torch.Tensor) -> torch.Tensor:
    """Rounded weight; the gradient passes rounding and clipping unchanged (straight-through estimator)."""
    import torch

    codes, scale = quantize_weight(w, bits, per_channel, ratio)
    wq = codes * scale
    return w + (wq - w).detach() if w.requires_grad and torch.is_grad_enabled() else wq


def _fake_quant_input(x: torch.Tensor, state: QuantLayer) -> torch.Tensor:
    import torch

    act = state.act
    if state.observing or state.layer.training:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if state.observing:
            act.lo, act.hi = min(act.lo, lo), max(act.hi, hi)
            return x
        act.update(lo, hi, EMA)
    scale, zero_point = act.qparams()
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, ACT_LEVELS)


def _ratio(state: QuantLayer) -> torch.Tensor:
    """The layer's clipping ratios, searched again every RATIO_REFRESH training steps (the search costs
    ~15 roundings of the weight, too much for every step)."""
    if state.ratio is None or (state.layer.training and state.steps % RATIO_REFRESH == 0):
        state.ratio = clip_ratio(state.layer.weight, state.bits, state.per_channel)
    state.steps += state.layer.training
    return state.ratio


def _forward(state: QuantLayer):
    import torch.nn.functional as F
    from torch import nn

    layer = state.layer

    def forward(x: torch.Tensor) -> torch.Tensor:
        if state.act is not None:
            x = _fake_quant_input(x, state)
        w = fake_quant_weight(layer.weight, state.bits, state.per_channel, _ratio(state))
        if isinstance(layer, nn.Linear):
            return F.linear(x, w, layer.bias)
        return layer._conv_forward(x, w, layer.bias)

    return forward


def _excluded(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(f"{name}.weight", p)),
                None)


def attach(module: nn.Module, spec: QATSpec) -> tuple[list[QuantLayer], dict[str, str]]:
    """Make every Linear/Conv layer of `module` (in place) train fake-quantized; returns the layers and
    the skipped ones with the reason. Parameter names do not change, so pruning masks still apply."""
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    layers, skipped = [], {}
    for name, m in module.named_modules():
        if type(m) not in kinds:  # exact types: subclasses (e.g. attention's out_proj) may bypass forward
            if isinstance(m, kinds):
                skipped[name] = f"{type(m).__name__} is a subclass whose forward may not use its weight"
            continue
        pattern = _excluded(name, spec.exclude)
        if pattern:
            skipped[name] = f"excluded by pattern '{pattern}'"
            continue
        state = QuantLayer(name, m, spec.weight_bits, spec.per_channel,
                           ActRange() if spec.activation_bits == 8 else None)
        m.forward = _forward(state)
        layers.append(state)
    if not layers:
        raise WorkbenchError("qat: no Linear/Conv layer to quantize (check exclude)")
    return layers, skipped


def observe(module: nn.Module, layers: list[QuantLayer], data, batch_size: int = 256) -> None:
    """Set the activation ranges to the exact min/max over `data` (weights already fake-quantized)."""
    from workbench.evaluate import torch_predict

    for state in layers:
        state.observing = True
    try:
        torch_predict(module, data, batch_size)
    finally:
        for state in layers:
            state.observing = False


def detach(layers: list[QuantLayer]) -> list[Codes]:
    """Write each layer's quantized weight (q * scale) into the module, restore its plain forward, and
    return the integer codes."""
    import torch

    codes = []
    with torch.no_grad():
        for state in layers:
            w = state.layer.weight
            q, scale = quantize_weight(w, state.bits, state.per_channel, _ratio(state))
            w.copy_(q * scale)
            del state.layer.forward
            act = state.act.qparams() if state.act is not None else None
            codes.append(Codes(state.name, q.to(torch.int8).numpy(), scale.flatten().numpy().astype(np.float32)
                               if state.per_channel else np.float32(scale.item()), act))
    return codes


# --- ONNX: integer weights + DequantizeLinear -------------------------------------------------------

@dataclass
class _Placed:
    codes: Codes
    q: np.ndarray          # codes in the initializer's layout
    axis: int              # output-channel axis in that layout
    scale: np.ndarray      # per-channel scales that reproduce the exported values
    nodes: list = field(default_factory=list)


def _fit(w: np.ndarray, c: Codes) -> tuple[np.ndarray, int, np.ndarray] | None:
    """(codes, channel axis, scales) reproducing the exported weight `w`, or None when `w` is not this
    layer's weight. Tries torch's layout, then the transpose (MatMul weights are [in, out])."""
    layouts = [(c.q, 0), (c.q.T, 1)] if c.q.ndim == 2 else [(c.q, 0)]
    for q, axis in layouts:
        if q.shape != w.shape:
            continue
        shape = [1] * w.ndim
        shape[axis] = -1
        torch_scale = np.broadcast_to(c.scale, (w.shape[axis],)).astype(np.float32)
        if np.array_equal(q * torch_scale.reshape(shape), w):
            return q, axis, torch_scale
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        q64, w64 = q.astype(np.float64), w.astype(np.float64)
        den = np.sum(q64 * q64, axis=reduce)
        scale = np.where(den > 0, np.sum(w64 * q64, axis=reduce) / np.maximum(den, 1), 1.0).astype(np.float32)
        if np.allclose(q * scale.reshape(shape), w, rtol=1e-5, atol=1e-6 * float(np.abs(w).max() or 1)):
            return q, axis, scale  # a per-channel factor (BatchNorm) was folded into the weight at export
    return None


def _place(model: onnx.ModelProto, codes: list[Codes]) -> tuple[dict[str, _Placed], list[str]]:
    """Which initializer holds each layer's weight: by name first, then by value. Returns the placements
    by initializer name and the layers whose exported weight could not be found."""
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS and len(node.input) > 1 and node.input[1] in inits:
            users.setdefault(node.input[1], []).append(node)
    arrays = {name: numpy_helper.to_array(inits[name]) for name in users}
    placed, missing = {}, []
    for c in codes:
        own = f"{c.layer}.weight"
        order = [own] if own in arrays else []
        order += [n for n in arrays if n != own and n not in placed]
        for name in order:
            fit = _fit(arrays[name], c) if name not in placed else None
            if fit is not None:
                placed[name] = _Placed(c, *fit, users[name])
                break
        else:
            missing.append(c.layer)
    return placed, missing


def _int_tensor(q: np.ndarray, name: str, int4: bool) -> onnx.TensorProto:
    if int4:
        import ml_dtypes  # installed with onnx; numpy_helper packs int4 two per byte

        return numpy_helper.from_array(q.astype(ml_dtypes.int4), name)
    return numpy_helper.from_array(q.astype(np.int8), name)


def _dq_weight(graph: onnx.GraphProto, name: str, p: _Placed, int4: bool, taken: set[str]) -> onnx.NodeProto:
    """Replace float initializer `name` by codes + scale; the DequantizeLinear output keeps the name."""
    base = f"{p.codes.layer}.weight"  # named after the torch layer: the exporter may have renamed the weight
    q_name, s_name = unique_name(f"{base}_quantized", taken), unique_name(f"{base}_scale", taken)
    z_name = unique_name(f"{base}_zero_point", taken)
    per_tensor = not p.codes.scale.ndim and np.all(p.scale == p.scale[0])
    scale = np.asarray(p.scale[0] if per_tensor else p.scale, dtype=np.float32)
    # an explicit zero point: without one, ONNX Runtime does not fuse QDQ into integer kernels
    graph.initializer.extend([_int_tensor(p.q, q_name, int4), numpy_helper.from_array(scale, s_name),
                              _int_tensor(np.zeros(scale.shape, np.int8), z_name, int4)])
    attrs = {} if per_tensor else {"axis": p.axis}
    return helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [name],
                            name=unique_name(f"{name}_DequantizeLinear", taken), **attrs)


def _qdq_input(graph: onnx.GraphProto, node: onnx.NodeProto, act: tuple[float, int],
               taken: set[str]) -> list[onnx.NodeProto]:
    """QuantizeLinear -> DequantizeLinear (uint8) on the node's data input, which then reads the result."""
    x, base = node.input[0], node.name or node.output[0]
    s_name, z_name = unique_name(f"{base}_input_scale", taken), unique_name(f"{base}_input_zero_point", taken)
    graph.initializer.extend([numpy_helper.from_array(np.asarray(act[0], np.float32), s_name),
                              numpy_helper.from_array(np.asarray(act[1], np.uint8), z_name)])
    xq, xd = unique_name(f"{base}_input_quantized", taken), unique_name(f"{base}_input_dequantized", taken)
    node.input[0] = xd
    return [helper.make_node("QuantizeLinear", [x, s_name, z_name], [xq], name=unique_name(f"{base}_Q", taken)),
            helper.make_node("DequantizeLinear", [xq, s_name, z_name], [xd], name=unique_name(f"{base}_DQ", taken))]


def _dq_bias(graph: onnx.GraphProto, node: onnx.NodeProto, p: _Placed, inits: dict[str, onnx.TensorProto],
             taken: set[str]) -> list[onnx.NodeProto]:
    """A float Gemm/Conv bias as int32 at scale input_scale x weight_scale: ONNX Runtime fuses a QDQ
    Gemm/Conv into an integer kernel only with such a bias (the rounding is below 1e-3 of a weight step)."""
    bias = inits.get(node.input[2]) if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 else None
    if bias is None or bias.data_type != onnx.TensorProto.FLOAT:
        return []
    b = numpy_helper.to_array(bias)
    scale = (np.float32(p.codes.act[0]) * p.scale).astype(np.float32)
    if scale.shape != b.shape:
        return []
    base = node.name or node.output[0]
    q_name, s_name = unique_name(f"{base}_bias_quantized", taken), unique_name(f"{base}_bias_scale", taken)
    z_name, out_name = unique_name(f"{base}_bias_zero_point", taken), unique_name(f"{base}_bias_dequantized", taken)
    codes = np.clip(np.round(b.astype(np.float64) / scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    graph.initializer.extend([numpy_helper.from_array(codes, q_name), numpy_helper.from_array(scale, s_name),
                              numpy_helper.from_array(np.zeros(scale.shape, np.int32), z_name)])
    node.input[2] = out_name
    return [helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out_name], axis=0,
                             name=unique_name(f"{base}_bias_DequantizeLinear", taken))]


def to_qdq(model: onnx.ModelProto, codes: list[Codes], int4: bool) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the exported float `model` with each layer's weight stored as integers (INT4 when
    `int4`, else int8) + DequantizeLinear, and QDQ on the inputs of layers with activation ranges.
    Returns it and the layers left in float because their exported weight was not found."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    placed, missing = _place(out, codes)
    graph, taken = out.graph, tensor_names(out.graph)
    inits = {t.name: t for t in graph.initializer}
    nodes = [_dq_weight(graph, name, p, int4, taken) for name, p in placed.items()]
    with_act = {n.output[0]: p for p in placed.values() for n in p.nodes if p.codes.act is not None}
    for node in graph.node:
        p = with_act.get(node.output[0])
        if p is not None:
            nodes.extend([*_qdq_input(graph, node, p.codes.act, taken), *_dq_bias(graph, node, p, inits, taken)])
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    _drop_initializers(graph, set(placed))
    if int4:
        for opset in out.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, INT4_OPSET)
        out.ir_version = max(out.ir_version, INT4_IR)
    onnx.checker.check_model(out)
    return out, missing


def _drop_initializers(graph: onnx.GraphProto, replaced: set[str]) -> None:
    """Remove the float weights now produced by DequantizeLinear, and initializers no node reads any more."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in replaced and t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def ort_kernels(model: onnx.ModelProto) -> Counter:
    """Op types of the graph ONNX Runtime's CPU provider actually runs, after its optimizations (QDQ
    fusion into integer kernels, constant folding, layout transforms) on this machine."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="workbench-qat-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "none"


def kernel_note(kernels: Counter) -> str:
    """Which compute kernels run, in words a user can act on."""
    integer = {op: n for op, n in kernels.items() if op in QUANTIZED_KERNEL_OPS}
    floats = {op: n for op, n in kernels.items()
              if op not in QUANTIZED_KERNEL_OPS and any(k in op for k in ("Conv", "Gemm", "MatMul"))}
    dq = kernels.get("DequantizeLinear", 0)
    why = (f"; {dq} DequantizeLinear still run on every call (weights turned back into float each time)"
           if dq else "")
    if not integer:
        return (f"ONNX Runtime runs float kernels ({_ops(floats)}) on dequantized weights{why}: the file is "
                "smaller, the arithmetic is not integer")
    nbits = ("; it fuses DequantizeLinear -> MatMul into MatMulNBits, which by default (accuracy level 4) "
             "rounds the activations to int8 on the fly, so outputs differ slightly from the trained model "
             "(session option session.qdq_matmulnbits_accuracy_level=0 computes them exactly)"
             if "MatMulNBits" in integer else "")
    return f"ONNX Runtime fuses QDQ into integer kernels: {_ops(integer)}; float: {_ops(floats)}{why}{nbits}"


# --- the stage ---------------------------------------------------------------------------------------

def _accuracy(module: nn.Module, ctx: Context) -> float | None:
    from workbench.evaluate import score, torch_predict

    test = ctx.splits.test
    return None if test.labels is None else score(torch_predict(module, test), test.labels)["accuracy"]


def _train(module: nn.Module, spec: QATSpec, variant: Variant, ctx: Context) -> float:
    from workbench.finetune import finetune

    train = ctx.splits.train
    if spec.epochs == 0:
        return float("nan")
    if train is None or train.labels is None:
        raise WorkbenchError("qat: no labelled training data (set data.train_path for user data, or epochs: 0)")
    tune = FinetuneSpec(epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, seed=spec.seed)
    return finetune(module, tune, train, variant.masks, progress=lambda f: ctx.progress(0.05 + 0.8 * f, "training"),
                    cancelled=ctx.cancelled)


def _notes(spec: QATSpec, layers: list[QuantLayer], skipped: dict[str, str], missing: list[str], int4: bool,
           kernels: Counter, masks: dict[str, np.ndarray]) -> list[str]:
    granularity = "per output channel" if spec.per_channel else "per tensor"
    acts = ", inputs fake-quantized to uint8 (EMA min/max ranges)" if spec.activation_bits else ""
    notes = [f"QAT: {len(layers) - len(missing)} layer(s) trained {spec.epochs} epoch(s) with {spec.weight_bits}-bit "
             f"symmetric weights ({2 * _qmax(spec.weight_bits) + 1} levels, {granularity}, straight-through "
             f"estimator){acts}"]
    if int4:
        notes.append("weights stored as ONNX INT4 initializers (opset 21) + DequantizeLinear")
    elif spec.weight_bits < 8:
        why = ("so that ONNX Runtime can fuse the QDQ pattern into int8 kernels (it does not fuse INT4 weights)"
               if spec.activation_bits else "(INT4 holds at most 4 bits)")
        notes.append(f"weights stored in int8 containers holding {spec.weight_bits}-bit values {why}: the file "
                     f"holds 8 bits per weight; packed at {spec.weight_bits} bits they would need "
                     f"{spec.weight_bits}/8 of that")
    else:
        notes.append("weights stored as int8 initializers + DequantizeLinear")
    notes.append(kernel_note(kernels))
    if skipped:
        notes.append("left in float: " + "; ".join(f"{n}: {r}" for n, r in sorted(skipped.items())))
    if missing:
        notes.append(f"left in float, exported weight not found in the graph: {', '.join(missing)} "
                     "(its values are still rounded)")
    if masks:
        pruned = sum(int(m.size - np.count_nonzero(m)) for m in masks.values())
        notes.append(f"pruning masks kept: {pruned:,} pruned weights stay zero (re-applied after every step)")
    return notes


@runner("qat")
def run_qat(variant: Variant, spec: QATSpec, ctx: Context) -> Variant:
    from workbench.export import export_onnx

    if variant.module is None:
        raise WorkbenchError("qat needs a torch model; put it before quantize")
    needs_layer_modules("qat", variant.module)
    module = copy_module(variant.module)
    layers, skipped = attach(module, spec)
    if spec.activation_bits is not None:
        ctx.progress(0.02, "observing activation ranges")
        observe(module, layers, ctx.splits.train if ctx.splits.train is not None else ctx.splits.calib)
    before = _accuracy(module, ctx)
    loss = _train(module, spec, variant, ctx)
    ctx.check()
    after = _accuracy(module, ctx)
    ctx.progress(0.9, "exporting QDQ")
    codes = detach(layers)
    int4 = spec.weight_bits <= 4 and spec.activation_bits is None
    model, missing = to_qdq(export_onnx(module, ctx.example), codes, int4)
    kernels = ort_kernels(model)
    out = variant.copy_meta(module=None, onnx_model=model, masks=dict(variant.masks), quant_method="qat",
                            simulated_quant=False, storage_bits=spec.weight_bits)
    out.history.append({"epochs": spec.epochs, "loss": loss, "fake_quant_accuracy_before": before,
                        "fake_quant_accuracy_after": after, "layers": len(layers) - len(missing)})
    out.notes.extend(_notes(spec, layers, skipped, missing, int4, kernels, variant.masks))
    return out
