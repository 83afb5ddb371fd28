"""Low-rank factorization (the "lowrank" stage): truncated SVD replaces a weight W (out x in) by two
smaller factors, W ~ B A with A = sqrt(S_r) V_r^T (r x in) and B = U_r sqrt(S_r) (out x r), so a layer
becomes two dense layers with r*(in + out) weights instead of in*out. The singular values are split
evenly between the factors, which keeps both at the same scale for fine-tuning and later quantization.

- torch Linear: Linear(in, r, no bias) -> Linear(r, out, bias). Conv1d/2d/3d (groups == 1): the kernel
  reshaped to (out, in*k) gives a k-sized conv in -> r with the original stride/padding/dilation, then a
  1x1 conv r -> out with the bias. Each replaced layer becomes an nn.Sequential of the two, so the
  export is a plain graph. Grouped/depthwise convs are skipped.
- ONNX (uploads): MatMul and Gemm with a constant float weight become MatMul -> MatMul (or -> Gemm,
  keeping the bias); Conv and quantized weights are left whole.
- Rank: `rank` for every layer (capped at min(out, in*k)), else the smallest rank holding `energy` of
  the squared singular values. A layer is factorized only when r*(in + out) < in*out.
- The classifier (the last weight layer to run) is kept whole: it has few outputs, so any useful rank
  barely saves weights, and its outputs are the model's answers.
- Pruning masks of factorized layers are dropped (the factors are dense); other layers keep theirs.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from workbench.errors import WorkbenchError
from workbench.models import copy_module, needs_layer_modules
from workbench.onnx_rewrite import tensor_names, unique_name
from workbench.pruning import check_patterns
from workbench.specs import LowRankSpec
from workbench.stages import Context, Variant, runner

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)
CLASSIFIER_REASON = "classifier (the last layer to run): kept whole, its few outputs leave little to save"


@dataclass(frozen=True)
class Factors:
    first: np.ndarray      # (r, in): applied first
    second: np.ndarray     # (out, r)
    rank: int
    full_rank: int
    energy: float          # share of the squared singular values kept


def choose_rank(singular: np.ndarray, spec: LowRankSpec) -> int:
    """`spec.rank` capped at the full rank, or the smallest rank holding `spec.energy` of sum(s^2)."""
    if spec.rank is not None:
        return min(spec.rank, len(singular))
    power = singular.astype(np.float64) ** 2
    if power.sum() == 0:
        return 1
    kept = np.cumsum(power) / power.sum()
    return int(min(len(singular), np.searchsorted(kept, spec.energy - 1e-12) + 1))


def factorize_matrix(matrix: np.ndarray, spec: LowRankSpec) -> Factors:
    """Truncated SVD of an (out, in) matrix at the rank `spec` asks for."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    rank = choose_rank(s, spec)
    root = np.sqrt(s[:rank])
    total = float(np.sum(s ** 2))
    energy = float(np.sum(s[:rank] ** 2) / total) if total > 0 else 1.0
    return Factors((root[:, None] * vt[:rank]).astype(matrix.dtype), (u[:, :rank] * root).astype(matrix.dtype),
                   rank, len(s), energy)


def saves_weights(rank: int, out: int, inner: int) -> bool:
    return rank * (out + inner) < out * inner


def _excluded(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(f"{name}.weight", p)),
                None)


def _row(name: str, op: str, shape: tuple[int, ...], f: Factors) -> dict[str, Any]:
    out, inner = shape[0], int(np.prod(shape[1:]))
    return {"layer": name, "op": op, "shape": list(shape), "rank": f.rank, "full_rank": f.full_rank,
            "energy_kept": round(f.energy, 4), "params_before": out * inner, "params_after": f.rank * (out + inner)}


def _skip_reason(f: Factors, shape: tuple[int, ...]) -> str | None:
    out, inner = shape[0], int(np.prod(shape[1:]))
    if saves_weights(f.rank, out, inner):
        return None
    return (f"rank {f.rank} of {f.full_rank} saves no weights ({f.rank * (out + inner):,} >= {out * inner:,}; "
            f"needs rank < {out * inner / (out + inner):.1f})")


# --- torch ---------------------------------------------------------------------------------------------

def _layers(module: nn.Module) -> dict[str, nn.Module]:
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {n: m for n, m in module.named_modules() if type(m) in kinds}


def _kept_whole(name: str, layer: nn.Module, spec: LowRankSpec, classifier: str | None) -> str | None:
    """Why a layer is left whole before any SVD is tried, or None."""
    pattern = _excluded(name, spec.exclude)
    if pattern:
        return f"excluded by pattern '{pattern}'"
    if name == classifier:
        return CLASSIFIER_REASON
    if getattr(layer, "groups", 1) != 1:
        return f"grouped/depthwise conv (groups={layer.groups})"
    return None


