"""What removing channels first buys in packed bytes: the same bytes of `weights.packed` hold more kept weights
when the model is thinner and its masks denser, because a 10%-dense mask costs more bits per kept weight than
a denser one (entropy-coded positions, workbench.packing).

`same_bytes(module, example, ratio)` packs the full model's weights pruned to `sparsity` (global magnitude,
one shot) and shared to `clusters` values per layer, then removes `ratio` of the channels per group from a copy
(workbench.structured, as the run does) and finds the lowest sparsity (to the percent) whose packed weights fit
in the same bytes. Every byte count is a real `pack` of real weights; nothing is trained, so it says what each
kept weight costs, not which model is more accurate (BENCHMARKS.md, clustering section, trains and measures that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.clustering import cluster_weights
from workbench.packing import encode
from workbench.pruning import compute_masks, torch_weight_arrays
from workbench.specs import PruneSpec, StructuredSpec

PERCENT = 100   # sparsities tried: whole percents


@dataclass(frozen=True)
class Packing:
    weights: int        # Linear/Conv weights of the model
    sparsity: float
    kept: int           # nonzero weights
    bytes: int          # weights.packed of those weights (the weights only)
    position_bytes: int


@dataclass(frozen=True)
class SameBytes:
    full: Packing       # the whole model at the chosen sparsity
    thin: Packing       # the thinner copy at the lowest sparsity that fits in full.bytes


def packing(weights: dict[str, np.ndarray], sparsity: float, clusters: int) -> Packing:
    """`weights` pruned to `sparsity` by global magnitude and shared to `clusters` values per layer, packed."""
    masks = compute_masks(weights, PruneSpec(sparsity=sparsity))
    values, _ = cluster_weights({n: w * masks[n] for n, w in weights.items()}, clusters)
    packed = encode(values)
    return Packing(sum(w.size for w in weights.values()), sparsity, sum(int(m.sum()) for m in masks.values()),
                   len(packed.data), packed.sections.get("positions", 0))


def lowest_fitting(weights: dict[str, np.ndarray], budget: int, clusters: int) -> Packing:
    """The lowest sparsity (a whole percent) whose packed weights take at most `budget` bytes (bisection: more
    sparsity never packs larger); 99% when even that does not fit."""
    low, high = 0, 99
    best = packing(weights, high / PERCENT, clusters)
    if best.bytes > budget:
        return best
    while low < high:
        mid = (low + high) // 2
        tried = packing(weights, mid / PERCENT, clusters)
        if tried.bytes <= budget:
            high, best = mid, tried
        else:
            low = mid + 1
    return best


def same_bytes(module, example: tuple, ratio: float, sparsity: float = 0.9, clusters: int = 8) -> SameBytes:
    """The full model at `sparsity` against a copy with `ratio` of its channels removed, in the same packed bytes."""
    from workbench.structured import prune_structured

    full = packing(torch_weight_arrays(module), sparsity, clusters)
    thinner, _ = prune_structured(module, example, StructuredSpec(ratio=ratio))
    return SameBytes(full, lowest_fitting(torch_weight_arrays(thinner), full.bytes, clusters))
