"""Per-layer model summaries (name, op, weight shape, params, share, MACs) for torch and ONNX alike.

MACs are multiply-accumulates of weight layers for one sample: output elements x inputs per output.
Activation-only products (e.g. attention scores) are not counted; unknown shapes give None, and so do
the layers of TorchScript modules (they take no Python forward hooks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from workbench.errors import WorkbenchError
from workbench.models import LoadedModel, traced_kind
from workbench.onnx_graph import weight_tensors


@dataclass(frozen=True)
class LayerRow:
    name: str
    op_type: str
    weight_shape: tuple[int, ...]
    params: int
    share: float
    macs: int | None
    sparsity: float


@dataclass(frozen=True)
class ModelSummary:
    label: str
    kind: str
    layers: tuple[LayerRow, ...]
    total_params: int          # every float parameter, biases and norms included
    weight_params: int         # the weights of the layers above (what pruning acts on)
    total_macs: int | None
    file_bytes: int | None
    inputs: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> list[dict]:
        return [asdict(row) for row in self.layers]


def _rows(raw: list[tuple[str, str, tuple[int, ...], int, int | None, float]], total: int) -> tuple[LayerRow, ...]:
    return tuple(LayerRow(n, op, shape, p, p / total if total else 0.0, macs, sp) for n, op, shape, p, macs, sp in raw)


def summarize(model: LoadedModel) -> ModelSummary:
    if model.module is not None:
        return _summarize_torch(model)
    return summarize_onnx(model.onnx_model, model.label, model.file_bytes)


def _summarize_torch(model: LoadedModel) -> ModelSummary:
    import torch

    from workbench.pruning import torch_weights

    module = model.module
    weights = torch_weights(module)
    per_sample_out: dict[str, int] = {}
    hooks = []
    def record(key: str):
        def hook(_module, _inputs, output) -> None:  # must return None: a value would replace the output
            per_sample_out.setdefault(key, int(output[0].numel()))
        return hook

    modules = dict(module.named_modules())  # get_submodule is not supported on TorchScript modules
    for name in weights:
        owner = modules[name.rsplit(".", 1)[0]] if "." in name else module
        if not isinstance(owner, torch.jit.ScriptModule):  # scripted modules take no Python hooks: MACs unknown
            hooks.append(owner.register_forward_hook(record(name)))
    try:
        if model.input_shape:
            with torch.no_grad():
                module(torch.zeros(1, *model.input_shape))
    except Exception:  # a shape we guessed wrong: MACs stay unknown, the table still shows params
        per_sample_out.clear()
    finally:
        for h in hooks:
            h.remove()
    exported = _exported_rows(model, {n.removesuffix(".weight"): tuple(p.shape) for n, p in weights.items()}) \
        if traced_kind(module) else {}
    raw = []
    for name, p in weights.items():
        owner_name = name.rsplit(".", 1)[0] if "." in name else ""
        owner = modules[owner_name] if owner_name else module
        op = owner.original_name if isinstance(owner, torch.jit.ScriptModule) else type(owner).__name__
        out = per_sample_out.get(name)
        macs = out * (p.numel() // p.shape[0]) if out is not None else None
        if (row := exported.get(name.removesuffix(".weight"))) is not None:   # a traced model: from its export
            op = op if isinstance(owner, torch.jit.ScriptModule) else row.op_type
            macs = row.macs
        sparsity = float((p == 0).sum()) / p.numel()
        raw.append((name.removesuffix(".weight"), op, tuple(p.shape), p.numel(), macs, sparsity))
    total = sum(p.numel() for p in module.parameters())
    return _finish(model.label, "torch", raw, total, model.file_bytes, ("input",))


def _exported_rows(model: LoadedModel, shapes: dict[str, tuple[int, ...]]) -> dict[str, LayerRow]:
    """The layers of a traced torch model (torch.export, TorchScript) as its ONNX export counts them, by layer
    name: its modules take no forward hooks (TorchScript) or are bare containers of traced ops (torch.export),
    so this is where their op types and MACs come from. `shapes` are the model's weight shapes by layer; when
    the exporter renamed weights (BatchNorm folded into a conv), rows are matched in order if every shape
    agrees. Empty when the input shape is unknown, the export fails or the layers do not line up."""
    import torch

    from workbench.export import export_onnx

    if not model.input_shape:
        return {}
    try:
        exported = export_onnx(model.module, (torch.zeros(2, *model.input_shape),))
    except WorkbenchError:
        return {}
    rows = summarize_onnx(exported, model.label).layers
    if all(r.name in shapes for r in rows) or [r.weight_shape for r in rows] != list(shapes.values()):
        return {row.name: row for row in rows}
    return dict(zip(shapes, rows, strict=True))


def model_macs(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(MACs, MACs with a nonzero weight) per sample of the Conv/Gemm/MatMul layers; None if unknown."""
    layers = summarize_onnx(model, "model").layers
    if not layers or any(r.macs is None for r in layers):
        return None
    return sum(r.macs for r in layers), round(sum(r.macs * (1 - r.sparsity) for r in layers))


def summarize_onnx(model: onnx.ModelProto, label: str, file_bytes: int | None = None) -> ModelSummary:
    out_elems = _per_sample_output_elems(model)
    producers = {n.name or n.output[0]: n for n in model.graph.node}
    raw = []
    for w in weight_tensors(model):
        node = producers.get(w.layer)
        out = out_elems.get(node.output[0]) if node is not None else None
        out_channels = _out_channels(w.op_type, w.shape, node)
        macs = out * (w.params // out_channels) if out is not None and out_channels else None
        sparsity = 1 - w.nonzero / w.params if w.params else 0.0
        raw.append((w.name.removesuffix(".weight"), w.op_type, w.shape, w.params, macs, sparsity))
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                if numpy_helper.to_array(t).dtype.kind == "f")
    init_names = {t.name for t in model.graph.initializer}
    inputs = tuple(i.name for i in model.graph.input if i.name not in init_names)
    return _finish(label, "onnx", raw, max(total, sum(r[3] for r in raw)), file_bytes, inputs)


def _finish(label: str, kind: str, raw: list, total: int, file_bytes: int | None, inputs: tuple) -> ModelSummary:
    weight_params = sum(r[3] for r in raw)
    macs = [r[4] for r in raw]
    total_macs = sum(macs) if raw and all(m is not None for m in macs) else None
    return ModelSummary(label, kind, _rows(raw, total), total, weight_params, total_macs, file_bytes, inputs)


def _out_channels(op_type: str, shape: tuple[int, ...], node: onnx.NodeProto | None) -> int | None:
    if op_type in ("Conv", "QLinearConv", "ConvInteger"):
        return shape[0]
    if op_type == "Gemm" and node is not None:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return shape[0] if trans_b else shape[-1]
    return shape[-1]


def _per_sample_output_elems(model: onnx.ModelProto) -> dict[str, int]:
    """Output elements per sample for each tensor whose shape is known apart from the batch axis."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort; MACs become unknown
        return {}
    out = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) < 1:
            continue
        rest = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if all(r for r in rest):
            out[value.name] = int(np.prod(rest)) if rest else 1
    return out
