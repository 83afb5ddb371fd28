"""Unstructured and N:M pruning: decide which weights to zero, on torch modules or directly on ONNX graphs.

Mask computation works on plain numpy arrays, so the same code prunes a torch model and the initializers of an
uploaded ONNX model. A method is a scoring function registered in `PRUNERS` (higher score = keep), given the
weight, a seeded generator and, where the caller measured it, the RMS of the input each weight multiplies
(workbench.activations; None elsewhere). Scope, overrides, exclusions, already-pruned weights, N:M groups
(along each weight's input axis: 1 for torch Linear/Conv, read from the graph for ONNX) and the per-round
targets of the iterative and gradual schedules are handled here once. Zeros are written into dense tensors:
this module never claims a speedup (see workbench.claims).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from workbench.errors import WorkbenchError
from workbench.onnx_graph import COMPUTE_OPS, PASS_THROUGH, initializers, weight_tensors
from workbench.specs import PruneSpec, nm_pattern

Scorer = Callable[[np.ndarray, np.random.Generator, np.ndarray | None], np.ndarray]
PRUNERS: dict[str, Scorer] = {}


def pruner(name: str) -> Callable[[Scorer], Scorer]:
    def register(fn: Scorer) -> Scorer:
        PRUNERS[name] = fn
        return fn

    return register


@pruner("magnitude")
def magnitude_scores(weight: np.ndarray, rng: np.random.Generator, rms: np.ndarray | None = None) -> np.ndarray:
    return np.abs(weight).astype(np.float64)


@pruner("random")
def random_scores(weight: np.ndarray, rng: np.random.Generator, rms: np.ndarray | None = None) -> np.ndarray:
    return rng.random(weight.shape)


@pruner("lamp")
def lamp_scores(weight: np.ndarray, rng: np.random.Generator, rms: np.ndarray | None = None) -> np.ndarray:
    """Layer-adaptive magnitude pruning (LAMP, Lee et al. 2021): w² over the sum of w² of this layer's
    weights at least as large. Within a layer it ranks like magnitude; across layers the scores do not
    depend on each layer's scale (BatchNorm folded into a conv, say), and each layer's largest weight
    scores 1, so a global cut keeps every layer alive where magnitude would empty one."""
    squares = weight.astype(np.float64).ravel() ** 2
    order = np.argsort(squares, kind="stable")
    ascending = squares[order]
    tail = np.cumsum(ascending[::-1])[::-1]          # per position: that weight and every larger one
    scores = np.empty_like(squares)
    scores[order] = np.divide(ascending, tail, out=np.zeros_like(ascending), where=tail > 0)
    return scores.reshape(weight.shape)


@pruner("wanda")
def wanda_scores(weight: np.ndarray, rng: np.random.Generator, rms: np.ndarray | None = None) -> np.ndarray:
    """Pruning by weights and activations (Wanda, Sun et al. 2024): |w| times the RMS of the input it
    multiplies on calibration samples, the size of its typical contribution to the output. A weight whose
    input is always zero (a blank pixel, a dead unit) scores zero, however large. Without input
    statistics for a layer, |w| alone."""
    scores = np.abs(weight).astype(np.float64)
    return scores if rms is None else scores * rms


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether a glob pattern matches weight `name`, its layer (the name without '.weight') or a module
    that holds the layer: 'fc1' also covers 'fc1.0' and 'fc1.1', the factors low-rank splits fc1 into."""
    parts = name.removesuffix(".weight").split(".")
    names = [name, *(".".join(parts[:i]) for i in range(len(parts), 0, -1))]
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def check_patterns(names: list[str], where: str, patterns) -> None:
    """A layer pattern (exclude / overrides) that matches none of the weights `names` is a typo or a recipe
    for another model: an error naming the layers, never a silent no-op."""
    for pattern in patterns:
        if not any(_matches(n, [pattern]) for n in names):
            known = ", ".join(n.removesuffix(".weight") for n in names)
            raise WorkbenchError(f"{where}: '{pattern}' matches no layer (layers: {known})")


def override_for(name: str, overrides: dict, default=None):
    """The value of the first pattern in `overrides` (glob -> value, in order) that matches layer `name`."""
    return next((v for p, v in overrides.items() if _matches(name, [p])), default)


def layer_targets(names: list[str], spec: PruneSpec, sparsity: float) -> dict[str, float | None]:
    """Per layer: its own sparsity (override / layer scope), 0 if excluded, None = global pool."""
    targets: dict[str, float | None] = {}
    for name in names:
        override = override_for(name, spec.overrides)
        if _matches(name, spec.exclude):
            targets[name] = 0.0
        elif override is not None:
            targets[name] = min(override, sparsity) if sparsity < spec.sparsity else override
        else:
            targets[name] = None if spec.scope == "global" else sparsity
    return targets


