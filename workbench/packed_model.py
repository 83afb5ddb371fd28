"""A clustered run's model as two files that restore it exactly: `graph.onnx`, the network with the weights
that `weights.packed` holds left out, and `weights.packed` itself (workbench.packing). Together they are
what a purpose-built deployment would ship, so their sum is the run's real smallest size *with* the network,
beside weights.packed alone (the weights, as Deep Compression counts them).

Contract:
- `split_graph(model, tensors)` returns graph.onnx's bytes: `model` with every initializer whose values
  `tensors` holds exactly (same name, shape and values in the initializer's dtype) reduced to a stub (name,
  dtype, shape, no data), and what ONNX Runtime does not need to run it dropped (shape annotations, the
  exporter's metadata and doc strings). Initializers that differ from `tensors` (the exporter may fold
  BatchNorm into a convolution's weights) keep their data, so the split never changes a value; it only moves
  the ones weights.packed already holds. The graph records how many it moved (STUB_KEY).
- `restore(graph, packed)` fills every stub from weights.packed and returns the ONNX model, whose
  initializers equal the original's. A stub without its tensor, a tensor of another shape (a different
  run's file), or fewer stubs than the graph recorded (an edited graph) is a WorkbenchError naming it.

graph.onnx stays plain ONNX (Netron and onnx.load open it); the packed claim counts it gzipped, as the gzip size
of any model file is counted (workbench.claims).

Non-goals: a format ONNX Runtime loads directly (it needs restore first).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from workbench.errors import WorkbenchError
from workbench.packing import unpack

STUB_KEY = "workbench.packed_weights"   # metadata: how many initializers weights.packed must fill
DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def split_graph(model: onnx.ModelProto, tensors: dict[str, np.ndarray]) -> bytes:
    """graph.onnx: `model` with the initializers `tensors` holds exactly reduced to stubs; see the module doc."""
    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(model)
    _strip_annotations(graph_model.graph)
    stubs = 0
    for init in graph_model.graph.initializer:
        packed = tensors.get(init.name)
        if packed is None or not _same(numpy_helper.to_array(init), packed):
            continue
        for name in DATA_FIELDS:
            init.ClearField(name)
        stubs += 1
    entry = graph_model.metadata_props.add()
    entry.key, entry.value = STUB_KEY, str(stubs)
    return graph_model.SerializeToString()


def restore(graph: bytes, packed: bytes) -> onnx.ModelProto:
    """The model graph.onnx and weights.packed were split from; see the module doc."""
    try:
        model = onnx.load_from_string(graph)
    except Exception as exc:   # protobuf's DecodeError and friends
        raise WorkbenchError(f"graph.onnx: not an ONNX model ({exc})") from None
    recorded = next((p.value for p in model.metadata_props if p.key == STUB_KEY), None)
    if recorded is None:
        raise WorkbenchError("graph.onnx: not a graph written beside a weights.packed (no packed weights in it)")
    try:
        tensors = unpack(packed)
    except WorkbenchError:
        raise
    except Exception as exc:   # a truncated or corrupted file fails somewhere inside the decoder
        raise WorkbenchError(f"weights.packed: truncated or corrupted ({type(exc).__name__})") from None
    stubs = [init for init in model.graph.initializer if _is_stub(init)]
    if str(len(stubs)) != recorded:
        raise WorkbenchError(f"graph.onnx: {len(stubs)} initializers wait for weights.packed where it was written "
                             f"with {recorded}: the file was changed")
    for init in stubs:
        if init.name not in tensors:
            raise WorkbenchError(f"weights.packed has no '{init.name}', which graph.onnx needs: are the two files "
                                 "from the same run?")
        value, shape = tensors[init.name], tuple(init.dims)
        if value.shape != shape:
            raise WorkbenchError(f"weights.packed's '{init.name}' is {value.shape}, graph.onnx needs {shape}: are "
                                 "the two files from the same run?")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        init.CopyFrom(numpy_helper.from_array(value.astype(dtype), init.name))
    kept = [p for p in model.metadata_props if p.key != STUB_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    return model


def _strip_annotations(graph: onnx.GraphProto) -> None:
    """Drop what ONNX Runtime does not need to run the graph: shape annotations (value_info), the exporter's
    metadata on the graph, its inputs, outputs and nodes, and doc strings."""
    graph.ClearField("value_info")
    graph.ClearField("metadata_props")
    graph.ClearField("doc_string")
    for value in (*graph.input, *graph.output):
        value.ClearField("metadata_props")
        value.ClearField("doc_string")
    for node in graph.node:
        node.ClearField("metadata_props")
        node.ClearField("doc_string")
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_annotations(attr.g)
            for sub in attr.graphs:
                _strip_annotations(sub)


def _same(value: np.ndarray, packed: np.ndarray) -> bool:
    return value.shape == packed.shape and np.array_equal(value, packed.astype(value.dtype))


def _is_stub(init: onnx.TensorProto) -> bool:
    """An initializer split_graph emptied: it has elements but no data, inline or external."""
    if init.data_location == onnx.TensorProto.EXTERNAL or not np.prod(init.dims, dtype=np.int64):
        return False
    return not any(init.HasField(name) if name == "raw_data" else len(getattr(init, name)) for name in DATA_FIELDS)
