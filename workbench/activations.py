"""The root mean square of the input each weight multiplies, over calibration samples: what `method: wanda`
(workbench.pruning) scales |w| by, so a weight that only ever sees zeros scores zero however large it is.

`input_rms(model, data)` reads every prunable weight of a torch module or ONNX graph (workbench.pruning's
`torch_weights` / `onnx_weights`); `torch_input_rms(module, names, inputs)` and `onnx_input_rms(model, names,
data)` the weights named. They return, per weight name, an array of the weight's rank that broadcasts against
it (one value per input feature; for a convolution per input channel and kernel position, over every position
the kernel visits, padding included), and the weights they could not cover with the reason: those are ranked
by magnitude alone. One forward pass over the samples given (the caller bounds them: `PruneSpec.calib_samples`)
reads every layer at once, so a layer used several times counts all its calls.

Torch: nn.Linear and nn.Conv1d/2d (any groups) weights; ONNX: 2-D MatMul weights, Gemm B (transA 0) and
1-D/2-D Conv weights, the tensors their nodes read directly (ONNX Runtime exposes their inputs as outputs).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn
from torch.nn import functional

from workbench.data import Dataset
from workbench.errors import WorkbenchError

CHUNK = 256             # samples per forward pass, at most
EXPOSED_BYTES = 2**28   # ONNX: the exposed layer inputs of one forward pass stay under this (256 MiB)


class _Squares:
    """Running sum of squared inputs per input feature of one weight, and the rows they came from."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.rows = 0

    def add(self, sums: np.ndarray, rows: int) -> None:
        self.total = sums if self.total is None else self.total + sums
        self.rows += rows

    def rms(self) -> np.ndarray | None:
        return None if self.total is None or not self.rows else np.sqrt(self.total / self.rows)


def linear_squares(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(Σ x² per feature of the last axis, rows): a Linear/MatMul input (..., features)."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return (flat * flat).sum(0), len(flat)


def conv_squares(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
                 dilation: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """(Σ x² per input channel and kernel offset over every output position, output positions × samples)
    for a 1-D or 2-D convolution's input (n, c, *spatial) with zero padding `padding` on both sides."""
    squared = x.double() ** 2
    padded = functional.pad(squared, [p for pad in reversed(padding) for p in (pad, pad)])
    spatial = padded.shape[2:]
    outs = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(spatial, kernel, stride, dilation, strict=True)]
    sums = torch.zeros(x.shape[1], *kernel, dtype=torch.float64)
    for offset in np.ndindex(*kernel):
        window = tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                       for o, d, s, n in zip(offset, dilation, stride, outs, strict=True))
        sums[(slice(None), *offset)] = padded[(slice(None), slice(None), *window)].sum(dim=[0, *range(2, padded.dim())])
    return sums.numpy(), x.shape[0] * int(np.prod(outs))


