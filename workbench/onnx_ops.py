"""Torch functions for the ONNX ops that `workbench.onnx_torch` runs as plain functions, registered in `OPS`
by op type: each takes the node's attributes and its input values (and the layer module, for the ops
that call one) and returns the output value(s).

A value is a tensor, or a Python int / tuple of ints for shape arithmetic (Shape, Gather, Concat...):
kept as Python numbers, a traced batch size stays symbolic, so the batch axis stays dynamic when the
module is exported again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import WorkbenchError


def _ints(value: Any) -> list[int]:
    if isinstance(value, int | torch.SymInt):
        return [value]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return list(value)


def _tensor(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    dtype = like.dtype if like is not None and like.is_floating_point() else None
    return torch.as_tensor(value, dtype=dtype)


def _is_shape(value: Any) -> bool:
    return isinstance(value, int | torch.SymInt | tuple | list)


def axis_index(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ------------------------------------------------------------------------------------------------ ops
Op = Callable[..., Any]
OPS: dict[str, Op] = {}


def op(*names: str) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda attrs, x: fn(x[0])


for _name, _fn in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
                   "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
                   "Reciprocal": torch.reciprocal, "Identity": lambda x: x, "Softplus": F.softplus,
                   "HardSwish": F.hardswish, "Sin": torch.sin, "Cos": torch.cos, "Floor": torch.floor,
                   "Ceil": torch.ceil, "Sign": torch.sign, "Not": torch.logical_not}.items():
    OPS[_name] = _unary(_fn)


@op("Dropout")
def _dropout(attrs: dict, x: list) -> Any:
    return x[0]   # inference graphs only: a mask output, if wired, is unsupported (checked at conversion)


@op("LeakyRelu")
def _leaky(attrs: dict, x: list) -> torch.Tensor:
    return F.leaky_relu(x[0], attrs.get("alpha", 0.01))


@op("Elu")
def _elu(attrs: dict, x: list) -> torch.Tensor:
    return F.elu(x[0], attrs.get("alpha", 1.0))


@op("HardSigmoid")
def _hard_sigmoid(attrs: dict, x: list) -> torch.Tensor:
    return torch.clamp(attrs.get("alpha", 0.2) * x[0] + attrs.get("beta", 0.5), 0, 1)


@op("Gelu")
def _gelu(attrs: dict, x: list) -> torch.Tensor:
    approximate = attrs.get("approximate", "none")
    return F.gelu(x[0], approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)


@op("Clip")
def _clip(attrs: dict, x: list) -> torch.Tensor:
    low = x[1] if len(x) > 1 and x[1] is not None else attrs.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else attrs.get("max")
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return torch.clamp(x[0], low, high)


def _binary(fn: Callable, python: Callable) -> Op:
    def apply(attrs: dict, x: list) -> Any:
        a, b = x
        if _is_shape(a) and _is_shape(b) and not isinstance(a, list | tuple) and not isinstance(b, list | tuple):
            return python(a, b)
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            like = a if isinstance(a, torch.Tensor) else b
            return fn(_tensor(a, like), _tensor(b, like))
        return tuple(python(p, q) for p, q in zip(_ints(a), _ints(b), strict=True))

    return apply


OPS["Add"] = _binary(torch.add, lambda a, b: a + b)
OPS["Sub"] = _binary(torch.sub, lambda a, b: a - b)
OPS["Mul"] = _binary(torch.mul, lambda a, b: a * b)
OPS["Div"] = _binary(lambda a, b: torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point()
                     else torch.div(a, b), lambda a, b: a // b)
OPS["Pow"] = _binary(torch.pow, lambda a, b: a**b)
OPS["Mod"] = _binary(torch.remainder, lambda a, b: a % b)
OPS["Equal"] = _binary(torch.eq, lambda a, b: a == b)
OPS["Greater"] = _binary(torch.gt, lambda a, b: a > b)
OPS["Less"] = _binary(torch.lt, lambda a, b: a < b)
OPS["GreaterOrEqual"] = _binary(torch.ge, lambda a, b: a >= b)
OPS["LessOrEqual"] = _binary(torch.le, lambda a, b: a <= b)
OPS["And"] = _binary(torch.logical_and, lambda a, b: a and b)
OPS["Or"] = _binary(torch.logical_or, lambda a, b: a or b)


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mean: bool = False) -> Op:
    def apply(attrs: dict, x: list) -> torch.Tensor:
        parts = [p for p in x if p is not None]
        out = parts[0]
        for part in parts[1:]:
            out = fn(out, _tensor(part, out))
        return out / len(parts) if mean else out

    return apply


OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)
OPS["Sum"] = _variadic(torch.add)
OPS["Mean"] = _variadic(torch.add, mean=True)


@op("Where")
def _where(attrs: dict, x: list) -> torch.Tensor:
    like = x[1] if isinstance(x[1], torch.Tensor) else x[2]
    return torch.where(_tensor(x[0]).bool(), _tensor(x[1], like), _tensor(x[2], like))


@op("PRelu")
def _prelu(attrs: dict, x: list) -> torch.Tensor:
    return torch.where(x[0] >= 0, x[0], x[0] * x[1])


@op("Pad")
def _pad(attrs: dict, x: list) -> torch.Tensor:
    """Constant, reflect or edge padding; `pads` lists every axis's begins, then every axis's ends."""
    data = x[0]
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(attrs.get("pads", []))
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(data.dim()))
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    half = len(pads) // 2
    per_axis = {axis_index(a, data.dim()): (pads[i], pads[i + half]) for i, a in enumerate(axes)}
    last = max(per_axis) if per_axis else 0
    flat = [p for axis in range(last, -1, -1) for p in per_axis.get(axis, (0, 0))]
    if mode == "constant":
        value = float(x[2].reshape(-1)[0]) if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
        return F.pad(data, flat, value=value)
    if any(per_axis.get(a, (0, 0)) != (0, 0) for a in range(2)):
        raise WorkbenchError(f"Pad in {mode} mode over the batch or channel axis is not supported")
    return F.pad(data, flat[: 2 * (last - 1)], mode={"reflect": "reflect", "edge": "replicate"}[mode])


@op("Tile")
def _tile(attrs: dict, x: list) -> torch.Tensor:
    return x[0].repeat(*_ints(x[1]))


@op("InstanceNormalization")
def _instance_norm(attrs: dict, x: list) -> torch.Tensor:
    return F.instance_norm(x[0], weight=x[1].reshape(-1), bias=x[2].reshape(-1), eps=attrs.get("epsilon", 1e-5))


@op("MatMul")
def _matmul(attrs: dict, x: list) -> torch.Tensor:
    return torch.matmul(x[0], x[1])


@op("Gemm")
def _gemm(attrs: dict, x: list) -> torch.Tensor:
    """alpha * A' @ B' + beta * C, where the weight is computed or shared (not a layer of its own)."""
    a = x[0].transpose(0, 1) if attrs.get("transA", 0) else x[0]
    b = x[1].transpose(0, 1) if attrs.get("transB", 0) else x[1]
    out = attrs.get("alpha", 1.0) * torch.matmul(a, b)
    return out + attrs.get("beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else out


@op("ConstantOfShape")
def _constant_of_shape(attrs: dict, x: list) -> torch.Tensor:
    value = attrs.get("value")
    fill = value.reshape(-1)[0] if isinstance(value, torch.Tensor) else torch.tensor(0.0)
    if not isinstance(value, torch.Tensor) and value is not None:   # an integer fill
        fill = torch.tensor(_ints(value)[0])
    return torch.full(tuple(_ints(x[0])), fill.item(), dtype=fill.dtype)


@op("Softmax", "LogSoftmax")
def _softmax(attrs: dict, x: list) -> torch.Tensor:
    fn = torch.log_softmax if attrs["_op"] == "LogSoftmax" else torch.softmax
    if attrs["_opset"] >= 13:
        return fn(x[0], dim=attrs.get("axis", -1))
    data = x[0]   # before opset 13: over all axes from `axis` on (default 1), as one
    axis = axis_index(attrs.get("axis", 1), data.dim())
    return fn(data.flatten(axis), dim=axis).reshape(data.shape)


@op("layer")   # Conv, Gemm / MatMul (+ bias Add), BatchNormalization, LayerNormalization, Gather as a module
def _layer(attrs: dict, x: list, layer: nn.Module) -> torch.Tensor:
    data = x[0]
    if isinstance(layer, nn.Embedding):   # ONNX Gather counts negative indices from the end
        index = _tensor(data).long()
        return layer(torch.where(index < 0, index + layer.num_embeddings, index))
    if "kernel_shape" in attrs:   # a convolution with auto_pad SAME: padding from the input's size
        data = F.pad(data, same_pads(attrs, list(data.shape[2:]), list(attrs["kernel_shape"])))
    elif "pad" in attrs:   # asymmetric padding, applied before the layer
        data = F.pad(data, attrs["pad"])
    return layer(data)


@op("LayerNormalization")
def _layer_norm(attrs: dict, x: list) -> torch.Tensor:
    data, scale, bias = (x + [None])[:3]
    axis = axis_index(attrs.get("axis", -1), data.dim())
    return F.layer_norm(data, tuple(data.shape[axis:]), scale, bias, attrs.get("epsilon", 1e-5))


def same_pads(attrs: dict, sizes: list[int], kernel: list[int]) -> list[int] | None:
    """F.pad's list for auto_pad SAME_UPPER / SAME_LOWER over spatial `sizes` (output = ceil(size / stride); the
    odd pixel goes at the end for UPPER, at the start for LOWER), or None for NOTSET / VALID."""
    mode = attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    strides = list(attrs.get("strides", [1] * len(kernel)))
    dilations = list(attrs.get("dilations", [1] * len(kernel)))
    pairs = []
    for size, k, stride, dilation in zip(sizes, kernel, strides, dilations, strict=True):
        total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pairs.append((small, large) if mode == "SAME_UPPER" else (large, small))
    return [p for begin, end in reversed(pairs) for p in (begin, end)]


def _pool_args(attrs: dict, data: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int] | None]:
    """(kernel, strides, symmetric padding, F.pad's list for asymmetric or SAME padding or None)."""
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * len(kernel)))
    same = same_pads(attrs, list(data.shape[2:]), kernel)
    if same is not None:
        return kernel, strides, [0] * len(kernel), same
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    half = len(pads) // 2
    symmetric = pads[:half] == pads[half:]
    extra = None if symmetric else [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])]
    return kernel, strides, pads[:half] if symmetric else [0] * half, extra


