"""An ONNX graph as a trainable torch module, so that the methods which train or reshape layers (fine-tuning,
structured pruning, QAT, distillation, low-rank, transfer, centroid fine-tuning) also run on ONNX uploads.

The maintained converters (onnx2torch, onnx2pytorch) both import torchvision for their detection ops, and
torchvision's PyPI wheels load only with the CUDA build of torch; so this module converts the ops that
classification networks export to itself:
- Conv -> nn.Conv1d/2d/3d, Gemm and MatMul by a 2-D weight (with the Add of its bias) -> nn.Linear,
  BatchNormalization -> nn.BatchNorm1d/2d/3d, LayerNormalization with its scale -> nn.LayerNorm, a Gather
  of rows of a 2-D float table (token and position embeddings) -> nn.Embedding, LSTM / GRU -> nn.LSTM / nn.GRU
  (`workbench.onnx_recurrent`): real layers,
  named after their ONNX weights ("features.0.weight" becomes the module features.0), so layer names in
  recipes, notes and tables stay the graph's;
- other float initializers of more than one value (positional embeddings, class tokens) become parameters;
- every other op is a function applied in the graph's order (`workbench.onnx_ops.OPS`; also a Gemm or MatMul
  whose weight is computed or read by other nodes too); shape arithmetic (Shape, Gather, Concat...) runs on
  Python ints, so the batch axis stays dynamic when the module is exported again;
- a Reshape's constant entries that copy the input's size at the same axis become "copy" (0), a leading -1
  that stands for the batch becomes "copy" too, and a reshape to (batch, rest) becomes a flatten: removing
  channels before a reshape then either stays valid or fails loudly, never folding samples into each other.
`convert` checks the module against ONNX Runtime on sample inputs; an op outside `OPS`, a quantized graph or
a difference above tolerance is a WorkbenchError that names it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from workbench.data import Dataset, Splits
from workbench.errors import WorkbenchError
from workbench.models import LoadedModel
from workbench.onnx_ops import OPS, axis_index
from workbench.onnx_recurrent import recurrent_layer

if TYPE_CHECKING:
    import onnxruntime as ort

TOLERANCE = 1e-3     # max |torch - ORT| allowed, relative to the largest |output| (at least 1)
CHECK_SAMPLES = 32   # test samples the conversion is checked on


@dataclass
class Step:
    """One node: `op` applied to the values named `inputs` (None: an omitted optional input); `layer` is the
    dotted path of the module it calls, if any."""

    op: str
    inputs: list[str | None]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None


class OnnxModule(nn.Module):
    """Runs `steps` in order. Layers and parameters are looked up by name at every call, so a method that
    replaces a layer (low-rank factors, QAT wrappers) or resizes one (structured pruning) is followed."""

    def __init__(self, steps: list[Step], inputs: list[str], outputs: list[str], params: dict[str, str],
                 constants: dict[str, Any]) -> None:
        super().__init__()
        self.steps, self.input_names, self.output_names = steps, inputs, outputs
        self.param_paths = params        # initializer name -> parameter path (loose parameters)
        self.constants = constants       # initializer name -> Python value (ints) or numpy array

    def forward(self, *args: torch.Tensor) -> Any:
        env: dict[str, Any] = dict(zip(self.input_names, args, strict=True))
        for name, path in self.param_paths.items():
            env[name] = self.get_parameter(path)
        for name, value in self.constants.items():
            env[name] = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        for step in self.steps:
            values = [None if n is None else env[n] for n in step.inputs]
            if step.layer is not None:
                result = OPS[step.op](step.attrs, values, self.get_submodule(step.layer))
            else:
                result = OPS[step.op](step.attrs, values)
            outs = result if isinstance(result, tuple) and len(step.outputs) > 1 else (result,)
            env.update(zip(step.outputs, outs, strict=False))
        results = tuple(env[n] for n in self.output_names)
        return results[0] if len(results) == 1 else results


def _module_type(inputs: int) -> type[OnnxModule]:
    """An OnnxModule subclass whose forward names its `inputs` arguments: torch.export matches dynamic
    shapes to the forward's signature, and `*args` reads to it as one tuple."""
    def forward(self: OnnxModule, *args: torch.Tensor) -> Any:
        return OnnxModule.forward(self, *args)

    arg = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(   # type: ignore[attr-defined]
        [inspect.Parameter("self", arg)] + [inspect.Parameter(f"input_{i}", arg) for i in range(inputs)])
    return type(f"OnnxModule{inputs}", (OnnxModule,), {"forward": forward})


