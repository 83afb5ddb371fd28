"""Unstructured pruning: decide which weights to zero, on torch modules or directly on ONNX graphs.

Mask computation works on plain numpy arrays, so the same code prunes a torch model and the
initializers of an uploaded ONNX model. A method is a scoring function registered in `PRUNERS`
(higher score = keep); scope, overrides, exclusions and already-pruned weights are handled here once.
Zeros are written into dense tensors: this module never claims a speedup (see workbench.claims).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from workbench.errors import WorkbenchError
from workbench.onnx_graph import initializers, weight_tensors
from workbench.specs import PruneSpec

Scorer = Callable[[np.ndarray, np.random.Generator], np.ndarray]
PRUNERS: dict[str, Scorer] = {}


def pruner(name: str) -> Callable[[Scorer], Scorer]:
    def register(fn: Scorer) -> Scorer:
        PRUNERS[name] = fn
        return fn

    return register


@pruner("magnitude")
def magnitude_scores(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.abs(weight).astype(np.float64)


@pruner("random")
def random_scores(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.random(weight.shape)


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    short = name.removesuffix(".weight")
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(short, p) for p in patterns)


def layer_targets(names: list[str], spec: PruneSpec, sparsity: float) -> dict[str, float | None]:
    """Per layer: its own sparsity (override / layer scope), 0 if excluded, None = global pool."""
    targets: dict[str, float | None] = {}
    for name in names:
        override = next((v for p, v in spec.overrides.items() if _matches(name, [p])), None)
        if _matches(name, spec.exclude):
            targets[name] = 0.0
        elif override is not None:
            targets[name] = min(override, sparsity) if sparsity < spec.sparsity else override
        else:
            targets[name] = sparsity if spec.scope == "layer" else None
    return targets


def compute_masks(weights: dict[str, np.ndarray], spec: PruneSpec, sparsity: float | None = None,
                  keep: dict[str, np.ndarray] | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
    """Boolean keep-masks reaching `sparsity` (default: spec.sparsity). Weights already masked out
    in `keep` stay pruned, so iterative rounds only remove survivors."""
    if not weights:
        raise WorkbenchError("prune: the model has no Linear/Conv (MatMul/Gemm/Conv) weights to prune")
    sparsity = spec.sparsity if sparsity is None else sparsity
    rng = np.random.default_rng(spec.seed if seed is None else seed)
    scores = {}
    for name, w in weights.items():
        s = PRUNERS[spec.method](w, rng)
        if keep is not None and name in keep:
            s = np.where(keep[name], s, -np.inf)
        scores[name] = s
    targets = layer_targets(list(weights), spec, sparsity)
    masks = {n: _top_k_mask(scores[n], t) for n, t in targets.items() if t is not None}
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


def sparsity_of(masks: dict[str, np.ndarray]) -> float:
    total = sum(m.size for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


# --- torch ---------------------------------------------------------------------------------------

def torch_weights(module) -> dict:
    """Prunable parameters: weights of Linear/Conv-like layers (name ends in 'weight', >= 2 dims)."""
    return {n: p for n, p in module.named_parameters() if n.endswith("weight") and p.dim() >= 2}


def prune_torch(module, spec: PruneSpec, sparsity: float | None = None,
                keep: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Zero the pruned weights of `module` in place; returns the keep-masks."""
    import torch

    params = torch_weights(module)
    arrays = {n: p.detach().cpu().numpy() for n, p in params.items()}
    masks = compute_masks(arrays, spec, sparsity, keep)
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


def prune_onnx(model: onnx.ModelProto, spec: PruneSpec, sparsity: float | None = None) -> dict[str, np.ndarray]:
    """Zero pruned weights in the initializers of `model` (in place); returns the keep-masks."""
    weights = onnx_weights(model)
    masks = compute_masks(weights, spec, sparsity)
    inits = initializers(model)
    for name, mask in masks.items():
        pruned = (weights[name] * mask).astype(weights[name].dtype)
        inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
    return masks
