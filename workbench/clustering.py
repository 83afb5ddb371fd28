"""Weight sharing (Deep Compression, Han et al. 2016): each layer's nonzero weights are replaced by the
nearest of `k` shared values found by 1-D k-means; zeros stay exactly zero, so pruned weights stay
pruned. The model keeps its float ONNX graph; the real gain is the packed size (workbench.packing),
where each weight costs its entropy-coded position and cluster index instead of 32 bits.

- k-means is an exact Lloyd's iteration on sorted 1-D data with linear initialisation (evenly spaced
  between min and max, which Deep Compression found best: it keeps the rare large weights). Centroids
  are rounded to float16, so the value table packs at 16 bits.
- The optional centroid fine-tune (`ClusterSpec.finetune`) trains the shared values (and biases/norms)
  with each weight's index fixed: a centroid's gradient is the sum over the weights that share it.
- Optionally (`ClusterSpec.bias_clusters`) biases and norm parameters share values too; at 90%+
  sparsity their float16 copies are otherwise a sixth of a small model's packed bytes.
- Everything that is not clustered (biases, norms, excluded layers) is rounded to float16 by the stage,
  so `weights.packed` decodes to exactly the model that is measured.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterable

import numpy as np

from workbench.errors import WorkbenchError
from workbench.models import copy_module, frozen_mode_note, needs_layer_modules
from workbench.specs import ClusterSpec, FinetuneSpec
from workbench.stages import Context, Variant, runner

log = logging.getLogger(__name__)
Codebook = tuple[np.ndarray, np.ndarray]   # (centroids (k,), indices with the weight's shape, -1 = zero)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """A glob on the full name or on the layer name (without .weight/.bias)."""
    short = name.removesuffix(".weight").removesuffix(".bias")
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(short, p) for p in patterns)


def kmeans_1d(values: np.ndarray, clusters: int, seed: int = 0, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on 1-D data with linear init: (sorted centroids, label per value). A cluster that
    runs empty is re-seeded at a random value (from `seed`); clusters still empty at the end are dropped."""
    x = np.sort(values.astype(np.float64).ravel())
    distinct = np.unique(x)
    if len(distinct) <= clusters:
        return distinct, np.searchsorted(distinct, values.astype(np.float64).ravel())
    rng = np.random.default_rng(seed)
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    centroids = np.linspace(x[0], x[-1], clusters)
    bounds = None
    for _ in range(max_iter):
        new_bounds = np.searchsorted(x, (centroids[:-1] + centroids[1:]) / 2, side="right")
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(x)]])
        counts = ends - starts
        means = (prefix[ends] - prefix[starts]) / np.maximum(counts, 1)
        centroids = np.sort(np.where(counts > 0, means, rng.choice(x, size=clusters)))
    mids = (centroids[:-1] + centroids[1:]) / 2
    labels = np.searchsorted(mids, values.astype(np.float64).ravel(), side="right")
    used = np.bincount(labels, minlength=len(centroids)) > 0
    remap = np.cumsum(used) - 1
    return centroids[used], remap[labels]


def _half(values: np.ndarray) -> np.ndarray:
    """Values rounded to float16 (kept as their dtype) where float16 can hold them; others unchanged."""
    if values.dtype.kind != "f" or values.dtype.itemsize <= 2:
        return values
    with np.errstate(over="ignore"):
        half = values.astype(np.float16).astype(values.dtype)
    return np.where(np.isfinite(half) | ~np.isfinite(values), half, values)


def cluster_weights(weights: dict[str, np.ndarray], clusters: int, seed: int = 0,
                    exclude: Iterable[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, Codebook]]:
    """Per layer, k-means over the nonzero weights (zeros stay zero). Returns the clustered values of
    every clustered layer (same shapes and dtypes) and its codebook: float16-exact centroids and the
    index of each weight (-1 for zeros). Excluded layers are absent from both dicts."""
    if not 2 <= clusters <= 256:
        raise WorkbenchError(f"cluster: clusters must be in 2..256, got {clusters}")
    exclude = tuple(exclude)
    values, books = {}, {}
    for name, w in weights.items():
        if _matches(name, exclude):
            continue
        nonzero = w != 0
        indices = np.full(w.shape, -1, dtype=np.int64)
        if not nonzero.any():
            centroids = np.zeros(0, dtype=np.float32)
        else:
            centroids, _ = kmeans_1d(w[nonzero], clusters, seed)
            # float16 centroids (a 16-bit table); rounding can move a midpoint, so assign again
            centroids = np.unique(_half(centroids.astype(np.float32)))
            indices[nonzero] = _nearest(centroids, w[nonzero])
        books[name] = (centroids, indices)
        values[name] = _apply(centroids, indices).astype(w.dtype)
    return values, books