# ------------------------------------------------------------------------------------------------ conversion
def _attrs(node: onnx.NodeProto, opset: int) -> dict[str, Any]:
    out: dict[str, Any] = {"_op": node.op_type, "_outputs": len(node.output), "_opset": opset}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise WorkbenchError(f"the ONNX {node.op_type} node '{node.name or node.output[0]}' has a subgraph "
                                 "(control flow); it does not convert")
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            array = numpy_helper.to_array(value)
            if array.dtype.kind == "f":
                value = torch.from_numpy(array.copy())
            else:
                value = tuple(int(v) for v in array.reshape(-1)) if array.ndim else int(array)
        elif a.name == "value_float":
            value = torch.tensor(value)
        elif a.name == "value_floats":
            value = torch.tensor(list(value))
        elif a.name == "value_ints":
            value = tuple(value)
        out[a.name] = value
    return out


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class _Paths:
    """Dotted paths for the module's layers and loose parameters, kept free of clashes: a path is taken
    when it is a leaf or a container of leaves, and a leaf cannot hold others."""

    def __init__(self) -> None:
        self.leaves: set[str] = set()
        self.containers: set[str] = set()

    def free(self, path: str) -> bool:
        parts = path.split(".")
        return (all(p and not p[0].isdigit() or p.isdigit() for p in parts) and path not in self.leaves
                and path not in self.containers and not any(p in self.leaves for p in _prefixes(path)))

    def claim(self, name: str, strip_weight: bool) -> str:
        """"features.0.weight" -> "features.0" for a layer (its parameter is then features.0.weight again);
        a name that cannot be a path, or whose path is taken, becomes one component of word characters."""
        path = name[: -len(".weight")] if strip_weight and name.endswith(".weight") else name
        if not self.free(path):
            path = re.sub(r"\W", "_", name)
            while not self.free(path):
                path += "_"
        self.leaves.add(path)
        self.containers.update(_prefixes(path))
        return path