@op("MaxPool")
def _max_pool(attrs: dict, x: list) -> torch.Tensor:
    data = x[0]
    kernel, strides, pads, extra = _pool_args(attrs, data)
    if extra:
        data = F.pad(data, extra, value=float("-inf"))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(data, kernel, strides, pads, attrs.get("dilations", [1] * len(kernel)),
              ceil_mode=bool(attrs.get("ceil_mode", 0)))


@op("AveragePool")
def _avg_pool(attrs: dict, x: list) -> torch.Tensor:
    data = x[0]
    kernel, strides, pads, extra = _pool_args(attrs, data)
    include = bool(attrs.get("count_include_pad", 0))
    if extra and any(extra):
        if not include:   # the padded zeros would count as values
            raise WorkbenchError("AveragePool with uneven padding that excludes the padding from the average is "
                                 "not supported")
        data = F.pad(data, extra)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    return fn(data, kernel, strides, pads, ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include)


@op("GlobalAveragePool")
def _global_avg(attrs: dict, x: list) -> torch.Tensor:
    return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max(attrs: dict, x: list) -> torch.Tensor:
    return x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)


@op("Flatten")
def _flatten(attrs: dict, x: list) -> torch.Tensor:
    data, axis = x[0], axis_index(attrs.get("axis", 1), x[0].dim())
    if axis == 0:
        return data.reshape(1, -1)
    return data.flatten(axis) if axis < data.dim() else data.reshape(*data.shape, 1).flatten(axis)