def last_layer(module: nn.Module, layers: dict[str, nn.Module], example: tuple) -> str | None:
    """The weight layer that runs last in the forward pass (its outputs are the model's outputs)."""
    import torch

    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: order.append(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            module.eval()(*example)
    except Exception as exc:
        raise WorkbenchError(f"lowrank: the model does not run on the example input ({str(exc)[:160]})") from None
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def split_layer(layer: nn.Module, f: Factors) -> nn.Module:
    """The two layers replacing `layer`: first (no bias) then second (with the bias)."""
    import torch
    from torch import nn

    kind, bias = type(layer), layer.bias is not None
    if kind is nn.Linear:
        first, second = nn.Linear(layer.in_features, f.rank, bias=False), nn.Linear(f.rank, layer.out_features, bias)
    else:
        first = kind(layer.in_channels, f.rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = kind(f.rank, layer.out_channels, 1, bias=bias)
    w = layer.weight
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(f.first).reshape(first.weight.shape))
        second.weight.copy_(torch.from_numpy(f.second).reshape(second.weight.shape))
        if bias:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(dtype=w.dtype, device=w.device)


def factorize_torch(module: nn.Module, spec: LowRankSpec, example: tuple) -> tuple[nn.Module, list[dict], dict]:
    """A copy of `module` with its Linear/Conv layers factorized; per-layer rows and {skipped: reason}."""
    model = copy_module(module)
    layers = _layers(model)
    check_patterns([f"{n}.weight" for n in layers], "lowrank exclude", spec.exclude)
    classifier = last_layer(model, layers, example)
    rows, skipped = [], {}
    for name, layer in layers.items():
        reason = _kept_whole(name, layer, spec, classifier)
        w = layer.weight.detach().cpu().numpy()
        if reason is None:
            f = factorize_matrix(w.reshape(w.shape[0], -1), spec)
            reason = _skip_reason(f, w.shape)
        if reason:
            skipped[name] = reason
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, split_layer(layer, f))
        rows.append(_row(name, type(layer).__name__, tuple(w.shape), f))
    return model.eval(), rows, skipped


# --- ONNX ----------------------------------------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _onnx_weight(node: onnx.NodeProto, inits: dict, readers: dict) -> tuple[np.ndarray | None, str | None]:
    """The node's weight as an (out, in) matrix, or None and why it cannot be factorized."""
    if node.op_type == "Conv":
        return None, "Conv factorization needs nn.Conv modules (load safetensors + a built-in architecture)"
    tensor = inits.get(node.input[1])
    if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
        return None, "weight is not a constant 2-D float initializer (quantized or computed)"
    if readers[node.input[1]] > 1:
        return None, "weight shared with another node"
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        return None, "Gemm with transA"
    w = numpy_helper.to_array(tensor)
    if node.op_type == "Gemm":
        w = w * np.float32(_attr(node, "alpha", 1.0))
        return (w if _attr(node, "transB", 0) else w.T), None
    return w.T, None


def _onnx_pair(node: onnx.NodeProto, f: Factors, graph: onnx.GraphProto, taken: set[str]) -> list[onnx.NodeProto]:
    base = node.name or node.output[0]
    a_name, b_name = unique_name(f"{node.input[1]}_lowrank_a", taken), unique_name(f"{node.input[1]}_lowrank_b", taken)
    graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(f.first.T), a_name),
                              numpy_helper.from_array(np.ascontiguousarray(f.second.T), b_name)])
    middle = unique_name(f"{base}_lowrank", taken)
    first = helper.make_node("MatMul", [node.input[0], a_name], [middle], name=unique_name(f"{base}_lowrank_a", taken))
    if node.op_type == "MatMul":
        return [first, helper.make_node("MatMul", [middle, b_name], list(node.output), name=node.name)]
    second = helper.make_node("Gemm", [middle, b_name, *node.input[2:]], list(node.output), name=node.name,
                              beta=float(_attr(node, "beta", 1.0)))
    return [first, second]


