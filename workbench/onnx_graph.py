"""Read an ONNX graph the way a compression tool needs: which initializers are weights, at how many
bits, and which compute ops run quantized. Pure `onnx` + numpy; no ONNX Runtime, no torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# Ops that run an integer or low-bit kernel in ONNX Runtime (QOperator / dynamic / weight-only forms).
QUANTIZED_KERNEL_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits", "QGemm",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
})
PASS_THROUGH = frozenset({"DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity"})


@dataclass(frozen=True)
class WeightTensor:
    """One weight matrix/kernel of a compute op, as stored in the graph."""

    name: str          # initializer name
    layer: str         # the compute node that consumes it
    op_type: str       # that node's op type
    shape: tuple[int, ...]   # logical (unpacked) shape
    params: int
    nonzero: int
    bits: int          # bits per stored value (32 float, 16 half, 8 int8, 4 for MatMulNBits 4-bit ...)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def exposing(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (float), for ONNX Runtime to hand back
    intermediate values (a layer's inputs or outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return probe


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _source_initializer(name: str, inits: dict, producers: dict) -> str | None:
    """Follow DequantizeLinear/Cast/Transpose back from a node input to the initializer feeding it."""
    for _ in range(4):
        if name in inits:
            return name
        node = producers.get(name)
        if node is None or node.op_type not in PASS_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


def _bits(tensor: onnx.TensorProto) -> int:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 4
    return int(np.dtype(dtype).itemsize * 8)


def weight_tensors(model: onnx.ModelProto) -> list[WeightTensor]:
    """The weights of Conv/MatMul/Gemm (also behind DequantizeLinear) and of quantized kernels."""
    inits, producers = initializers(model), _producers(model)
    seen: dict[str, WeightTensor] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            tensor = inits.get(node.input[1])
            if tensor is None:
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            k, n, bits = int(attrs["K"]), int(attrs["N"]), int(attrs["bits"])
            seen[tensor.name] = WeightTensor(tensor.name, node.name or node.output[0], node.op_type,
                                             (k, n), k * n, _nbits_nonzero(node, inits, k, n, bits), bits)
            continue
        if node.op_type not in COMPUTE_OPS and node.op_type not in QUANTIZED_KERNEL_OPS:
            continue
        weight_input = 3 if node.op_type in ("QLinearConv", "QLinearMatMul") else 1
        if len(node.input) <= weight_input:
            continue
        name = _source_initializer(node.input[weight_input], inits, producers)
        if name is None or name in seen:
            continue
        tensor = inits[name]
        array = numpy_helper.to_array(tensor)
        if array.ndim < 2:
            continue
        seen[name] = WeightTensor(name, node.name or node.output[0], node.op_type, tuple(array.shape),
                                  int(array.size), int(np.count_nonzero(array)), _bits(tensor))
    return list(seen.values())


def _codes(packed: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """Unpack `bits`-bit codes stored low-first in bytes: (rows, ...) uint8 -> (rows, codes) ints."""
    per_byte = 8 // bits
    flat = packed.reshape(rows, -1).astype(np.int16)
    shifts = np.arange(per_byte, dtype=np.int16) * bits
    return ((flat[:, :, None] >> shifts) & (2**bits - 1)).reshape(rows, -1)


def _nbits_nonzero(node: onnx.NodeProto, inits: dict, k: int, n: int, bits: int) -> int:
    """Weights of a MatMulNBits node that dequantize to nonzero, (code - zero_point) * scale != 0, per block
    of K; the zero point is 2^(bits-1) when the node has none. The padding past K in the last block is not counted."""
    if 8 % bits:                      # codes that straddle bytes: a layout this does not decode, count every weight
        return k * n
    packed = numpy_helper.to_array(inits[node.input[1]])
    blocks = packed.shape[1]
    codes = _codes(packed, bits, n).reshape(n, blocks, -1)
    scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks) if node.input[2] in inits else None
    zero_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if zero_name is None:
        zero = np.full((n, blocks), 2 ** (bits - 1))
    elif zero_name not in inits:      # computed at run time: cannot tell, count every weight
        return k * n
    else:
        stored = numpy_helper.to_array(inits[zero_name])
        zero = stored.reshape(n, blocks) if stored.dtype.kind == "f" else _codes(stored, bits, n)[:, :blocks]
    nonzero = codes != zero[:, :, None]
    if scales is not None:
        nonzero &= scales[:, :, None] != 0
    return int(nonzero.reshape(n, -1)[:, :k].sum())


@dataclass(frozen=True)
class OpCoverage:
    """How many compute ops run an integer kernel versus float."""

    histogram: dict[str, int]
    quantized: int
    float_ops: int
    float_names: tuple[str, ...]

    @property
    def fraction(self) -> float:
        total = self.quantized + self.float_ops
        return self.quantized / total if total else 0.0


def op_coverage(model: onnx.ModelProto) -> OpCoverage:
    """Count compute ops: quantized kernels, QDQ-wrapped ops (ORT fuses DQ->op->Q into int8), float."""
    producers = _producers(model)
    histogram = Counter(node.op_type for node in model.graph.node)
    quantized, float_names = 0, []
    for node in model.graph.node:
        if node.op_type in QUANTIZED_KERNEL_OPS:
            quantized += 1
        elif node.op_type in COMPUTE_OPS:
            fed = [producers.get(i) for i in node.input[:2]]
            if all(p is not None and p.op_type == "DequantizeLinear" for p in fed):
                quantized += 1
            else:
                float_names.append(node.name or node.output[0])
    return OpCoverage(dict(sorted(histogram.items())), quantized, len(float_names), tuple(float_names))


def kernel_signature(model: onnx.ModelProto) -> tuple:
    """Op types in order plus initializer shapes and dtypes: equal signatures run the same kernels."""
    ops = tuple(node.op_type for node in model.graph.node)
    tensors = tuple(sorted((tuple(t.dims), t.data_type) for t in model.graph.initializer))
    return ops, tensors