def per_weight(rms: np.ndarray, shape: tuple[int, ...], groups: int = 1) -> np.ndarray:
    """A conv input's (channels, *kernel) RMS as an array broadcasting against its weight (out, channels /
    groups, *kernel): each output unit reads the channels of its group."""
    if groups == 1:
        return rms[None]
    per_group = shape[0] // groups
    return np.stack([rms[(o // per_group) * shape[1]:(o // per_group + 1) * shape[1]] for o in range(shape[0])])


def input_rms(model: nn.Module | onnx.ModelProto, data: Dataset) -> tuple[dict[str, np.ndarray], list[str]]:
    """Input RMS for every prunable weight of `model` over `data`, and the weights left out with the reason."""
    from workbench.pruning import onnx_weights, torch_weights

    if isinstance(model, onnx.ModelProto):
        return onnx_input_rms(model, onnx_weights(model), data)
    return torch_input_rms(model, torch_weights(model), data.inputs)


def torch_input_rms(module: nn.Module, names: Iterable[str], inputs: tuple[np.ndarray, ...]
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Input RMS for the weights `names` (parameter names ending in '.weight') of `module`, over `inputs`."""
    from workbench.pruning import weight_name

    names = list(names)
    layers = {weight_name(n): (n, m) for n, m in module.named_modules() if weight_name(n) in names}
    covered = {n: m for n, m in layers.values() if _supported(m) is None}
    squares = {n: _Squares() for n in covered}

    def record(layer: nn.Module, args: tuple, name: str) -> None:
        x = args[0].detach()
        if isinstance(layer, nn.Linear):
            squares[name].add(*linear_squares(x.double().numpy()))
        else:
            padding = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,)
            squares[name].add(*conv_squares(x, layer.kernel_size, layer.stride, padding, layer.dilation))

    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: record(m, a, n)) for n, m in covered.items()]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(inputs[0]), CHUNK):
                module(*(torch.from_numpy(np.ascontiguousarray(a[start:start + CHUNK], dtype=np.float32))
                         for a in inputs))
    finally:
        module.train(was_training)
        for hook in hooks:
            hook.remove()
    out, skipped = {}, []
    for name in names:
        layer_name, layer = layers.get(name, ("", None))
        reason = "not the weight of a layer module" if layer is None else _supported(layer)
        rms = squares[layer_name].rms() if reason is None else None
        if reason is None and rms is None:
            reason = "never called"
        if reason:
            skipped.append(f"{name} ({reason})")
            continue
        out[name] = rms[None] if isinstance(layer, nn.Linear) else \
            per_weight(rms, tuple(layer.weight.shape), layer.groups)
    return out, skipped


def _supported(layer: nn.Module) -> str | None:
    if type(layer) is nn.Linear:
        return None
    if type(layer) in (nn.Conv1d, nn.Conv2d):
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return "padding other than explicit zeros"
        return None
    return f"{type(layer).__name__} is not a Linear or Conv1d/Conv2d"


def onnx_input_rms(model: onnx.ModelProto, names: Iterable[str], data: Dataset
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Input RMS for the initializers `names` of `model`, read by ONNX Runtime over `data`."""
    from workbench.evaluate import feeds, make_session
    from workbench.onnx_graph import exposing, initializers

    names = list(names)
    inits = initializers(model)
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input[1:2]:
            uses.setdefault(name, []).append(node)
    readers, skipped = {}, []
    for name in names:
        nodes = uses.get(name, [])
        reasons = [r for node in nodes if (r := _onnx_unsupported(node, inits[name]))]
        if len({_layout(node) for node in nodes}) > 1:
            reasons.append("read differently by several nodes")
        reason = reasons[0] if reasons else None if nodes else "not the direct weight of a MatMul/Gemm/Conv"
        (skipped.append(f"{name} ({reason})") if reason else readers.setdefault(name, nodes))
    if not readers:
        return {}, skipped
    exposed = list(dict.fromkeys(node.input[0] for nodes in readers.values() for node in nodes))
    session = make_session(exposing(model, exposed))
    squares = {n: _Squares() for n in readers}
    start, chunk = 0, 1        # one sample first, to size the chunks by what the exposed inputs take
    while start < len(data):
        stop = min(start + chunk, len(data))
        values = dict(zip(exposed, session.run(exposed, feeds(session, data, start, stop)), strict=True))
        for name, nodes in readers.items():
            for node in nodes:
                squares[name].add(*_node_squares(node, np.asarray(values[node.input[0]], np.float32), inits[name]))
        per_sample = sum(np.asarray(v).nbytes for v in values.values()) / (stop - start)
        start, chunk = stop, int(max(1, min(CHUNK, EXPOSED_BYTES // max(per_sample, 1))))
    out = {}
    for name, nodes in readers.items():
        rms = squares[name].rms()
        if rms is None:
            raise WorkbenchError(f"prune: {name}: no calibration sample reached it")
        out[name] = _onnx_broadcast(nodes[0], rms, tuple(inits[name].dims))
    return out, skipped


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _layout(node: onnx.NodeProto) -> tuple:
    attrs = _attrs(node)
    return node.op_type, attrs.get("transB", 0), attrs.get("group", 1)


def _onnx_unsupported(node: onnx.NodeProto, weight: onnx.TensorProto) -> str | None:
    attrs = _attrs(node)
    if node.op_type == "MatMul":
        return None if len(weight.dims) == 2 else "a MatMul weight that is not 2-D"
    if node.op_type == "Gemm":
        return "Gemm with transA" if attrs.get("transA", 0) else None
    if node.op_type == "Conv":
        if len(weight.dims) not in (3, 4):
            return "only 1-D and 2-D convolutions"
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return "auto_pad"
        pads = list(attrs.get("pads", [0] * 2 * (len(weight.dims) - 2)))
        half = len(pads) // 2
        return None if pads[:half] == pads[half:] else "asymmetric padding"
    return f"read by {node.op_type}"


def _node_squares(node: onnx.NodeProto, x: np.ndarray, weight: onnx.TensorProto) -> tuple[np.ndarray, int]:
    if node.op_type != "Conv":
        return linear_squares(x)
    attrs, kernel = _attrs(node), tuple(weight.dims[2:])
    ones = (1,) * len(kernel)
    pads = tuple(attrs.get("pads", (0,) * 2 * len(kernel)))[:len(kernel)]
    return conv_squares(torch.from_numpy(x), kernel, tuple(attrs.get("strides", ones)), pads,
                        tuple(attrs.get("dilations", ones)))


def _onnx_broadcast(node: onnx.NodeProto, rms: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The RMS of one input feature per weight position: MatMul and Gemm (transB 0) weights are (in, out)."""
    if node.op_type == "Conv":
        return per_weight(rms, shape, _attrs(node).get("group", 1))
    if node.op_type == "Gemm" and _attrs(node).get("transB", 0):
        return rms[None]
    return rms[:, None]