def round_targets(spec: PruneSpec) -> list[float]:
    """The sparsity each round prunes to: `per_round` of the survivors per round (iterative, the last
    round lands on `sparsity`), the cubic s_r = sparsity * (1 - (1 - r/steps)^3) (gradual), or one round."""
    rounds = spec.rounds
    if spec.schedule == "gradual":
        return [spec.sparsity * (1 - (1 - r / rounds) ** 3) for r in range(1, rounds + 1)]
    return [spec.sparsity if r == rounds else 1 - (1 - spec.per_round) ** r for r in range(1, rounds + 1)]


def compute_masks(weights: dict[str, np.ndarray], spec: PruneSpec, sparsity: float | None = None,
                  keep: dict[str, np.ndarray] | None = None, seed: int | None = None,
                  in_axes: dict[str, int | None] | None = None,
                  rms: dict[str, np.ndarray] | None = None,
                  out_axes: dict[str, int | None] | None = None) -> dict[str, np.ndarray]:
    """Boolean keep-masks reaching `sparsity` (default: spec.sparsity). Weights already masked out
    in `keep` stay pruned, so iterative rounds only remove survivors. With `spec.nm`, N:M groups run
    along `in_axes[name]` (default 1; None = unknown layout, left dense). `rms`: per weight, its inputs'
    RMS (broadcasting against it), for the methods that read it. With scope "unit", each output unit (the
    slices along `out_axes[name]`, default 0; None = unknown layout: the layer as one unit) keeps the same
    share."""
    if not weights:
        raise WorkbenchError("prune: the model has no Linear/Conv (MatMul/Gemm/Conv) weights to prune")
    check_patterns(list(weights), "prune exclude", spec.exclude)
    check_patterns(list(weights), "prune overrides", spec.overrides)
    sparsity = spec.sparsity if sparsity is None else sparsity
    rng = np.random.default_rng(spec.seed if seed is None else seed)
    scores = {}
    for name, w in weights.items():
        s = PRUNERS[spec.method](w, rng, (rms or {}).get(name))
        if keep is not None and name in keep:
            s = np.where(keep[name], s, -np.inf)
        scores[name] = s
    if spec.nm is not None:
        return _nm_masks(scores, spec, keep or {}, in_axes or {})
    targets = layer_targets(list(weights), spec, sparsity)
    axes = out_axes or {}
    masks = {n: _unit_mask(scores[n], t, axes.get(n, 0)) if spec.scope == "unit" else _top_k_mask(scores[n], t)
             for n, t in targets.items() if t is not None}
    pooled = [n for n, t in targets.items() if t is None]
    if pooled:
        flat = np.concatenate([scores[n].ravel() for n in pooled])
        cut = _threshold(flat, sparsity)
        for n in pooled:
            masks[n] = scores[n] > cut if cut is not None else np.ones_like(scores[n], dtype=bool)
    return masks


def _threshold(flat: np.ndarray, sparsity: float) -> float | None:
    k = int(round(sparsity * flat.size))
    if k <= 0:
        return None
    return float(np.partition(flat, k - 1)[k - 1])


def _top_k_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    k = int(round(sparsity * scores.size))
    mask = np.ones(scores.size, dtype=bool)
    if k > 0:
        mask[np.argsort(scores.ravel(), kind="stable")[:k]] = False
    return mask.reshape(scores.shape)


def _unit_mask(scores: np.ndarray, sparsity: float, axis: int | None) -> np.ndarray:
    """The lowest `sparsity` share of every output unit's scores pruned (the slices along `axis`), each unit
    keeping at least one weight (a conv reading one channel has 9 weights per unit: 95% of them rounds to all
    9); with an unknown axis, the whole layer as one unit."""
    if axis is None:
        return _top_k_mask(scores, sparsity)
    rows = np.moveaxis(scores, axis, 0).reshape(scores.shape[axis], -1)
    k = min(int(round(sparsity * rows.shape[1])), rows.shape[1] - 1)
    keep = np.ones(rows.shape, dtype=bool)
    if k > 0:
        np.put_along_axis(keep, np.argsort(rows, axis=1, kind="stable")[:, :k], False, axis=1)
    moved = np.moveaxis(scores, axis, 0).shape
    return np.moveaxis(keep.reshape(moved), 0, axis)


def unit_notes(weights: dict[str, np.ndarray], spec: PruneSpec, out_axes: dict[str, int | None]) -> list[str]:
    """The layers scope "unit" pruned as a whole, their output axis being unknown (named)."""
    if spec.scope != "unit" or spec.nm is not None:
        return []
    return [f"scope unit: {name}: output axis unknown (weight reshaped in the graph), pruned as one layer"
            for name in weights if out_axes.get(name, 0) is None and not _matches(name, spec.exclude)]