@op("Reshape")
def _reshape(attrs: dict, x: list) -> torch.Tensor:
    data = x[0]
    if _is_shape(data):   # sizes being regrouped: a 0-d target is one int, any other a flat tuple
        values = _ints(data)
        return values[0] if not _ints(x[1]) and len(values) == 1 else tuple(values)
    if attrs.get("flatten"):
        return data.flatten(1)
    shape = list(attrs["shape"]) if "shape" in attrs else _ints(x[1])
    if not attrs.get("allowzero", 0):
        shape = [data.shape[i] if isinstance(s, int) and s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(*shape)


@op("Transpose")
def _transpose(attrs: dict, x: list) -> torch.Tensor:
    perm = attrs.get("perm") or list(reversed(range(x[0].dim())))
    return x[0].permute(*perm)


def _axes(attrs: dict, x: list, index: int = 1) -> list[int] | None:
    if len(x) > index and x[index] is not None:
        return _ints(x[index])
    return list(attrs["axes"]) if "axes" in attrs else None


@op("Squeeze")
def _squeeze(attrs: dict, x: list) -> Any:
    axes = _axes(attrs, x)
    if _is_shape(x[0]):
        values = _ints(x[0])
        return values[0] if len(values) == 1 else tuple(values)
    if axes is None:
        return x[0].squeeze()
    rank = x[0].dim()
    return x[0].squeeze(tuple(axis_index(a, rank) for a in axes))


@op("Unsqueeze")
def _unsqueeze(attrs: dict, x: list) -> Any:
    axes = _axes(attrs, x)
    if _is_shape(x[0]):
        return tuple(_ints(x[0]))
    out = x[0]
    rank = out.dim() + len(axes)
    for a in sorted(axis_index(a, rank) for a in axes):
        out = out.unsqueeze(a)
    return out


@op("Concat")
def _concat(attrs: dict, x: list) -> Any:
    parts = [p for p in x if p is not None]
    if all(_is_shape(p) for p in parts):
        return tuple(v for p in parts for v in _ints(p))
    like = next(p for p in parts if isinstance(p, torch.Tensor))
    return torch.cat([_tensor(p, like) if isinstance(p, torch.Tensor) else torch.as_tensor(_ints(p))
                      for p in parts], dim=attrs.get("axis", 0))


@op("Shape")
def _shape(attrs: dict, x: list) -> tuple:
    shape = tuple(x[0].shape)
    return shape[attrs.get("start", 0):attrs.get("end", len(shape))]


@op("Gather")
def _gather(attrs: dict, x: list) -> Any:
    data, indices = x
    axis = attrs.get("axis", 0)
    if _is_shape(data):
        values = _ints(data)
        picked = [values[i] for i in _ints(indices)]
        scalar = isinstance(indices, int) or (isinstance(indices, torch.Tensor) and indices.ndim == 0)
        return picked[0] if scalar else tuple(picked)
    index = _tensor(indices).long()
    axis = axis_index(axis, data.dim())
    index = torch.where(index < 0, index + data.shape[axis], index)
    if index.dim() == 0:
        return data.select(axis, int(index))
    return torch.index_select(data, axis, index.reshape(-1)).reshape(
        *data.shape[:axis], *index.shape, *data.shape[axis + 1:])


@op("Slice")
def _slice(attrs: dict, x: list) -> Any:
    data = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    if _is_shape(data):
        values = _ints(data)
        return tuple(values[slice(starts[0], ends[0], _ints(x[4])[0] if len(x) > 4 and x[4] is not None else 1)])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * data.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step < 0:
            raise WorkbenchError("Slice with a negative step is not supported")
        size = data.shape[axis_index(axis, data.dim())]
        index[axis_index(axis, data.dim())] = slice(max(start, -size) if start < 0 else start,
                                               None if end >= 2**62 else end, step)
    return data[tuple(index)]


def _reduce(fn: Callable) -> Op:
    def apply(attrs: dict, x: list) -> torch.Tensor:
        axes = _axes(attrs, x)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None or not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x[0]
            axes = list(range(x[0].dim()))
        return fn(x[0], dim=tuple(axes), keepdim=keep)

    return apply


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(torch.amax)
OPS["ReduceMin"] = _reduce(torch.amin)


@op("Constant")
def _constant(attrs: dict, x: list) -> Any:
    for key in ("value", "value_int", "value_ints", "value_float", "value_floats"):
        if key in attrs:
            return attrs[key]
    raise WorkbenchError("a Constant without value, value_int(s) or value_float(s) is not supported")


@op("Cast")
def _cast(attrs: dict, x: list) -> Any:
    dtype = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64,
             onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.BOOL: torch.bool,
             onnx.TensorProto.DOUBLE: torch.float64}.get(attrs["to"])
    if dtype is None:
        raise WorkbenchError(f"Cast to ONNX type {attrs['to']} is not supported")
    if _is_shape(x[0]) and not dtype.is_floating_point:
        return x[0]     # sizes stay Python ints
    return _tensor(x[0]).to(dtype)