def _nearest(centroids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted `centroids` for each value."""
    mids = (centroids[:-1].astype(np.float64) + centroids[1:]) / 2
    return np.searchsorted(mids, values.astype(np.float64), side="right")


def _apply(centroids: np.ndarray, indices: np.ndarray) -> np.ndarray:
    table = np.concatenate([centroids.astype(np.float32), np.zeros(1, np.float32)])
    return table[indices]   # index -1 picks the appended zero


def describe(books: dict[str, Codebook]) -> str:
    return ", ".join(f"{name.removesuffix('.weight')} {len(np.unique(c))}" for name, (c, _) in books.items())


# --- centroid fine-tuning (torch) ----------------------------------------------------------------

def _shared_parametrization(centroids: np.ndarray, indices: np.ndarray):
    import torch
    from torch import nn

    class SharedWeight(nn.Module):
        """weight = centroids[index]; the original tensor is ignored (and frozen)."""

        def __init__(self) -> None:
            super().__init__()
            self.centroids = nn.Parameter(torch.from_numpy(centroids.astype(np.float32)))
            self.register_buffer("index", torch.from_numpy(np.where(indices < 0, len(centroids), indices)))

        def forward(self, original: torch.Tensor) -> torch.Tensor:
            table = torch.cat([self.centroids, self.centroids.new_zeros(1)])
            return table[self.index].to(original.dtype)

    return SharedWeight()


def finetune_centroids(module, books: dict[str, Codebook], spec: FinetuneSpec, train,
                       masks: dict[str, np.ndarray] | None = None, progress=None,
                       cancelled=None, teacher=None) -> tuple[dict[str, Codebook], float]:
    """Train the shared values of `module` (in place) with indices fixed, plus its other trainable
    parameters (biases, norms, unclustered weights, which keep `masks`). Returns the new codebooks
    (centroids rounded to float16) and the last epoch's loss."""
    from torch.nn.utils import parametrize

    from workbench.finetune import finetune

    layers = {}
    for name, (centroids, indices) in books.items():
        if not len(centroids):   # an all-zero tensor: nothing to tune
            continue
        owner, _, attr = name.rpartition(".")
        layer = module.get_submodule(owner)
        parametrize.register_parametrization(layer, attr, _shared_parametrization(centroids, indices))
        getattr(layer.parametrizations, attr).original.requires_grad_(False)
        layers[name] = (layer, attr)
    kept = {n: m for n, m in (masks or {}).items() if n not in books}
    try:
        loss = finetune(module, spec, train, kept, progress=progress, cancelled=cancelled, teacher=teacher)
    finally:
        tuned = {}
        for name, (layer, attr) in layers.items():
            centroids = getattr(layer.parametrizations, attr)[0].centroids.detach().cpu().numpy()
            parametrize.remove_parametrizations(layer, attr, leave_parametrized=False)
            tuned[name] = (_half(centroids.astype(np.float32)), books[name][1])
    tuned = {n: tuned.get(n, book) for n, book in books.items()}
    _write(module, {n: _apply(c, i) for n, (c, i) in tuned.items()})
    return tuned, loss


def _write(module, arrays: dict[str, np.ndarray]) -> None:
    import torch

    state = dict(module.named_parameters())
    state.update(module.named_buffers())
    with torch.no_grad():
        for name, array in arrays.items():
            target = state[name]
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype))


# --- the stage -------------------------------------------------------------------------------------

def _note(spec: ClusterSpec, books: dict[str, Codebook], packed, weights: list[str]) -> str:
    s = packed.sections
    parts = ", ".join(f"{key} {s[key]:,}" for key in ("positions", "indices", "value tables", "raw values", "header")
                      if s.get(key))
    layers = {n: b for n, b in books.items() if n in weights}
    bias_k = spec.bias_clusters
    others = f"biases/norms share {bias_k} values per tensor" if bias_k else "biases/norms stored as float16"
    text = (f"k={spec.clusters} shared values per layer ({describe(layers)}); {others}; weights.packed is "
            f"{len(packed.data):,} bytes: {parts}")
    excluded = [n for n in weights if n not in books]
    return text + (f"; not clustered (float16): {', '.join(excluded)}" if excluded else "")


