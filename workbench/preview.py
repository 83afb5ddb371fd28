"""Instant preview of a setting (sparsity, bitwidth) without launching a run.

Cheap enough to recompute on every slider move for the sample models (well under 250 ms): masks by
the same code the pipeline uses, counts computed exactly, sizes estimated from the actual masked
(and rounded) weight values, and, for small models, one-shot accuracy measured with torch on the
test split. Every number says whether it is `computed`, `estimate` or `measured`, and every gain
whether it would be real or simulated. A run is still needed for ONNX Runtime latency and export.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

import numpy as np

from workbench.data import Dataset
from workbench.pruning import compute_masks
from workbench.size import tensor_min_bits
from workbench.specs import PruneSpec

ACCURACY_PARAM_LIMIT = 5_000_000  # above this, a preview does not run the model
REAL_BITS = {32: "float32 storage", 16: "fp16 weights", 8: "int8 kernels (ORT)", 4: "MatMulNBits 4-bit (ORT)",
             2: "MatMulNBits 2-bit (ORT)"}


@dataclass(frozen=True)
class Number:
    label: str
    value: float
    unit: str
    kind: str        # computed | estimate | measured
    note: str = ""


@dataclass(frozen=True)
class Preview:
    numbers: tuple[Number, ...]
    layers: tuple[dict, ...]           # name, params, sparsity
    gains: tuple[tuple[str, str, str], ...] = field(default=())   # (aspect, real|simulated|none, reason)

    def get(self, label: str) -> Number:
        return next(n for n in self.numbers if n.label == label)


def model_weights(loaded) -> tuple[dict[str, np.ndarray], int]:
    """(prunable weights as arrays, count of all other parameters) of a `models.LoadedModel`."""
    if loaded.module is not None:
        from workbench.pruning import torch_weights

        weights = {n: p.detach().cpu().numpy().copy() for n, p in torch_weights(loaded.module).items()}
        total = sum(p.numel() for p in loaded.module.parameters())
    else:
        from onnx import numpy_helper

        from workbench.pruning import onnx_weights

        weights = onnx_weights(loaded.onnx_model)
        total = sum(numpy_helper.to_array(t).size for t in loaded.onnx_model.graph.initializer
                    if t.data_type in (1, 10, 11))  # float, float16, double
    return weights, max(0, total - sum(w.size for w in weights.values()))


def fake_quantize(w: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric per-tensor rounding to `bits` (zeros stay zero); 16/32 round through the float type."""
    if bits >= 32:
        return w
    if bits == 16:
        return w.astype(np.float16).astype(np.float32)
    scale = float(np.abs(w).max()) / (2 ** (bits - 1) - 1) or 1.0
    return np.round(w / scale).clip(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale


def _codes(w: np.ndarray, bits: int) -> bytes:
    """The bytes a format storing these values at `bits` would hold (for the gzip estimate)."""
    if bits >= 32:
        return w.astype(np.float32).tobytes()
    if bits == 16:
        return w.astype(np.float16).tobytes()
    scale = float(np.abs(w).max()) / (2 ** (bits - 1) - 1) or 1.0
    codes = np.round(w / scale).astype(np.int8)
    return codes.tobytes() if bits == 8 else np.packbits((codes.ravel()[:, None] >> np.arange(bits)) & 1).tobytes()


def preview(weights: dict[str, np.ndarray], other_params: int, sparsity: float, bits: int,
            spec: PruneSpec | None = None, module=None, test: Dataset | None = None,
            baseline_file_bytes: int | None = None) -> Preview:
    """Preview pruning `weights` to `sparsity` and storing them at `bits`."""
    spec = spec or PruneSpec(sparsity=sparsity)
    masks = compute_masks(weights, spec, sparsity) if sparsity > 0 else {n: np.ones(w.shape, bool)
                                                                        for n, w in weights.items()}
    params = sum(w.size for w in weights.values())
    nonzero = sum(int(m.sum()) for m in masks.values())
    pruned = {n: fake_quantize(w * masks[n], bits) for n, w in weights.items()}
    file_bits = bits if bits in REAL_BITS else 32  # simulated bitwidths are still stored as float32
    overhead = max(0, (baseline_file_bytes or 0) - (params + other_params) * 4)
    raw = (params * file_bits + other_params * 32) / 8 + overhead
    stored = b"".join(_codes(w, file_bits) for w in pruned.values())
    gz = len(gzip.compress(stored, compresslevel=6)) + other_params * 4
    min_bytes = sum(tensor_min_bits(w.size, int(masks[n].sum()), bits) for n, w in weights.items()) / 8
    numbers = [
        Number("parameters", params, "", "computed", "weights of Linear/Conv layers"),
        Number("nonzero", nonzero, "", "computed"),
        Number("sparsity", 1 - nonzero / params, "", "computed", f"achieved; requested {sparsity:.0%}"),
        Number("bits per weight", bits, "bits", "computed"),
        Number("raw size", raw, "bytes", "estimate",
               f"dense tensors at {file_bits} bits, if every layer is stored so: zeros still take space"),
        Number("compressed size", gz + overhead, "bytes", "estimate", "gzip of the stored weight values"),
        Number("minimum storage", min_bytes + other_params * 4, "bytes", "estimate",
               "nonzeros x bits + index, in a purpose-built sparse format"),
    ]
    if module is not None and test is not None and test.labels is not None and params <= ACCURACY_PARAM_LIMIT:
        numbers.append(Number("one-shot accuracy", _accuracy(module, pruned, test), "", "measured",
                              "torch, test split, no fine-tuning" + ("; quantization simulated" if bits < 32 else "")))
    layers = tuple({"layer": n.removesuffix(".weight"), "params": int(w.size), "sparsity": float(1 - masks[n].mean())}
                   for n, w in weights.items())
    return Preview(tuple(numbers), layers, _gains(sparsity, bits))


def _gains(sparsity: float, bits: int) -> tuple[tuple[str, str, str], ...]:
    gains = []
    if sparsity > 0:
        gains.append(("sparsity", "simulated", "zeros are stored densely: the raw file and latency do not change; "
                      "only compression (gzip) or a sparse format shrinks it"))
    if bits < 32:
        if bits in REAL_BITS:
            gains.append(("bitwidth", "real", f"{REAL_BITS[bits]}: a smaller file; speed depends on kernels, "
                          "measured in a run"))
        else:
            gains.append(("bitwidth", "simulated", f"no ONNX Runtime kernel for {bits}-bit: accuracy is simulated "
                          "(fake-quant), storage computed"))
    return tuple(gains)


def _accuracy(module, weights: dict[str, np.ndarray], test: Dataset) -> float:
    import torch

    params = dict(module.named_parameters())
    saved = {n: params[n].detach().clone() for n in weights}
    try:
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(torch.from_numpy(w.astype(np.float32)))
            logits = module(*(torch.from_numpy(x) for x in test.inputs))
        return float((logits.argmax(1).numpy() == test.labels).mean())
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