def _nm_masks(scores: dict[str, np.ndarray], spec: PruneSpec, keep: dict[str, np.ndarray],
              in_axes: dict[str, int | None]) -> dict[str, np.ndarray]:
    n, m = nm_pattern(spec.nm)
    masks = {}
    for name, s in scores.items():
        axis = in_axes.get(name, 1)
        dense = _matches(name, spec.exclude) or axis is None
        mask = np.ones(s.shape, dtype=bool) if dense else nm_mask(s, n, m, axis)
        masks[name] = mask & keep[name] if name in keep else mask
    return masks


def nm_mask(scores: np.ndarray, n: int, m: int, axis: int = 1) -> np.ndarray:
    """Keep the `n` highest scores of every `m` consecutive entries along `axis` (the input dimension),
    for each position of the other axes; a remainder shorter than `m` at the end stays dense."""
    moved = np.moveaxis(scores, axis, -1)
    full = moved.shape[-1] - moved.shape[-1] % m
    groups = moved[..., :full].reshape(*moved.shape[:-1], full // m, m)
    drop = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(drop, np.argsort(groups, axis=-1, kind="stable")[..., :m - n], True, axis=-1)
    keep = np.ones(moved.shape, dtype=bool)
    keep[..., :full] = ~drop.reshape(*moved.shape[:-1], full)
    return np.moveaxis(keep, -1, axis)


def nm_notes(weights: dict[str, np.ndarray], spec: PruneSpec,
             in_axes: dict[str, int | None] | None = None) -> list[str]:
    """What an N:M mask means here, and which layers it could not cover fully (named)."""
    _, m = nm_pattern(spec.nm)
    notes = [f"N:M {spec.nm}: accuracy experiment; no CPU kernel in ONNX Runtime — same dense kernels, "
             "no speedup expected"]
    for name, w in weights.items():
        axis = (in_axes or {}).get(name, 1)
        if _matches(name, spec.exclude):
            continue
        if axis is None:
            notes.append(f"N:M {spec.nm}: {name}: input axis unknown (weight reshaped in the graph), left dense")
        elif w.shape[axis] < m:
            notes.append(f"N:M {spec.nm}: {name}: input dimension {w.shape[axis]} < {m}, no full group: left dense")
        elif w.shape[axis] % m:
            notes.append(f"N:M {spec.nm}: {name}: input dimension {w.shape[axis]} is not a multiple of {m}: "
                         f"the last {w.shape[axis] % m} inputs per output left dense")
    return notes


EMPTIED = 0.98    # a layer losing at least this share of its weights is named: it is all but cut from the model


def emptied_notes(masks: dict[str, np.ndarray], spec: PruneSpec) -> list[str]:
    """Layers a global ranking all but emptied (≥ EMPTIED pruned) while the target was lower: such a layer
    passes (almost) nothing on, typically because its weights are smaller than the others' (e.g. BatchNorm
    folded into the other layers of an ONNX graph), not because it matters less. LAMP ranks each layer on its
    own scale, so a layer it prunes that far is its allocation, not a scale effect: no note."""
    if spec.scope != "global" or spec.nm is not None or spec.sparsity >= EMPTIED or spec.method == "lamp":
        return []
    emptied = [f"{name} {1 - m.mean():.1%}" for name, m in masks.items()
               if 1 - m.mean() >= EMPTIED and not override_for(name, spec.overrides)]
    if not emptied:
        return []
    return [f"global ranking all but emptied {', '.join(emptied)} at {spec.sparsity:.0%} overall: such a layer passes "
            "almost nothing on; use method: lamp (ranks each layer on its own scale), scope: layer, exclude it, "
            "or give it an override"]


def sparsity_of(masks: dict[str, np.ndarray]) -> float:
    total = sum(m.size for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


# --- torch ---------------------------------------------------------------------------------------

def torch_weights(module) -> dict:
    """Prunable parameters: weights of Linear/Conv-like layers (name ends in 'weight', >= 2 dims), not the
    tables of nn.Embedding layers (lookups, not multiply-adds: as on ONNX graphs, where Gather data is no layer)."""
    from torch import nn

    tables = {weight_name(n) for n, m in module.named_modules()
              if isinstance(m, nn.Embedding | nn.EmbeddingBag)}
    return {n: p for n, p in module.named_parameters() if n.endswith("weight") and p.dim() >= 2 and n not in tables}


def torch_weight_arrays(module) -> dict:
    """`torch_weights` as numpy copies (what previews and packing work on)."""
    return {n: p.detach().cpu().numpy().copy() for n, p in torch_weights(module).items()}


def weight_name(layer: str) -> str:
    """The parameter name of module `layer`'s weight ('' is the model itself)."""
    return f"{layer}.weight" if layer else "weight"


def torch_input_axes(module) -> dict[str, int]:
    """Weights whose input features are not on axis 1: ConvTranspose stores (in, out, *kernel)."""
    return dict.fromkeys(_transposed(module), 0)


def torch_output_axes(module) -> dict[str, int]:
    """Weights whose output units are not on axis 0: ConvTranspose's are on axis 1."""
    return dict.fromkeys(_transposed(module), 1)


def _transposed(module) -> list[str]:
    from torch import nn

    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return [weight_name(n) for n, m in module.named_modules() if isinstance(m, transposed)]


def prune_torch(module, spec: PruneSpec, sparsity: float | None = None,
                keep: dict[str, np.ndarray] | None = None,
                rms: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Zero the pruned weights of `module` in place; returns the keep-masks (`rms`: see compute_masks)."""
    import torch

    params = torch_weights(module)
    arrays = {n: p.detach().cpu().numpy() for n, p in params.items()}
    masks = compute_masks(arrays, spec, sparsity, keep, in_axes=torch_input_axes(module) if spec.nm else None,
                          rms=rms, out_axes=torch_output_axes(module))
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(torch.from_numpy(mask).to(params[name].dtype))
    return masks


# --- ONNX ----------------------------------------------------------------------------------------

def onnx_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float weights of MatMul/Gemm/Conv initializers (quantized models cannot be pruned here)."""
    inits = initializers(model)
    out = {}
    for w in weight_tensors(model):
        array = numpy_helper.to_array(inits[w.name])
        if array.dtype.kind == "f":
            out[w.name] = array
    return out


def onnx_input_axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Per weight initializer, the axis indexing its op's input features: 1 for Conv (out, in, kh, kw) and
    Gemm with transB, the second-to-last for MatMul (in, out), 0 for Gemm without transB and ConvTranspose;
    followed back through Transpose/Cast/DequantizeLinear; None where a Reshape hides the layout."""
    return _onnx_axes(model, lambda op, trans_b: {"Gemm": 1 if trans_b else 0, "MatMul": -2,
                                                  "ConvTranspose": 0}.get(op, 1))


def onnx_output_axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Per weight initializer, the axis indexing its op's output units: 0 for Conv and Gemm with transB, the
    last for MatMul, 1 for Gemm without transB and ConvTranspose; followed back as onnx_input_axes does."""
    return _onnx_axes(model, lambda op, trans_b: {"Gemm": 0 if trans_b else 1, "MatMul": -1,
                                                  "ConvTranspose": 1}.get(op, 0))


def _onnx_axes(model: onnx.ModelProto, axis_of: Callable[[str, int], int]) -> dict[str, int | None]:
    """Per weight initializer, the axis `axis_of(op type, transB)` of its (first) consumer, in the
    initializer's own layout."""
    inits = initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    axes: dict[str, int | None] = {}
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis: int | None = axis_of(node.op_type, attrs.get("transB", 0))
        name, perms = node.input[1], []
        while name not in inits and name in producers and producers[name].op_type in PASS_THROUGH:
            source = producers[name]
            if source.op_type == "Reshape":
                axis = None
            elif source.op_type == "Transpose":
                perms.append(next((list(a.ints) for a in source.attribute if a.name == "perm"), None))
            name = source.input[0]
        if name in inits and name not in axes:
            axes[name] = _through_transposes(axis, perms, len(inits[name].dims))
    return axes


def _through_transposes(axis: int | None, perms: list[list[int] | None], rank: int) -> int | None:
    """The source tensor's axis that a consumer sees at `axis` after the Transposes (consumer first)."""
    if axis is None or rank < 2:
        return None
    axis %= rank
    for perm in perms:
        axis = perm[axis] if perm else rank - 1 - axis  # no perm attribute: Transpose reverses the axes
    return axis


def prune_onnx(model: onnx.ModelProto, spec: PruneSpec, sparsity: float | None = None,
               rms: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Zero pruned weights in the initializers of `model` (in place); returns the keep-masks (`rms`: see
    compute_masks)."""
    weights = onnx_weights(model)
    masks = compute_masks(weights, spec, sparsity, in_axes=onnx_input_axes(model) if spec.nm else None, rms=rms,
                          out_axes=onnx_output_axes(model) if spec.scope == "unit" else None)
    inits = initializers(model)
    for name, mask in masks.items():
        pruned = (weights[name] * mask).astype(weights[name].dtype)
        inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
    return masks