def factorize_onnx(model: onnx.ModelProto, spec: LowRankSpec) -> tuple[onnx.ModelProto, list[dict], dict]:
    """A copy of `model` with MatMul/Gemm weights factorized into two MatMuls (or MatMul + Gemm)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph, taken = out.graph, tensor_names(out.graph)
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            readers[i] = readers.get(i, 0) + 1
    original = list(graph.node)
    compute = {i for i, n in enumerate(original) if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1
               and n.input[1] in inits}
    check_patterns([original[i].input[1] for i in sorted(compute)], "lowrank exclude", spec.exclude)
    last = max(compute, default=None)   # the classifier: the last weight layer in topological order
    rows, skipped, nodes, replaced = [], {}, [], set()
    for i, node in enumerate(original):
        if i not in compute:
            nodes.append(node)
            continue
        name, w = node.input[1], None
        pattern = _excluded(name.removesuffix(".weight"), spec.exclude)
        if pattern:
            reason = f"excluded by pattern '{pattern}'"
        elif i == last:
            reason = CLASSIFIER_REASON
        else:
            w, reason = _onnx_weight(node, inits, readers)
        if w is not None:
            f = factorize_matrix(w, spec)
            reason = _skip_reason(f, w.shape)
            if reason is None:
                nodes.extend(_onnx_pair(node, f, graph, taken))
                rows.append(_row(name, node.op_type, w.shape, f))
                replaced.add(name)
                continue
        skipped[name] = reason
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in replaced]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    onnx.checker.check_model(out)
    return out, rows, skipped


# --- the stage -----------------------------------------------------------------------------------------

def _summary(spec: LowRankSpec, rows: list[dict]) -> str:
    rule = f"rank {spec.rank} (capped per layer)" if spec.rank else f"{spec.energy:.0%} of squared singular values"
    before, after = sum(r["params_before"] for r in rows), sum(r["params_after"] for r in rows)
    ranks = ", ".join(f"{r['layer']} {r['rank']}/{r['full_rank']}" for r in rows)
    return (f"factorized {len(rows)} layer(s) by truncated SVD ({rule}): their weights {before:,} -> {after:,} "
            f"({before / after:.1f}x fewer); ranks {ranks}")


def _tune(module: nn.Module, spec: LowRankSpec, masks: dict, ctx: Context) -> str:
    from workbench.evaluate import score, torch_predict
    from workbench.finetune import finetune

    if ctx.splits.train is None:
        raise WorkbenchError("lowrank.finetune: no training data (set data.train_path for user data)")
    test = ctx.splits.test

    def accuracy() -> str:
        return "?" if test.labels is None else f"{score(torch_predict(module, test), test.labels)['accuracy']:.4f}"

    before = accuracy()
    loss = finetune(module, spec.finetune, ctx.splits.train, masks,
                    progress=lambda f: ctx.progress(0.2 + 0.8 * f, "fine-tuning"), cancelled=ctx.cancelled)
    return (f"fine-tuned {spec.finetune.epochs} epoch(s) after factorizing: last loss {loss:.4f}, torch test "
            f"accuracy {before} -> {accuracy()}")


@runner("lowrank")
def run_lowrank(variant: Variant, spec: LowRankSpec, ctx: Context) -> Variant:
    if variant.quant_method is not None:
        raise WorkbenchError(f"lowrank: the model is already quantized ({variant.quant_method}); "
                             "put lowrank before quantize")
    tune = spec.finetune is not None and spec.finetune.epochs > 0
    if variant.module is not None:
        needs_layer_modules("lowrank", variant.module)
    ctx.progress(0.05, "factorizing")
    if variant.module is None:
        if tune:
            raise WorkbenchError("lowrank.finetune: fine-tuning needs a torch model; this variant is ONNX")
        model, rows, skipped = factorize_onnx(variant.onnx_model, spec)
        factorized = {r["layer"] for r in rows}
        out = variant.copy_meta(onnx_model=model, structured=True)
    else:
        module, rows, skipped = factorize_torch(variant.module, spec, ctx.example)
        factorized = {f"{r['layer']}.weight" for r in rows}
        out = variant.copy_meta(module=module, structured=True)
    if not rows:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped.items()) or "no Linear/Conv layer"
        raise WorkbenchError(f"lowrank: no layer was factorized ({reasons})")
    out.masks = {n: m for n, m in variant.masks.items() if n not in factorized}
    out.history.extend(rows)
    out.notes.append(_summary(spec, rows))
    if skipped:
        out.notes.append("left whole: " + "; ".join(f"{n} ({r})" for n, r in skipped.items()))
    if len(out.masks) < len(variant.masks):
        out.notes.append("pruning masks of the factorized layers were dropped: their SVD factors are dense "
                         "(the other layers keep theirs)")
    if tune:
        out.notes.append(_tune(out.module, spec, out.masks, ctx))
        ctx.check()
    ctx.progress(1.0, "factorized")
    return out
