"""Per-layer sensitivity: what each layer alone costs when pruned or rounded, and per-layer allocations
of sparsity (prune the insensitive layers more) and of bits (round them to fewer bits).

Contract:
- `analyze(loaded, test)` changes one prunable layer at a time, every other layer untouched: magnitude
  pruning to each of `sparsities` (workbench.pruning.compute_masks on that layer alone, so masks match
  what a run does) and symmetric per-channel rounding of its weights to each of `bits`. It measures the
  test split with torch (torch models) or ONNX Runtime (ONNX graphs). The result, a frozen `Sensitivity`,
  holds per layer its weight count and, per level, the metric, its drop in percentage points vs the
  unchanged model (positive = worse) and `kl`, the mean KL divergence (nats) of the softmax outputs from
  the unchanged model's. It is a pure function of (model weights, data): deterministic, and the model is
  restored afterwards, so callers may cache it.
- The metric is accuracy with labels, else top-1 agreement with the unchanged model's outputs. With the
  digits test split one sample is 0.28 pt, so drops below that are noise.
- `allocate(sensitivity, target)` picks per-layer sparsities whose weight-weighted mean over all prunable
  layers is `target` (excluded layers count as dense; each layer at most 0.99 and at most its largest
  measured level). Greedy: it repeatedly makes the move (one layer to a higher measured level) that
  costs the least KL per pruned weight (ties: least accuracy drop per weight), then stops part-way
  along the last move to land on the target. KL is the cost because it is smooth and needs no labels;
  accuracy on a few hundred samples moves in steps and saturates. Both are taken as non-decreasing in
  sparsity (the running maximum); between levels they are interpolated linearly.
- `allocate_size(sensitivity, target_bytes, bits)` is the same allocation at the smallest overall
  sparsity whose weights fit in `target_bytes` at `bits` per nonzero (minimum storage, an estimate:
  nonzeros x bits + the cheaper index, as workbench.size computes it).
- `allocate_bits(sensitivity, target_bytes, choices)` picks per-layer weight bits among `choices` (measured
  levels) so the weights fit `target_bytes`, an estimate: dense weights x bits / 8 per layer, excluded
  layers at 32 bits. Greedy from the most bits: it repeatedly lowers the layer whose move costs the least
  KL per byte saved (ties: accuracy drop), with the same monotone curves as `allocate`, until the weights
  fit; then it raises layers back (most KL saved per byte first) while they still fit. The result's
  `to_overrides()` is `QuantSpec.overrides`; `quant_spec()` picks weight_only (MatMulNBits, real) when
  every layer is a MatMul/Gemm at 8, 4 or 2 bits, else fake (simulated, storage computed).

Non-goals: interactions between layers (each is measured alone; a run measures the combination; the
predicted KL and drop of an allocation are sums of single-layer values), fine-tuning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.pruning import _matches, check_patterns, compute_masks
from workbench.size import tensor_min_bits
from workbench.specs import WEIGHT_ONLY_BITS, PruneSpec, QuantSpec

if TYPE_CHECKING:
    import onnx
    import pandas as pd

    from workbench.data import Dataset
    from workbench.models import LoadedModel

log = logging.getLogger(__name__)
SPARSITIES = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
BITS = (8, 6, 4, 3, 2)
MAX_SPARSITY = 0.99
FLOAT_BITS = 32
KINDS = ("sparsity", "bits")


@dataclass(frozen=True)
class Cell:
    """One layer changed to one level: the metric, its drop (pt) and the KL from the unchanged outputs."""

    metric: float
    drop: float
    kl: float


@dataclass(frozen=True)
class Sensitivity:
    label: str
    metric: str                                   # "accuracy" or "top1_agreement"
    baseline: float                               # the unchanged model's metric
    params: dict[str, int]                        # layer weight name -> weights, in model order
    sparsity: dict[str, dict[float, Cell]]        # layer -> sparsity -> cell
    bits: dict[str, dict[int, Cell]]              # layer -> bits -> cell
    seconds: float

    @property
    def layers(self) -> list[str]:
        return list(self.params)

    def frame(self, kind: str) -> pd.DataFrame:
        """Long table for `kind` ("sparsity" or "bits"): layer, params, level, metric, drop, kl."""
        import pandas as pd

        table = _table(self, kind)
        rows = [{"layer": layer_key(n), "params": self.params[n], "level": level, self.metric: c.metric,
                 "drop": c.drop, "kl": c.kl} for n, cells in table.items() for level, c in cells.items()]
        return pd.DataFrame(rows, columns=["layer", "params", "level", self.metric, "drop", "kl"])

    def to_dict(self) -> dict[str, Any]:
        def cells(table: dict) -> dict:
            return {layer_key(n): {str(k): dataclasses.asdict(c) for k, c in levels.items()}
                    for n, levels in table.items()}

        return {"label": self.label, "metric": self.metric, "baseline": self.baseline,
                "params": {layer_key(n): p for n, p in self.params.items()},
                "sparsity": cells(self.sparsity), "bits": cells(self.bits), "seconds": self.seconds}


def _table(sens: Sensitivity, kind: str) -> dict:
    if kind not in KINDS:
        raise WorkbenchError(f"kind: expected one of {', '.join(KINDS)}, got '{kind}'")
    return sens.sparsity if kind == "sparsity" else sens.bits


def layer_key(name: str) -> str:
    """The name a recipe uses for a layer (override / exclude pattern): the weight name without
    '.weight', with glob characters escaped so the pattern matches that layer only."""
    short = name.removesuffix(".weight")
    return "".join(f"[{c}]" if c in "*?[" else c for c in short)


# --- measuring ---------------------------------------------------------------------------------

def fake_quantize_channels(w: np.ndarray, bits: int, axis: int = 0) -> np.ndarray:
    """Symmetric per-channel rounding to `bits` (one scale per index of `axis`); zeros stay zero."""
    levels = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / levels
    scale = np.where(scale > 0, scale, 1.0)
    return (np.round(w / scale).clip(-levels - 1, levels) * scale).astype(w.dtype)


class _TorchModel:
    """Swaps one weight of a torch module in place and runs the test split; restores it afterwards."""

    def __init__(self, module: Any) -> None:
        from workbench.pruning import torch_weights

        self.module = module
        self.params = torch_weights(module)
        self.weights = {n: p.detach().cpu().numpy().copy() for n, p in self.params.items()}
        self.axes = dict.fromkeys(self.weights, 0)   # torch Linear/Conv weights are (out, in, ...)

    def outputs(self, test: Dataset, name: str | None = None, value: np.ndarray | None = None) -> np.ndarray:
        import torch

        from workbench.evaluate import torch_predict

        if name is None:
            return torch_predict(self.module, test)
        param = self.params[name]
        with torch.no_grad():
            param.copy_(torch.from_numpy(value).to(param.dtype))
        try:
            return torch_predict(self.module, test)
        finally:
            with torch.no_grad():
                param.copy_(torch.from_numpy(self.weights[name]).to(param.dtype))


class _OnnxModel:
    """Swaps one initializer of a copy of the graph and runs it with ONNX Runtime."""

    def __init__(self, model: onnx.ModelProto, threads: int) -> None:
        import onnx

        from workbench.onnx_graph import initializers
        from workbench.pruning import onnx_weights

        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.inits = initializers(self.model)
        self.weights = onnx_weights(self.model)
        self.axes = _onnx_channel_axes(self.model, self.weights)
        self.threads = threads

    def outputs(self, test: Dataset, name: str | None = None, value: np.ndarray | None = None) -> np.ndarray:
        from onnx import numpy_helper

        from workbench.evaluate import make_session, predict

        if name is None:
            return predict(make_session(self.model, self.threads), test)
        original = numpy_helper.from_array(self.weights[name], name)
        self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(self.weights[name].dtype), name))
        try:
            return predict(make_session(self.model, self.threads), test)
        finally:
            self.inits[name].CopyFrom(original)


def _onnx_channel_axes(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> dict[str, int]:
    """The output-channel axis of each weight: 0 for Conv and Gemm(transB=1), the last for MatMul/Gemm."""
    import onnx

    axes = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in weights:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        transposed = node.op_type == "Gemm" and attrs.get("transB", 0)
        axes[node.input[1]] = 0 if node.op_type.startswith("Conv") or transposed else -1
    return {n: axes.get(n, 0) for n in weights}


def _scorer(test: Dataset, reference: np.ndarray) -> tuple[str, Any]:
    from workbench.evaluate import score

    if reference.ndim != 2 or reference.shape[1] < 2:
        raise WorkbenchError(f"sensitivity: the model's output has shape {reference.shape}; it needs class "
                             "scores (N, classes) to count correct answers")
    if test.labels is not None:
        return "accuracy", lambda out: score(out, test.labels)["accuracy"]
    return "top1_agreement", lambda out: score(out, reference=reference)["top1_agreement"]


def analyze(loaded: LoadedModel, test: Dataset, sparsities: tuple[float, ...] = SPARSITIES,
            bits: tuple[int, ...] = BITS, method: str = "magnitude", threads: int = 1) -> Sensitivity:
    """Each prunable layer alone pruned to every sparsity and rounded to every bitwidth; see the module doc.
    Runs on `threads` threads (torch's setting is restored afterwards): these small models run fastest on
    one, and a busy machine makes a second thread much slower, not faster."""
    _check_levels(sparsities, bits)
    started = time.perf_counter()
    model = _TorchModel(loaded.module) if loaded.module is not None else _OnnxModel(loaded.onnx_model, threads)
    if not model.weights:
        raise WorkbenchError(f"{loaded.label}: no float Linear/Conv (MatMul/Gemm/Conv) weights to analyse")
    with _torch_threads(threads if loaded.module is not None else None):
        reference = model.outputs(test)
        metric, measure = _scorer(test, reference)
        baseline = measure(reference)
        log_p = _log_softmax(reference)

        def cell(name: str, weight: np.ndarray) -> Cell:
            out = model.outputs(test, name, weight)
            kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - _log_softmax(out)), axis=1)))
            value = measure(out)
            return Cell(round(value, 6), round(100 * (baseline - value), 4), round(kl, 6))

        by_sparsity: dict[str, dict[float, Cell]] = {}
        by_bits: dict[str, dict[int, Cell]] = {}
        for name, w in model.weights.items():
            spec = PruneSpec(method=method, scope="layer", sparsity=max(sparsities))
            by_sparsity[name] = {s: cell(name, w * compute_masks({name: w}, spec, s)[name]) for s in sparsities}
            by_bits[name] = {b: cell(name, fake_quantize_channels(w, b, model.axes[name])) for b in bits}
    seconds = round(time.perf_counter() - started, 3)
    log.info("sensitivity of %s: %d layers x %d levels in %.2f s", loaded.label, len(model.weights),
             len(sparsities) + len(bits), seconds)
    return Sensitivity(loaded.label, metric, round(baseline, 6), {n: int(w.size) for n, w in model.weights.items()},
                       by_sparsity, by_bits, seconds)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _check_levels(sparsities: tuple[float, ...], bits: tuple[int, ...]) -> None:
    if not sparsities or any(not 0 < s < 1 for s in sparsities):
        raise WorkbenchError(f"sparsities: each must be in (0, 1), got {list(sparsities)}")
    if not bits or any(not (isinstance(b, int) and 2 <= b <= 16) for b in bits):
        raise WorkbenchError(f"bits: each must be an integer in 2..16, got {list(bits)}")


# --- allocating sparsity -----------------------------------------------------------------------

@dataclass(frozen=True)
class Allocation:
    """Per-layer sparsities (recipe layer names) and what they add up to."""

    target: float
    achieved: float                     # weight-weighted mean sparsity over all prunable layers (computed)
    sparsities: dict[str, float]        # layer key -> sparsity (0 for excluded layers)
    exclude: tuple[str, ...]
    note: str = ""

    @property
    def overrides(self) -> dict[str, float]:
        return {k: v for k, v in self.sparsities.items() if k not in self.exclude}

    def prune_spec(self, base: PruneSpec | None = None) -> PruneSpec:
        """`base` (default: one-shot magnitude) with this allocation's sparsity, overrides and exclusions."""
        base = base or PruneSpec()
        exclude = tuple(dict.fromkeys((*base.exclude, *self.exclude)))
        return dataclasses.replace(base, sparsity=round(self.achieved, 4), overrides=self.overrides,
                                   exclude=exclude)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _curve(cells: dict[float, Cell], cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels from 0 up to `cap`, with KL and drop as non-decreasing, non-negative curves."""
    levels = sorted(s for s in cells if s <= cap + 1e-9)
    s = np.array([0.0, *levels])
    kl = np.maximum.accumulate(np.clip([0.0, *(cells[x].kl for x in levels)], 0, None))
    drop = np.maximum.accumulate(np.clip([0.0, *(cells[x].drop for x in levels)], 0, None))
    return s, kl, drop


def allocate(sens: Sensitivity, target: float, exclude: tuple[str, ...] | list[str] = (),
             cap: float = MAX_SPARSITY) -> Allocation:
    """Per-layer sparsities reaching `target` overall, pruning low-sensitivity layers more (module doc)."""
    if not 0 <= target < 1:
        raise WorkbenchError(f"target: must be in [0, 1), got {target}")
    check_patterns(list(sens.layers), "exclude", exclude)
    names = sens.layers
    excluded = [n for n in names if _matches(n, tuple(exclude))]
    curves = {n: _curve(sens.sparsity[n], cap) for n in names if n not in excluded}
    total = sum(sens.params.values())
    level = dict.fromkeys(curves, 0)            # index into each layer's measured levels
    chosen = dict.fromkeys(names, 0.0)
    need = target * total                       # weights still to prune
    while need > 1e-6:
        move = _cheapest_move(curves, level, sens.params)
        if move is None:
            break
        name, j, weights = move
        start = float(curves[name][0][level[name]])
        if weights >= need:                     # stop part-way along the last move
            chosen[name], need = start + need / sens.params[name], 0.0
        else:
            level[name], chosen[name] = j, float(curves[name][0][j])
            need -= weights
    achieved = sum(chosen[n] * sens.params[n] for n in names) / total
    note = "" if need <= 1e-6 else (
        f"target {target:.1%} is out of reach: with {len(excluded)} excluded layer(s) and at most "
        f"{cap:.0%} per layer the most is {achieved:.1%}")
    return Allocation(target, round(achieved, 6), {layer_key(n): round(chosen[n], 4) for n in names},
                      tuple(layer_key(n) for n in excluded), note)


def _cheapest_move(curves: dict, level: dict[str, int], params: dict[str, int]) -> tuple[str, int, float] | None:
    """(layer, level index, weights pruned) of the move with the least KL, then drop, per pruned weight."""
    best, best_key = None, None
    for name, (s, kl, drop) in curves.items():
        i = level[name]
        for j in range(i + 1, len(s)):
            weights = params[name] * (s[j] - s[i])
            key = ((kl[j] - kl[i]) / weights, (drop[j] - drop[i]) / weights, -weights)
            if best_key is None or key < best_key:
                best, best_key = (name, j, float(weights)), key
    return best


def weight_bytes(sens: Sensitivity, sparsities: dict[str, float], bits: int) -> float:
    """Minimum storage (bytes, estimate) of the prunable weights at these per-layer sparsities and bits."""
    return sum(tensor_min_bits(p, round(p * (1 - sparsities[layer_key(n)])), bits)
               for n, p in sens.params.items()) / 8


def allocate_size(sens: Sensitivity, target_bytes: float, bits: int = 32, exclude: tuple[str, ...] | list[str] = (),
                  cap: float = MAX_SPARSITY) -> Allocation:
    """The allocation at the least overall sparsity whose weights fit in `target_bytes` (module doc)."""
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise WorkbenchError(f"bits: must be an integer in 1..32, got {bits}")
    if target_bytes <= 0:
        raise WorkbenchError(f"target_bytes: must be positive, got {target_bytes}")

    def size(target: float) -> tuple[Allocation, float]:
        allocation = allocate(sens, target, exclude, cap)
        return allocation, weight_bytes(sens, allocation.sparsities, bits)

    low, high = 0.0, allocate(sens, 0.999, exclude, cap).achieved
    best, best_size = size(low)
    if best_size > target_bytes:
        for _ in range(30):   # bisection: the size falls as the overall sparsity rises
            mid = (low + high) / 2
            low, high = (low, mid) if size(mid)[1] <= target_bytes else (mid, high)
        best, best_size = size(high)
    note = f"prunable weights need about {best_size / 1024:.1f} KB at {bits} bits (minimum storage, estimate)"
    if best_size > target_bytes:
        note = (f"{target_bytes / 1024:.1f} KB is out of reach at {bits} bits: the least is "
                f"{best_size / 1024:.1f} KB")
    return dataclasses.replace(best, note=note)


# --- allocating bits ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BitsAllocation:
    """Per-layer weight bits (recipe layer names) fitting a byte target, and their predicted cost."""

    target_bytes: float
    estimated_bytes: float      # estimate: dense weights x bits / 8 per layer (excluded layers at 32 bits)
    bits: dict[str, int]        # layer key -> bits (32 for excluded layers)
    kl: float                   # sum of the layers' measured KL at their bits (each measured alone)
    drop: float                 # sum of the layers' measured drops (pt), likewise
    exclude: tuple[str, ...]    # layer keys kept in float
    note: str = ""

    def to_overrides(self) -> dict[str, int]:
        """The `QuantSpec.overrides` of this allocation (excluded layers go to `QuantSpec.exclude`)."""
        return {k: b for k, b in self.bits.items() if k not in self.exclude}

    def quant_spec(self, matmul_only: bool = False) -> QuantSpec:
        """The quantize stage: weight_only (MatMulNBits: real per-layer storage, block-wise scales) when
        `matmul_only` (every layer is a MatMul/Gemm) and every bit width has a kernel, else fake (simulated,
        storage computed) with per-channel scales, the rounding the bits table measured."""
        overrides = self.to_overrides()
        real = matmul_only and set(overrides.values()) <= set(WEIGHT_ONLY_BITS)
        return QuantSpec(method="weight_only" if real else "fake", weight_bits=max(overrides.values()),
                         per_channel=not real, overrides=overrides, exclude=self.exclude)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def matmul_only(weights: dict[str, Any]) -> bool:
    """Whether every layer's weight (numpy array or torch tensor) is a matrix, i.e. a MatMul/Gemm
    (nn.Linear) that MatMulNBits can store; convolutions have 3+ dimensions."""
    return all(w.ndim == 2 for w in weights.values())


def allocate_bits(sens: Sensitivity, target_bytes: float, choices: tuple[int, ...] | list[int] = BITS,
                  exclude: tuple[str, ...] | list[str] = ()) -> BitsAllocation:
    """Per-layer bits among `choices` whose weights fit `target_bytes` (estimate), sparing the layers whose
    rounding costs the most KL per byte saved (module doc)."""
    if target_bytes <= 0:
        raise WorkbenchError(f"target_bytes: must be positive, got {target_bytes}")
    levels = sorted(set(choices), reverse=True)
    measured = set.intersection(*(set(cells) for cells in sens.bits.values())) if sens.bits else set()
    if not levels or not set(levels) <= measured:
        raise WorkbenchError(f"choices: each must be a measured bit width ({', '.join(map(str, sorted(measured)))}), "
                             f"got {list(choices)}")
    check_patterns(list(sens.layers), "exclude", exclude)
    excluded = [n for n in sens.layers if _matches(n, tuple(exclude))]
    curves = {n: _bits_curve(sens.bits[n], levels) for n in sens.layers if n not in excluded}
    if not curves:
        raise WorkbenchError("exclude: every layer is excluded; no bits to allocate")
    level = dict.fromkeys(curves, 0)

    def size() -> float:
        return sum(p * (levels[level[n]] if n in curves else FLOAT_BITS) for n, p in sens.params.items()) / 8

    least = sum(p * (levels[-1] if n in curves else FLOAT_BITS) for n, p in sens.params.items()) / 8
    if least > target_bytes:
        floats = f" with {len(excluded)} layer(s) in float" if excluded else ""
        raise WorkbenchError(f"{target_bytes / 1024:.1f} KB is out of reach: even {levels[-1]} bits per weight"
                             f"{floats} need {least / 1024:.1f} KB (dense weights x bits / 8)")
    while size() > target_bytes:
        name, j = _cheapest_cut(curves, level, sens.params, 8 * (size() - target_bytes))
        level[name] = j
    while (up := _best_raise(curves, level, sens.params, 8 * (target_bytes - size()))) is not None:
        level[up[0]] = up[1]
    bits = {layer_key(n): levels[level[n]] if n in curves else FLOAT_BITS for n in sens.layers}
    kl, drop = (sum(float(c[k][level[n]]) for n, c in curves.items()) for k in (1, 2))
    note = (f"weights need about {size() / 1024:.1f} KB at these bits (estimate: dense weights x bits / 8"
            f"{', excluded layers at 32 bits' if excluded else ''})")
    return BitsAllocation(target_bytes, size(), bits, round(kl, 6), round(drop, 4),
                          tuple(layer_key(n) for n in excluded), note)


def _bits_curve(cells: dict[int, Cell], levels: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bits removed per weight at each level (most bits first), with KL and drop non-decreasing as bits fall."""
    removed = np.array([levels[0] - b for b in levels], dtype=float)
    kl = np.maximum.accumulate(np.clip([cells[b].kl for b in levels], 0, None))
    drop = np.maximum.accumulate(np.clip([cells[b].drop for b in levels], 0, None))
    return removed, kl, drop


def _cheapest_cut(curves: dict, level: dict[str, int], params: dict[str, int], need_bits: float) -> tuple[str, int]:
    """(layer, level index) of the cut with the least KL (then drop) per bit saved, counting at most the
    `need_bits` still to save: bits are discrete, and a big cut past the target buys nothing."""
    best, best_key = None, None
    for name, (removed, kl, drop) in curves.items():
        i = level[name]
        for j in range(i + 1, len(removed)):
            saved = params[name] * (removed[j] - removed[i])
            useful = min(saved, need_bits)
            key = ((kl[j] - kl[i]) / useful, (drop[j] - drop[i]) / useful, -saved)
            if best_key is None or key < best_key:
                best, best_key = (name, j), key
    return best


def _best_raise(curves: dict, level: dict[str, int], params: dict[str, int],
                room_bits: float) -> tuple[str, int] | None:
    """(layer, level index) of the raise that saves the most KL (then drop) per added bit within `room_bits`."""
    best, best_key = None, None
    for name, (removed, kl, drop) in curves.items():
        i = level[name]
        for j in range(i):
            added = params[name] * (removed[i] - removed[j])
            if added > room_bits or kl[i] - kl[j] <= 0 and drop[i] - drop[j] <= 0:
                continue
            key = ((kl[i] - kl[j]) / added, (drop[i] - drop[j]) / added)
            if best_key is None or key > best_key:
                best, best_key = (name, j), key
    return best