def _attach(root: nn.Module, path: str, child: nn.Module | nn.Parameter) -> None:
    parent = root
    for part in path.split(".")[:-1]:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    last = path.split(".")[-1]
    if isinstance(child, nn.Parameter):
        parent.register_parameter(last, child)
    else:
        parent.add_module(last, child)


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.fixed: set[str] = set()          # values of Constant nodes: constants, never trained
        for node in graph.node:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if node.op_type == "Constant" and value is not None and value.data_type != onnx.TensorProto.STRING:
                self.inits[node.output[0]] = numpy_helper.to_array(value)
                self.fixed.add(node.output[0])
        self.shapes = _static_shapes(model)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
        self.root = nn.Module()
        self.paths = _Paths()
        self.used: set[str] = set()           # initializers a layer took
        self.steps: list[Step] = []
        self.skip: set[int] = set()            # positions of nodes a layer took in (a MatMul's bias Add)
        self.position = {id(node): i for i, node in enumerate(graph.node)}

    def float_init(self, name: str, node: onnx.NodeProto | None = None) -> np.ndarray | None:
        """The float initializer `name`; with `node`, only when no other node reads it (a layer owns it)."""
        value = self.inits.get(name)
        if node is not None and any(other is not node for other in self.consumers.get(name, [])):
            return None
        return value if value is not None and value.dtype.kind == "f" else None

    def add_layer(self, module: nn.Module, weight_name: str) -> str:
        path = self.paths.claim(weight_name, strip_weight=True)
        _attach(self.root, path, module)
        return path

    def build(self) -> None:
        nodes = list(self.model.graph.node)
        for i, node in enumerate(nodes):
            if i in self.skip or (node.op_type == "Constant" and node.output[0] in self.fixed):
                continue
            attrs = _attrs(node, self.opset)
            inputs: list[str | None] = [n or None for n in node.input]
            maker = getattr(self, f"_make_{node.op_type}", None)
            step = maker(node, attrs, inputs) if maker else None
            if step is None:
                if node.op_type not in OPS:
                    raise WorkbenchError(f"the ONNX op {node.op_type} (node '{node.name or node.output[0]}') has no "
                                         "torch conversion")
                if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
                    raise WorkbenchError("a Dropout's mask output is used; only inference graphs convert")
                if node.op_type == "Reshape":
                    self._reshape_attrs(node, attrs)
                step = Step(node.op_type, inputs, list(node.output), attrs)
            self.steps.append(step)

    # -- layers
    def _make_Conv(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        weight = self.float_init(node.input[1], node)
        if weight is None:
            return self._unsupported(node, "its weight is not a float initializer of its own")
        bias = self.float_init(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            return self._unsupported(node, "its bias is not a float initializer of its own")
        dims = weight.ndim - 2
        group = attrs.get("group", 1)
        same = attrs.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER")
        pads = [0] * 2 * dims if same else list(attrs.get("pads", [0] * 2 * dims))
        symmetric = pads[:dims] == pads[dims:]
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        conv = cls(weight.shape[1] * group, weight.shape[0], tuple(weight.shape[2:]),
                   stride=tuple(attrs.get("strides", [1] * dims)), padding=tuple(pads[:dims]) if symmetric else 0,
                   dilation=tuple(attrs.get("dilations", [1] * dims)), groups=group, bias=bias is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.copy()))
        path = self.add_layer(conv, node.input[1])
        self._took(node.input[1], node.input[2:3] if bias is not None else [])
        step_attrs = {} if symmetric else {"pad": [p for k in reversed(range(dims)) for p in (pads[k], pads[k + dims])]}
        if same:   # padding that depends on the input's size: computed at every call
            step_attrs = {key: attrs[key] for key in ("auto_pad", "strides", "dilations") if key in attrs}
            step_attrs["kernel_shape"] = list(weight.shape[2:])
        return Step("layer", inputs[:1], list(node.output), step_attrs, path)

    def _linear(self, weight: np.ndarray, bias: np.ndarray | None, name: str, transposed: bool) -> str:
        w = weight.T if transposed else weight
        linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            if bias is not None:
                linear.bias.copy_(torch.from_numpy(bias.reshape(-1).copy()))
        path = self.add_layer(linear, name)
        self._took(name, [])
        return path

    def _make_Gemm(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        weight = self.float_init(node.input[1], node)
        bias = self.float_init(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        if weight is None or weight.ndim != 2 or attrs.get("transA", 0) or (len(node.input) > 2 and node.input[2]
                                                                             and bias is None):
            return None   # not a layer of its own (a computed or shared weight): the functional Gemm
        out = weight.shape[0] if attrs.get("transB", 0) else weight.shape[1]
        if bias is not None and bias.size != out:
            return self._unsupported(node, f"its bias has {bias.size} values for {out} outputs")
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        path = self._linear(weight * np.float32(alpha), None if bias is None else bias * np.float32(beta),
                            node.input[1], transposed=not attrs.get("transB", 0))
        if bias is not None:
            self.used.add(node.input[2])
        return Step("layer", inputs[:1], list(node.output), {}, path)

    def _make_MatMul(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        weight = self.float_init(node.input[1], node)
        if weight is None or weight.ndim != 2 or node.input[0] in self.inits:
            return None   # x @ y of two values, or a weight other nodes read too: a plain matmul
        consumers = self.consumers.get(node.output[0], [])
        add = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Add" else None
        bias_name = None
        if add is not None and node.output[0] not in self.graph_outputs:
            other = [n for n in add.input if n != node.output[0]]
            bias = self.float_init(other[0], add) if len(other) == 1 else None
            if bias is not None and bias.size == weight.shape[1] and bias.ndim <= 2:
                bias_name = other[0]
        if bias_name is None:
            path = self._linear(weight, None, node.input[1], transposed=True)
            return Step("layer", inputs[:1], list(node.output), {}, path)
        path = self._linear(weight, self.inits[bias_name], node.input[1], transposed=True)
        self.used.add(bias_name)
        self.skip.add(self.position[id(add)])
        return Step("layer", inputs[:1], list(add.output), {}, path)

    def _make_BatchNormalization(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        params = [self.float_init(n, node) for n in node.input[1:5]]
        rank = len(self.shapes.get(node.input[0]) or [0, 0, 0, 0])
        training = len(node.output) > 1 and any(node.output[1:])
        if any(p is None for p in params) or rank not in (2, 3, 4, 5) or training:
            return self._unsupported(node, "only inference BatchNormalization with constant statistics converts")
        scale, bias, mean, var = params
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
        norm = cls(scale.size, eps=attrs.get("epsilon", 1e-5), momentum=1 - attrs.get("momentum", 0.9))
        with torch.no_grad():
            for target, value in ((norm.weight, scale), (norm.bias, bias), (norm.running_mean, mean),
                                  (norm.running_var, var)):
                target.copy_(torch.from_numpy(value.copy()))
        path = self.add_layer(norm, node.input[1])
        self._took(node.input[1], node.input[2:5])
        return Step("layer", inputs[:1], list(node.output)[:1], {}, path)

    def _make_LayerNormalization(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        scale = self.float_init(node.input[1], node)
        bias = self.float_init(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            return None    # a bias other nodes read too: the functional form
        rank = len(self.shapes.get(node.input[0]) or [])
        axis = attrs.get("axis", -1)
        stats = len(node.output) > 1 and any(node.output[1:])
        if scale is None or not rank or axis_index(axis, rank) != rank - 1 or stats:
            return None    # the functional form handles any axis
        norm = nn.LayerNorm(scale.size, eps=attrs.get("epsilon", 1e-5), bias=bias is not None)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(scale.reshape(-1).copy()))
            if bias is not None:
                norm.bias.copy_(torch.from_numpy(bias.reshape(-1).copy()))
        path = self.add_layer(norm, node.input[1])
        self._took(node.input[1], node.input[2:3] if bias is not None else [])
        return Step("layer", inputs[:1], list(node.output)[:1], {}, path)

    def _make_Gather(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        table = self.float_init(node.input[0], node)
        if table is None or table.ndim != 2 or attrs.get("axis", 0) != 0 or node.input[1] in self.inits:
            return None   # shape arithmetic, a computed or shared table, or constant indices: a plain Gather
        embedding = nn.Embedding(*table.shape)
        with torch.no_grad():
            embedding.weight.copy_(torch.from_numpy(table.copy()))
        path = self.add_layer(embedding, node.input[0])
        self._took(node.input[0], [])
        return Step("layer", inputs[1:2], list(node.output), {}, path)

    def _make_LSTM(self, node: onnx.NodeProto, attrs: dict, inputs: list) -> Step | None:   # noqa: N802
        given = list(node.input) + [""] * (8 - len(node.input))
        w, r = self.float_init(given[1], node), self.float_init(given[2], node)
        b = self.float_init(given[3], node) if given[3] else None
        if w is None or r is None or (given[3] and b is None):
            return self._unsupported(node, "its weights are not float initializers of its own")
        if given[4] or given[7]:
            return self._unsupported(node, "per-sample sequence lengths" if given[4] else "peephole weights")
        try:
            layer = recurrent_layer(node.op_type, attrs, w, r, b)
        except WorkbenchError as exc:
            return self._unsupported(node, str(exc))
        path = self.add_layer(layer, given[1])
        self._took(given[1], [n for n in given[2:4] if n])
        return Step("recurrent", [given[0] or None, given[5] or None, given[6] or None], list(node.output),
                    {"reverse": attrs.get("direction", b"") == b"reverse", "_outputs": len(node.output)}, path)

    _make_GRU = _make_LSTM   # noqa: N815

    def _took(self, weight: str, others: Sequence[str]) -> None:
        if weight in self.used:   # a weight two layers share would be trained as two copies
            raise WorkbenchError(f"the weight {weight} is used by two layers; shared weights do not convert")
        self.used.add(weight)
        self.used.update(others)

    def _unsupported(self, node: onnx.NodeProto, why: str) -> None:
        raise WorkbenchError(f"the ONNX {node.op_type} node '{node.name or node.output[0]}' does not convert: {why}")

    def _reshape_attrs(self, node: onnx.NodeProto, attrs: dict) -> None:
        """Copy-from-input (0) for constant entries equal to the input's size on that axis, and flatten for a
        reshape to (batch, rest), so that a layer narrowed before the reshape stays consistent with it."""
        source, target = self.shapes.get(node.input[0]), self.inits.get(node.input[1])
        if source is None or target is None or attrs.get("allowzero", 0) and 0 in target.tolist():
            return
        entries = [int(v) for v in target.reshape(-1)]
        rest = source[1:]
        if len(entries) == 2 and len(source) >= 2 and (entries[0] in (-1, 0) or entries[0] == source[0]) and (
                entries[1] == -1 or (all(isinstance(d, int) for d in rest) and entries[1] == math.prod(rest))):
            attrs["flatten"] = True
            return
        copied = [0 if 0 < k < len(source) and isinstance(source[k], int) and v == source[k] else v
                  for k, v in enumerate(entries)]
        sizes = [source[k] if v == 0 else v for k, v in enumerate(copied)]
        if copied[0] in (-1, source[0]) and all(isinstance(d, int) for d in (*rest, *sizes[1:])) and \
                math.prod(sizes[1:]) == math.prod(rest):
            # the entry is the batch (-1, or a graph's fixed batch size): copying it keeps the module batch-free
            # and makes a narrowed layer fail loudly instead of folding samples into each other
            copied[0] = 0
        if copied != entries:
            attrs["allowzero"], attrs["shape"] = 0, tuple(copied)

    def module(self) -> OnnxModule:
        graph = self.model.graph
        inputs = [i.name for i in graph.input if i.name not in self.inits]
        params: dict[str, str] = {}
        constants: dict[str, Any] = {}
        for name, value in self.inits.items():
            if name in self.used:
                continue
            if value.dtype.kind == "f" and value.size > 1 and name not in self.fixed:
                path = self.paths.claim(name, strip_weight=False)
                _attach(self.root, path, nn.Parameter(torch.from_numpy(value.copy())))
                params[name] = path
            elif value.dtype.kind in "iu" and value.ndim <= 1:
                constants[name] = tuple(int(v) for v in value.reshape(-1)) if value.ndim else int(value)
            else:
                constants[name] = value.copy()
        module = _module_type(len(inputs))(self.steps, inputs, [o.name for o in graph.output], params, constants)
        for name, child in self.root.named_children():
            module.add_module(name, child)
        for name, param in self.root.named_parameters(recurse=False):
            module.register_parameter(name, param)
        return module


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Per value name, its inferred shape (ints, or a name for a symbolic axis such as the batch)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:   # shape inference is a help here, not a requirement
        return {}
    shapes: dict[str, list[int | str]] = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        kind = info.type.WhichOneof("value")
        if kind != "tensor_type" or not info.type.tensor_type.HasField("shape"):
            continue
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                             for d in info.type.tensor_type.shape.dim]
    return shapes


QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
             "ConvInteger", "MatMulNBits", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class Conversion:
    module: OnnxModule
    layers: int                            # Conv/Linear modules
    max_error: float                       # max |torch - ONNX Runtime| on the check inputs

    def fidelity(self) -> str:
        layers = f"{self.layers} Conv/Linear layer{'' if self.layers == 1 else 's'}"
        return f"{layers}; outputs within {self.max_error:.1e} of ONNX Runtime"

    def note(self) -> str:
        return (f"converted to torch modules from the ONNX graph for training and layer edits ({self.fidelity()}); "
                "the variants are exported from them again, so their graphs may differ from the baseline's beyond "
                "the compression")


def random_check_inputs(session: ort.InferenceSession, samples: int = CHECK_SAMPLES) -> list[np.ndarray] | None:
    """`samples` random float inputs of the session's declared per-sample shapes (a fixed batch is checked in
    chunks), to check a conversion without data; None when an input is not float or has a size other than the
    batch unnamed."""
    arrays, rng = [], np.random.default_rng(0)
    for meta in session.get_inputs():
        dims = list(meta.shape)
        if meta.type not in ("tensor(float)", "tensor(double)") or not dims or \
                not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None
        dtype = np.float32 if meta.type == "tensor(float)" else np.float64
        arrays.append(rng.standard_normal((samples, *dims[1:])).astype(dtype))
    return arrays


def convert_loaded(loaded: LoadedModel, splits: Splits) -> tuple[Conversion, Splits, onnx.ModelProto]:
    """`convert_for_run` of an ONNX upload, or of a traced torch model's ONNX export (a .pt2 or TorchScript
    model runs traced ops, with no layer modules to edit); also returns the graph it converted."""
    model = loaded.onnx_model
    if model is None:
        from workbench.export import export_onnx
        from workbench.pipeline import example_inputs

        model = export_onnx(loaded.module, example_inputs(splits.test))
    conversion, splits = convert_for_run(model, splits)
    return conversion, splits, model


def convert_for_run(model: onnx.ModelProto, splits: Splits) -> tuple[Conversion, Splits]:
    """`model` converted (checked on the first test samples), and the splits shaped and typed as the graph's
    inputs, which is how ONNX Runtime sees them and now how the torch module gets them."""
    from workbench.evaluate import feeds, make_session

    session = make_session(model)

    def typed(data: Dataset | None) -> Dataset | None:
        if data is None:
            return None
        return dataclasses.replace(data, inputs=tuple(feeds(session, data, 0, len(data)).values()))

    splits = Splits(typed(splits.train), typed(splits.calib), typed(splits.test))
    return convert(model, [x[:CHECK_SAMPLES] for x in splits.test.inputs], session), splits


def convert(model: onnx.ModelProto, check_inputs: Sequence[np.ndarray],
            session: ort.InferenceSession | None = None) -> Conversion:
    """`model` as an OnnxModule (eval mode), checked against ONNX Runtime (`session` of `model`, made when not
    given) on `check_inputs` (one array per graph input, batch first). Raises WorkbenchError naming the first
    op, node or difference that stops it."""
    quantized = sorted({n.op_type for n in model.graph.node} & QUANT_OPS)
    if quantized:
        raise WorkbenchError(f"the graph is quantized ({', '.join(quantized)}); only float graphs convert to torch")
    other = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if other:
        raise WorkbenchError(f"the graph uses ops of the {other[0]} domain; only standard ONNX ops convert to torch")
    builder = _Builder(model)
    builder.build()
    module = builder.module().eval()
    if session is None:
        from workbench.evaluate import make_session

        session = make_session(model)
    error = _check(module, session, check_inputs)
    layers = sum(isinstance(m, nn.Linear | nn.modules.conv._ConvNd) for m in module.modules())
    return Conversion(module, layers, error)


def _check(module: OnnxModule, session: ort.InferenceSession, inputs: Sequence[np.ndarray]) -> float:
    """Max relative difference between the module's first output and ONNX Runtime's (the output every
    measurement reads), on `inputs` typed as the graph takes them; a graph with a fixed batch size runs in
    chunks of it, while the module takes them all at once."""
    from workbench.evaluate import feeds, fixed_batch, predict

    data = Dataset("conversion check", tuple(inputs))
    expected = predict(session, data, batch_size=len(data))
    typed = feeds(session, data, 0, len(data)).values()
    try:
        with torch.no_grad():
            got = module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in typed))
    except WorkbenchError:
        raise
    except Exception as exc:   # an op's conversion that does not fit this graph (an unexpected rank, say)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fixed = fixed_batch(session)
        hint = (f"; the graph was exported for batch size {fixed} only and folds it into its ops: export it with a "
                "dynamic batch axis") if fixed is not None else ""
        raise WorkbenchError(f"the converted model does not run ({type(exc).__name__}: {text[:200]}){hint}") from None
    have = (got[0] if isinstance(got, tuple) else got).detach().numpy().astype(np.float32)
    if expected.shape != have.shape:
        raise WorkbenchError(f"the converted model's output has shape {have.shape}, ONNX Runtime's {expected.shape}")
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    error = float(np.abs(expected - have).max(initial=0)) / scale
    if not error <= TOLERANCE:
        raise WorkbenchError(f"the converted model differs from ONNX Runtime (max relative difference {error:.2g})")
    return error
