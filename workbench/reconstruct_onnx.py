"""`prune.reconstruct` on an ONNX graph: the same layer-by-layer solve as workbench.reconstruct, with the
layer inputs and the unpruned outputs read from ONNX Runtime (the tensors exposed as extra graph outputs).

A layer is a MatMul with a 2-D initializer weight (in, out), a Gemm (transA 0, alpha = beta = 1; its C
initializer is the bias) or a 2-D Conv (group 1, explicit symmetric pads; its B initializer is the bias).
Nodes run in graph order, so each layer's inputs come from the already-solved layers before it. A weight
reached through a Transpose/Cast, shared by several nodes, or wider than `MAX_INPUTS` keeps its mask and
is named in a note. MatMul biases live in a separate Add and stay as they are: the target is the MatMul's
own output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from workbench.data import Dataset
from workbench.evaluate import feeds, make_session
from workbench.onnx_graph import exposing, initializers
from workbench.reconstruct import CHUNK, MAX_INPUTS, LayerFit, Statistics, patches, solve, with_bias


@dataclass(frozen=True)
class _Layer:
    node: onnx.NodeProto
    weight: str
    bias: str | None
    transposed: bool          # the initializer is stored (in, out): MatMul, Gemm without transB
    attrs: dict
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.weight


def reconstruct_onnx(model: onnx.ModelProto, reference: onnx.ModelProto, masks: dict[str, np.ndarray],
                     data: Dataset, mode: str, cancelled: Callable[[], bool] = lambda: False,
                     progress: Callable[[float, str], None] = lambda *_: None
                     ) -> tuple[dict[str, np.ndarray], list[LayerFit], list[str]]:
    """Solve the kept weights of `model` (in place; its masked initializers) against `reference` (the
    graph before pruning, same tensor names). Returns the keep-masks after solving, the fits and the
    skipped layers with their reasons, as workbench.reconstruct.reconstruct does."""
    layers, skipped = _layers(model, masks)
    ref_session = make_session(exposing(reference, [layer.node.output[0] for layer in layers]))
    out, fits = dict(masks), []
    for done, layer in enumerate(layers):
        if cancelled():
            break
        progress(done / len(layers), layer.name)
        session = make_session(exposing(model, [layer.node.input[0]]))
        stats = _statistics(layer, session, ref_session, data)
        inits = initializers(model)
        bias = layer.bias is not None
        keep = with_bias(torch.from_numpy(_as_rows(layer, np.asarray(masks[layer.weight], bool))), bias)
        solved, keep, fit = solve(layer.name, _rows(layer, inits), keep, None, bias, stats, mode)
        _write(layer, inits, solved)
        out[layer.weight] = _as_weight(layer, keep[:, :_fan_in(layer)].numpy())
        fits.append(fit)
    return out, fits, skipped


def _layers(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> tuple[list[_Layer], list[str]]:
    inits = initializers(model)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers, skipped, seen = [], [], set()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 or node.input[1] not in masks:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        seen.add(weight)
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0))
        layer = _Layer(node, weight, bias, transposed, attrs, tuple(inits[weight].dims))
        reason = _unsupported(layer, inits, uses)
        (skipped.append(f"{weight} ({reason})") if reason else layers.append(layer))
    skipped.extend(f"{name} (not the direct weight of a MatMul/Gemm/Conv)" for name in masks if name not in seen)
    return layers, skipped


def _unsupported(layer: _Layer, inits: dict, uses: dict[str, int]) -> str | None:
    node, attrs = layer.node, layer.attrs
    weight = inits[layer.weight]
    if uses[layer.weight] > 1:
        return f"used by {uses[layer.weight]} nodes"
    units = layer.shape[-1] if layer.transposed else layer.shape[0]
    if layer.bias is not None and (layer.bias not in inits or uses[layer.bias] > 1
                                   or int(np.prod(inits[layer.bias].dims)) != units):
        return "its bias is computed, shared or broadcast"
    if node.op_type == "MatMul" and len(weight.dims) != 2:
        return "a MatMul weight that is not 2-D"
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                   or attrs.get("beta", 1.0) != 1.0):
        return "Gemm with transA, alpha or beta"
    if node.op_type == "Conv":
        pads = list(attrs.get("pads", [0] * 4))
        if len(weight.dims) != 4 or attrs.get("group", 1) != 1:
            return "only 2-D convolutions without groups"
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:2] != pads[2:]:
            return "padding other than explicit symmetric pads"
    fan_in = _fan_in(layer)
    if fan_in > MAX_INPUTS:
        return f"{fan_in} inputs per unit, more than {MAX_INPUTS}"
    return None


def _fan_in(layer: _Layer) -> int:
    return layer.shape[0] if layer.transposed else int(np.prod(layer.shape[1:]))


def _statistics(layer: _Layer, session, ref_session, data: Dataset) -> Statistics:
    stats = None
    for start in range(0, len(data), CHUNK):
        stop = min(start + CHUNK, len(data))
        (x,) = session.run([layer.node.input[0]], feeds(session, data, start, stop))
        (y,) = ref_session.run([layer.node.output[0]], feeds(ref_session, data, start, stop))
        rows, target = _input_rows(layer, torch.from_numpy(np.asarray(x, np.float32))), _output_rows(layer, y)
        stats = stats or Statistics.empty(rows.shape[1], target.shape[1])
        stats.add(rows, target)
    return stats


def _input_rows(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    if layer.node.op_type == "Conv":
        pads = list(layer.attrs.get("pads", [0] * 4))
        rows = patches(x, layer.shape[2:], tuple(layer.attrs.get("strides", (1, 1))), tuple(pads[:2]),
                       tuple(layer.attrs.get("dilations", (1, 1))))
    else:
        rows = x.reshape(-1, x.shape[-1])
    return with_bias(rows.double(), layer.bias is not None, 1.0)


def _output_rows(layer: _Layer, y: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(y, np.float64))
    return t.movedim(1, -1).reshape(-1, t.shape[1]) if layer.node.op_type == "Conv" else t.reshape(-1, t.shape[-1])


def _rows(layer: _Layer, inits: dict) -> torch.Tensor:
    """The weight as (units, inputs) float64 rows, with the bias as the last column if there is one."""
    w = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
    rows = torch.from_numpy(np.ascontiguousarray(_as_rows(layer, w)))
    if layer.bias is None:
        return rows
    bias = numpy_helper.to_array(inits[layer.bias]).astype(np.float64).reshape(-1, 1)
    return torch.cat([rows, torch.from_numpy(bias)], 1)


def _as_rows(layer: _Layer, array: np.ndarray) -> np.ndarray:
    """A weight-shaped array as (units, inputs) rows."""
    return array.T if layer.transposed else array.reshape(array.shape[0], -1)


def _as_weight(layer: _Layer, rows: np.ndarray) -> np.ndarray:
    """(units, inputs) rows back to the weight's shape."""
    return np.ascontiguousarray(rows.T) if layer.transposed else rows.reshape(layer.shape)


def _write(layer: _Layer, inits: dict, solved: torch.Tensor) -> None:
    tensor = inits[layer.weight]
    dtype = numpy_helper.to_array(tensor).dtype
    weight = _as_weight(layer, solved[:, :_fan_in(layer)].numpy()).astype(dtype)
    tensor.CopyFrom(numpy_helper.from_array(weight, layer.weight))
    if layer.bias is not None:
        old = numpy_helper.to_array(inits[layer.bias])
        value = solved[:, -1].numpy().reshape(old.shape).astype(old.dtype)
        inits[layer.bias].CopyFrom(numpy_helper.from_array(value, layer.bias))
