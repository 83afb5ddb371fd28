"""Small, exact ONNX graph rewrites that quantizers need before ONNX Runtime's tools apply.

Contract: every rewrite edits the given ModelProto in place, keeps the graph's math identical (up to
float rounding of folded constants) and returns how many nodes it changed. Non-goals: subgraphs of
If/Loop/Scan, external-data tensors that are not loaded, general graph optimization.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger(__name__)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_<i>` for the first i that is not in `taken`; the result is added to `taken`."""
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in the top-level graph, to keep new names unique."""
    names = {t.name for t in graph.initializer}
    names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite `Gemm(A, W, C)` with a constant `W` into `MatMul(A, W')` (+ `Add(C)`), in place.

    `W'` is `alpha * W` laid out [K, N] (transposed when `transB=1`), a new initializer so other
    consumers of `W` are unaffected; a constant `C` is pre-multiplied by `beta`. Gemms with `transA=1`,
    a non-constant weight, or a non-constant bias with `beta != 1` are left alone. Returns the count.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    taken = tensor_names(graph)
    made: dict[tuple[str, bool, float], str] = {}  # tied weights get one rewritten copy, not one per Gemm
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        replacement = _gemm_replacement(node, inits, graph, taken, made)
        if replacement is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(replacement)
            rewritten += 1
    if rewritten:
        graph.ClearField("node")
        graph.node.extend(new_nodes)
        _drop_unused_initializers(graph)
        logger.debug("rewrote %d Gemm node(s) as MatMul(+Add)", rewritten)
    return rewritten


def _gemm_replacement(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], graph: onnx.GraphProto,
                      taken: set[str], made: dict[tuple[str, bool, float], str]) -> list[onnx.NodeProto] | None:
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    attrs = _attrs(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    weight = inits.get(node.input[1])
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bias = inits.get(bias_name) if bias_name else None
    if attrs.get("transA", 0) or weight is None or (bias_name and bias is None and beta != 1.0):
        return None
    key = (weight.name, bool(attrs.get("transB", 0)), alpha)
    if key not in made:
        made[key] = _matmul_weight(weight, *key[1:], graph, taken)
    w_name, base = made[key], node.name or node.output[0]
    if bias_name is None:
        return [helper.make_node("MatMul", [node.input[0], w_name], list(node.output),
                                 name=unique_name(f"{base}_MatMul", taken))]
    if bias is not None and beta != 1.0:
        c = numpy_helper.to_array(bias)
        bias_name = unique_name(f"{bias.name}_beta", taken)
        graph.initializer.append(numpy_helper.from_array(c * np.asarray(beta, dtype=c.dtype), bias_name))
    product = unique_name(f"{node.output[0]}_MatMul", taken)
    return [
        helper.make_node("MatMul", [node.input[0], w_name], [product], name=unique_name(f"{base}_MatMul", taken)),
        helper.make_node("Add", [product, bias_name], list(node.output), name=unique_name(f"{base}_Add", taken)),
    ]


def _matmul_weight(weight: onnx.TensorProto, trans_b: bool, alpha: float, graph: onnx.GraphProto,
                   taken: set[str]) -> str:
    """A new initializer `alpha * W` laid out [K, N]; returns its name (W's own when nothing changes)."""
    if not trans_b and alpha == 1.0:
        return weight.name
    w = numpy_helper.to_array(weight)
    if trans_b:
        w = w.T
    if alpha != 1.0:
        w = w * np.asarray(alpha, dtype=w.dtype)
    name = unique_name(f"{weight.name}_KxN", taken)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), name))
    return name


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes, including nodes of subgraphs (which may read outer-scope initializers)."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    used |= _used_names(sub)
    return used


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph)
    dropped = {t.name for t in graph.initializer if t.name not in used}
    if not dropped:
        return
    keep = [t for t in graph.initializer if t.name not in dropped]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)
    # Old-IR models also list initializers as graph inputs; a stale entry would become a required input.
    inputs = [i for i in graph.input if i.name not in dropped]
    if len(inputs) != len(graph.input):
        graph.ClearField("input")
        graph.input.extend(inputs)