def _cluster_all(weights: dict[str, np.ndarray], vectors: dict[str, np.ndarray],
                 spec: ClusterSpec) -> tuple[dict, dict]:
    values, books = cluster_weights(weights, spec.clusters, spec.seed, spec.exclude)
    if spec.bias_clusters:
        more_values, more_books = cluster_weights(vectors, spec.bias_clusters, spec.seed, spec.exclude)
        values.update(more_values)
        books.update(more_books)
    return values, books


@runner("cluster")
def run_cluster(variant: Variant, spec: ClusterSpec, ctx: Context) -> Variant:
    """k-means weight sharing on the prunable weights of a torch module or of an ONNX graph, then the
    packed encoding of all its float parameters (the `weights.packed` artifact)."""
    if variant.module is None:
        return _cluster_onnx(variant, spec)
    from workbench.packing import encode
    from workbench.pruning import torch_weights

    module = copy_module(variant.module)
    weights = {n: p.detach().cpu().numpy() for n, p in torch_weights(module).items()}
    if not weights:
        raise WorkbenchError("cluster: the model has no Linear/Conv weights to cluster")
    vectors = {n: p.detach().cpu().numpy() for n, p in module.named_parameters()
               if p.dim() < 2 and p.is_floating_point()}
    values, books = _cluster_all(weights, vectors, spec)
    _write(module, values)
    out = variant.copy_meta(module=module, masks=dict(variant.masks))
    out.history.append({"clusters": spec.clusters, **_scores(module, ctx)})
    tune = spec.finetune
    if tune is not None and tune.epochs > 0 and books:
        needs_layer_modules("centroids", module)
        if ctx.splits.train is None:
            raise WorkbenchError("cluster.finetune: no training data (set data.train_path for user data)")
        books, loss = finetune_centroids(module, books, tune, ctx.splits.train, variant.masks,
                                         progress=lambda f: ctx.progress(f, "fine-tuning centroids"),
                                         cancelled=ctx.cancelled, teacher=ctx.teacher)
        ctx.check()
        out.history.append({"centroid_finetune_epochs": tune.epochs, "loss": loss, **_scores(module, ctx)})
        out.notes.extend(frozen_mode_note(module))
    state = {n: t.detach().cpu().numpy() for n, t in module.state_dict().items() if t.is_floating_point()}
    rounded = {n: _half(a) for n, a in state.items() if n not in books}
    _write(module, rounded)
    packed = encode({n: rounded.get(n, a) for n, a in state.items()})
    out.packed = packed.data
    out.storage_bits = _index_bits(spec)
    out.notes.append(_note(spec, books, packed, list(weights)))
    return out


def _index_bits(spec: ClusterSpec) -> int:
    """Bits per weight for the minimum-storage estimate: a cluster index (the shared values are a few
    floats per layer)."""
    return max(1, math.ceil(math.log2(spec.clusters)))


def _scores(module, ctx: Context) -> dict:
    from workbench.evaluate import score, torch_predict

    test = ctx.splits.test
    return score(torch_predict(module, test), test.labels) if test.labels is not None else {}


def _cluster_onnx(variant: Variant, spec: ClusterSpec) -> Variant:
    import onnx
    from onnx import numpy_helper

    from workbench.packing import encode
    from workbench.pruning import onnx_weights

    if spec.finetune is not None and spec.finetune.epochs > 0:
        raise WorkbenchError("cluster.finetune: fine-tuning centroids needs a torch model; this variant is ONNX")
    model = onnx.ModelProto()
    model.CopyFrom(variant.onnx_model)
    weights = onnx_weights(model)
    if not weights:
        raise WorkbenchError("cluster: no float Linear/Conv weights to cluster (cluster before quantizing)")
    floats = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    floats = {n: a for n, a in floats.items() if a.dtype.kind == "f"}
    vectors = {n: a for n, a in floats.items() if n not in weights and a.ndim <= 1}
    values, books = _cluster_all(weights, vectors, spec)
    tensors = {n: values[n] if n in values else _half(a) for n, a in floats.items()}
    for init in model.graph.initializer:
        if init.name in tensors:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(tensors[init.name]), init.name))
    packed = encode(tensors)
    out = variant.copy_meta(onnx_model=model, masks=dict(variant.masks), packed=packed.data,
                            storage_bits=_index_bits(spec))
    out.notes.append(_note(spec, books, packed, list(weights)))
    return out