@op("Expand")
def _expand(attrs: dict, x: list) -> torch.Tensor:
    shape = _ints(x[1])
    data = x[0]
    shape = [1] * (data.dim() - len(shape)) + shape
    target = [s if s != 1 else d for s, d in zip(shape, [1] * (len(shape) - data.dim()) + list(data.shape),
                                                  strict=True)]
    return data.expand(*target)


def _scalar(value: Any) -> Any:
    """A Range bound: a Python int (shape arithmetic) or the number in a one-element constant tensor."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[0].item()
    return value[0] if isinstance(value, tuple | list) else value


@op("Range")
def _range(attrs: dict, x: list) -> torch.Tensor:
    floating = any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in x)
    start, limit, delta = (_scalar(v) for v in x)
    return torch.arange(start, limit, delta, dtype=torch.float32 if floating else torch.int64)


@op("Split")
def _split(attrs: dict, x: list) -> tuple:
    data, axis = x[0], attrs.get("axis", 0)
    sizes = _ints(x[1]) if len(x) > 1 and x[1] is not None else attrs.get("split")
    if sizes is None:
        parts = attrs["_outputs"]
        size = data.shape[axis]
        sizes = [math.ceil(size / parts)] * (parts - 1)
        sizes.append(size - sum(sizes))
    return tuple(torch.split(data, list(sizes), dim=axis))
