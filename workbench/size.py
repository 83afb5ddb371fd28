"""How big a model variant is: on disk, compressed, and at the least storage it really needs.

Contract (`size_stats`):
- `file_bytes` is the serialized ONNX artifact; `gzip_bytes` its gzip (level 9, mtime 0) size.
- `params`, `nonzero`, `sparsity` and `bits_per_weight` cover the weight tensors passed in
  (`onnx_graph.weight_tensors`); `bits_per_weight` is the *stored* width (32 for fake-quantized floats).
- `min_storage_bytes` is the least storage the variant needs. Per weight tensor, with `b` bits per
  value (its stored bits, or `storage_bits` when that is smaller, or its entry in `layer_bits` when the
  bits differ per layer), `n` params and `k` nonzeros:
      min(n*b, k*b + min(n, k*ceil(log2 n)))
  i.e. dense storage, or the nonzeros plus the cheaper index: a bitmap (n bits) or a coordinate list
  (k indices of ceil(log2 n) bits). Every other stored tensor -- non-weight initializers (biases,
  norms, quantization scales and zero points) and `Constant` node values of the main graph -- counts at
  its stored size. Those are read by parsing `model_bytes` with onnx, not estimated as
  `file_bytes - weight bytes`, which would charge protobuf framing and graph structure to the weights.
  Graph structure (nodes, names) and external-data files are not counted; subgraph constants are not
  counted. The total is rounded up to whole bytes once.
- `storage_bits` is the bit width assumed per weight value: the override if given, otherwise the
  param-weighted mean of the stored widths, rounded (e.g. 32 for an fp32 model); with `layer_bits`, the
  param-weighted mean of the widths assumed per tensor, rounded.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from workbench.errors import WorkbenchError
from workbench.onnx_graph import WeightTensor


@dataclass(frozen=True)
class SizeStats:
    file_bytes: int          # the serialized ONNX artifact
    gzip_bytes: int          # gzip level 9 of it
    params: int              # weight parameters (sum of WeightTensor.params)
    nonzero: int
    sparsity: float
    bits_per_weight: float   # stored bits of weight tensors / params
    min_storage_bytes: int   # least storage: weights at nnz*bits + index cost, other tensors as stored
    storage_bits: int        # bits assumed per weight value in min_storage_bytes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gzip_size(data: bytes) -> int:
    """Bytes after gzip level 9 (mtime fixed at 0, so the result is deterministic)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def tensor_min_bits(params: int, nonzero: int, bits: int) -> int:
    """min(dense, nonzeros + bitmap, nonzeros + coordinate list) for one tensor, in bits."""
    if params <= 0:
        return 0
    index_bits = (params - 1).bit_length()  # == ceil(log2(params)) for params >= 1
    sparse = nonzero * bits + min(params, nonzero * index_bits)
    return min(params * bits, sparse)


def _stored_bits(tensor: onnx.TensorProto) -> int:
    """Bits a tensor occupies as stored: elements x element width (strings: their byte length)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return 8 * sum(len(s) for s in tensor.string_data)
    elements = math.prod(tensor.dims)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 4 * elements
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return 8 * int(np.dtype(dtype).itemsize) * elements


def other_tensor_bits(model: onnx.ModelProto, weight_names: set[str]) -> int:
    """Stored bits of every initializer and main-graph Constant value that is not a listed weight."""
    total = sum(_stored_bits(t) for t in model.graph.initializer if t.name not in weight_names)
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.HasField("t") and node.output[0] not in weight_names:
                total += _stored_bits(attr.t)
    return total


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(model_bytes)
    except (DecodeError, ValueError) as exc:
        raise WorkbenchError(f"not a readable ONNX model ({exc})") from None


def size_stats(model_bytes: bytes, weights: list[WeightTensor], storage_bits: int | None = None,
               layer_bits: dict[str, int] | None = None) -> SizeStats:
    """Sizes of one serialized variant; see the module docstring for what each number means.
    `layer_bits` (weight name -> bits) sets the assumed width per tensor, before `storage_bits`."""
    layer_bits = layer_bits or {}
    for value in (storage_bits, *layer_bits.values()):
        if value is not None and not 1 <= value <= 64:
            raise WorkbenchError(f"storage_bits: must be in 1..64, got {value}")
    model = _parse(model_bytes)
    params = sum(w.params for w in weights)
    nonzero = sum(w.nonzero for w in weights)
    stored_bits = sum(w.params * w.bits for w in weights)
    bits_per_weight = stored_bits / params if params else 0.0
    assumed = {w.name: min(w.bits, layer_bits.get(w.name, storage_bits) or w.bits) for w in weights}
    weight_bits = sum(tensor_min_bits(w.params, w.nonzero, assumed[w.name]) for w in weights)
    total_bits = weight_bits + other_tensor_bits(model, {w.name for w in weights})
    if layer_bits:
        storage_bits = round(sum(w.params * assumed[w.name] for w in weights) / params) if params else None
    return SizeStats(
        file_bytes=len(model_bytes),
        gzip_bytes=gzip_size(model_bytes),
        params=params,
        nonzero=nonzero,
        sparsity=1.0 - nonzero / params if params else 0.0,
        bits_per_weight=bits_per_weight,
        min_storage_bytes=math.ceil(total_bits / 8),
        storage_bits=storage_bits if storage_bits is not None else round(bits_per_weight),
    )
