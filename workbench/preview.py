"""Instant preview of a compress setting without launching a run.

Cheap enough to recompute on every slider move for the sample models (well under 250 ms). Every number
says whether it is `computed`, `estimate` or `measured`, and every gain whether it would be real or
simulated, or that only a run can tell. A run is still needed for ONNX Runtime latency and export.

- Unstructured and N:M pruning: masks by the same code the pipeline uses, counts computed exactly, sizes
  estimated from the actual masked (and rounded) weight values, and, for small models, one-shot accuracy
  measured with torch on the test split.
- Weight clustering: the same k-means as the cluster stage on the (pruned) weights; the index bits and
  the minimum storage are estimates, the one-shot accuracy is measured.
- Low-rank: each layer's rank from its singular values (`svd_factors`, computed once per model) by the
  lowrank stage's rules, the weights after factorization and the multiply-adds estimated, one-shot
  accuracy measured on the truncated-SVD weights.
- Structured channels and distilled students: counted on a pruned copy of the torch model (an ONNX graph or a
  traced model: of its conversion to layer modules, `with_layers`), with one-shot accuracy for structured;
  without layer modules, estimates (every layer keeps the same share of its channels).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from workbench.data import Dataset
from workbench.oneshot import oneshot_answers
from workbench.presets import CompressSettings
from workbench.pruning import compute_masks, emptied_notes, override_for
from workbench.significance import changes, smallest_detectable
from workbench.size import tensor_min_bits
from workbench.specs import LowRankSpec, PruneSpec

LISTED = 6                          # layers named in a preview line before "and N more"
ACCURACY_PARAM_LIMIT = 5_000_000  # above this, a preview does not run the model (nor factorizes it)
REAL_BITS = {32: "float32 storage", 16: "fp16 weights", 8: "int8 kernels (ORT)", 4: "MatMulNBits 4-bit (ORT)",
             2: "MatMulNBits 2-bit (ORT)"}
Factors = tuple[np.ndarray, np.ndarray, np.ndarray]   # U, singular values, V^T of a weight as a matrix


@dataclass(frozen=True)
class Number:
    label: str
    value: float
    unit: str
    kind: str        # computed | estimate | measured
    note: str = ""
    change: str = ""   # an accuracy against the uncompressed model's answers: significance.PairedChange.verdict


@dataclass(frozen=True)
class Preview:
    numbers: tuple[Number, ...]
    layers: tuple[dict, ...]           # name, params, and sparsity (layer_kind "sparsity") or after ("params")
    gains: tuple[tuple[str, str, str], ...] = field(default=())   # (aspect, real|simulated|none|run|warning, why)
    layer_kind: str = "sparsity"
    after_kind: str = "estimate"                  # layer_kind "params": how the "after" counts were found

    def get(self, label: str) -> Number:
        return next(n for n in self.numbers if n.label == label)


@dataclass(frozen=True)
class Subject:
    """What a preview needs to know about the model (see ui.cache.subject)."""

    weights: dict[str, np.ndarray]                    # prunable weights, in model order
    other_params: int                                 # every other parameter (biases, norms, embeddings)
    module: Any = None                                # the torch module, for one-shot accuracy
    test: Dataset | None = None
    file_bytes: int | None = None
    macs: dict[str, int] | None = None                # per weight name: multiply-adds per sample
    in_axes: dict[str, int | None] | None = None      # ONNX: the input axis of each weight (N:M groups)
    out_axes: dict[str, int | None] | None = None     # the output-unit axis of each weight (scope unit)
    factors: dict[str, Factors] | None = None         # low-rank only: svd_factors(weights)
    onnx_model: Any = None                            # an ONNX graph (no torch module): accuracy through ORT
    dense_answers: np.ndarray | None = None           # which test samples the uncompressed model gets right
    rms: dict[str, np.ndarray] | None = None          # method wanda only: input_rms(runnable, solving split)

    @property
    def runnable(self) -> Any:
        """What one-shot accuracy runs: the torch module, else the ONNX graph."""
        return self.module if self.module is not None else self.onnx_model


def model_weights(loaded) -> tuple[dict[str, np.ndarray], int]:
    """(prunable weights as arrays, count of all other parameters) of a `models.LoadedModel`."""
    if loaded.module is not None:
        from workbench.pruning import torch_weight_arrays

        weights = torch_weight_arrays(loaded.module)
        total = sum(p.numel() for p in loaded.module.parameters())
    else:
        from onnx import numpy_helper

        from workbench.pruning import onnx_weights

        weights = onnx_weights(loaded.onnx_model)
        total = sum(numpy_helper.to_array(t).size for t in loaded.onnx_model.graph.initializer
                    if t.data_type in (1, 10, 11))  # float, float16, double
    return weights, max(0, total - sum(w.size for w in weights.values()))


def make_subject(loaded, test: Dataset | None = None, summary=None) -> Subject:
    """The `Subject` of a `models.LoadedModel`: its weights, MACs per layer (from `summary`, a
    workbench.summary.ModelSummary, computed when not given) and, for ONNX graphs, the weights' input axes."""
    from workbench.summary import summarize

    weights, other = model_weights(loaded)
    rows = {row.name: row.macs for row in (summary or summarize(loaded)).layers}
    macs = {n: rows.get(n.removesuffix(".weight")) for n in weights}
    from workbench.pruning import onnx_input_axes, onnx_output_axes, torch_output_axes

    in_axes = None if loaded.module is not None else onnx_input_axes(loaded.onnx_model)
    out_axes = torch_output_axes(loaded.module) if loaded.module is not None else onnx_output_axes(loaded.onnx_model)
    subject = Subject(weights, other, loaded.module, test, loaded.file_bytes,
                      macs if all(m is not None for m in macs.values()) else None, in_axes, out_axes=out_axes,
                      onnx_model=loaded.onnx_model if loaded.module is None else None)
    if _runs_accuracy(subject.runnable, test, sum(w.size for w in weights.values())):
        subject = replace(subject, dense_answers=oneshot_answers(subject.runnable, {}, test))
    return subject


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
            baseline_file_bytes: int | None = None, clusters: int = 0,
            in_axes: dict[str, int | None] | None = None, file_bits: int | None = None,
            layer_bits: dict[str, int] | None = None, layer_bits_real: bool = False,
            dense_answers: np.ndarray | None = None, rms: dict[str, np.ndarray] | None = None,
            out_axes: dict[str, int | None] | None = None, bias_clusters: int = 0) -> Preview:
    """Preview pruning `weights` to `sparsity` (or `spec.nm`), sharing `clusters` values per layer (0: no
    clustering) and rounding them to `bits`, stored at `file_bits` per value (default: `bits` where ONNX
    Runtime has a kernel for it, else float32). `layer_bits` ({layer pattern: bits}, as quantize.overrides)
    rounds the matching layers to their own bits instead, stored at those bits when `layer_bits_real`
    (MatMulNBits), else as float32 (fake). With `module` (a torch module or an ONNX graph whose weights
    these are) and `test`, the one-shot accuracy is measured too, and paired with `dense_answers` (which test
    samples the uncompressed model gets right) when given. `rms`: the weights' input RMS, for method wanda;
    `out_axes`: their output-unit axes, for scope unit; `bias_clusters`: the other parameters share that many
    values per tensor (counted as one tensor per layer) in the minimum storage."""
    spec = spec or PruneSpec(sparsity=sparsity)
    if sparsity > 0 or spec.nm:
        masks = compute_masks(weights, spec, sparsity, in_axes=in_axes, rms=rms, out_axes=out_axes)
    else:
        masks = {n: np.ones(w.shape, bool) for n, w in weights.items()}
    params = sum(w.size for w in weights.values())
    nonzero = sum(int(m.sum()) for m in masks.values())
    values = {n: w * masks[n] for n, w in weights.items()}
    if clusters:
        from workbench.clustering import cluster_weights

        values, _ = cluster_weights(values, clusters)
    real = layer_bits_real if layer_bits else None
    bits_of, stored = _layer_widths(weights, bits, layer_bits, real)
    stored = stored or file_bits or _file_bits(bits)
    values = {n: fake_quantize(w, bits_of[n]) for n, w in values.items()}
    min_bits = sum(tensor_min_bits(w.size, int(masks[n].sum()), index_bits(clusters) if clusters else bits_of[n])
                   for n, w in weights.items())
    bits_number, bits_gains = _bits_findings(bits, bits_of, {n: w.size for n, w in weights.items()}, real)
    numbers = [
        Number("parameters", params, "", "computed", "weights of Linear/Conv layers"),
        Number("nonzero", nonzero, "", "computed"),
        Number("sparsity", 1 - nonzero / params, "", "computed",
               f"achieved; {'2:4 fixes 50%' if spec.nm else f'requested {sparsity:.0%}'}"),
        bits_number,
        *([_index_bits_number(clusters)] if clusters else []),
        *_sizes(values, other_params, stored, baseline_file_bytes),
        Number("minimum storage", (min_bits + 16 * clusters * len(weights) + _other_bits(other_params, len(weights),
                                                                                     bias_clusters)) / 8, "bytes",
               "estimate", "nonzeros x bits + index, in a purpose-built sparse format"
               + (f"; {index_bits(clusters)}-bit cluster indices + {clusters} float16 values per layer"
                  if clusters else "")
               + (f"; biases as {index_bits(bias_clusters)}-bit indices into {bias_clusters} values"
                  if bias_clusters else "")),
        *_accuracy_number(module, values, test, params, min(bits_of.values()), "no fine-tuning", dense_answers),
    ]
    layers = tuple({"layer": n.removesuffix(".weight"), "params": int(w.size), "sparsity": float(1 - masks[n].mean())}
                   for n, w in weights.items())
    method = (_nm_gain(spec.nm),) if spec.nm else (SPARSITY_GAIN,) if sparsity > 0 else ()
    emptied = tuple(("emptied layer", "warning", note) for note in emptied_notes(masks, spec))
    return Preview(tuple(numbers), layers, method + emptied + bits_gains)


def _other_bits(other_params: int, layers: int, bias_clusters: int) -> int:
    """Bits of the parameters that are not layer weights: float32, or indices into `bias_clusters` float16
    values per tensor (one bias tensor per layer)."""
    if not bias_clusters:
        return 32 * other_params
    return other_params * index_bits(bias_clusters) + 16 * bias_clusters * layers


def _layer_bits_gains(bits_of: dict[str, int], real: bool) -> tuple[tuple[str, str, str], ...]:
    widths = "/".join(map(str, sorted(set(bits_of.values()), reverse=True)))
    if real:
        return (("bitwidth", "real", f"MatMulNBits stores each layer at its bits ({widths}): a smaller file; speed "
                 "depends on kernels, measured in a run"),)
    return (("bitwidth", "simulated", f"per-layer bits ({widths}) rounded in float (fake-quant): accuracy is "
             "simulated, storage computed"),)


def index_bits(clusters: int) -> int:
    """Bits of a cluster index: ceil(log2 k)."""
    return max(1, math.ceil(math.log2(clusters)))


def _index_bits_number(clusters: int) -> Number:
    return Number("index bits", index_bits(clusters), "bits", "estimate",
                  f"ceil(log2 {clusters}) bits per nonzero weight before entropy coding; weights.packed codes "
                  "them smaller, the ONNX file stays float32")


def _file_bits(bits: int) -> int:
    """Bits per weight value in the exported file: simulated bitwidths are still stored as float32."""
    return bits if bits in REAL_BITS else 32


def _layer_widths(weights: dict[str, np.ndarray], bits: int, layer_bits: dict[str, int] | None,
                  real: bool | None) -> tuple[dict[str, int], dict[str, int] | None]:
    """Per layer: the bits its values are rounded to (the first matching `layer_bits` pattern, else `bits`), and
    with per-layer bits (`real` not None) the bits each is stored at: its own (MatMulNBits) or float32 (fake)."""
    bits_of = {n: override_for(n, layer_bits or {}, bits) for n in weights}
    return bits_of, None if real is None else {n: b if real else 32 for n, b in bits_of.items()}


def _widths(s: CompressSettings,
            weights: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, int] | int, bool | None]:
    """`_layer_widths` for a Compress setting, the stored bits as one width when they do not differ per layer,
    and whether per-layer bits are real (None: no per-layer bits; QAT replaces them)."""
    real = s.layer_bits_method == "weight_only" if s.layer_bits and not s.uses_qat else None
    bits_of, stored = _layer_widths(weights, s.bits, dict(s.layer_bits) if real is not None else None, real)
    return bits_of, stored or _file_bits(s.bits), real


def _bits_findings(bits: int, bits_of: dict[str, int], counts: dict[str, int],
                   real: bool | None) -> tuple[Number, tuple[tuple[str, str, str], ...]]:
    """The 'bits per weight' number (with per-layer bits, the mean over `counts` weights per layer) and the
    bitwidth gains."""
    if real is None:
        return Number("bits per weight", bits, "bits", "computed"), _bits_gains(bits)
    mean = sum(counts[n] * b for n, b in bits_of.items()) / max(1, sum(counts.values()))
    per_layer = "per layer: " + ", ".join(f"{n.removesuffix('.weight')} {b}" for n, b in bits_of.items())
    return (Number("bits per weight", round(mean, 2), "bits", "computed", per_layer),
            _layer_bits_gains(bits_of, real))


def _sizes(stored: dict[str, np.ndarray], other_params: int, file_bits: int | dict[str, int],
           baseline_file_bytes: int | None, overhead: float | None = None) -> list[Number]:
    """Raw and gzip size estimates of storing the dense tensors `stored` at `file_bits` (one width, or one
    per tensor) plus float32 `other_params` and the file's `overhead` (default: what the baseline file holds
    beyond parameters)."""
    params = sum(w.size for w in stored.values())
    if overhead is None:
        overhead = max(0, (baseline_file_bytes or 0) - (params + other_params) * 4)
    width = file_bits if isinstance(file_bits, dict) else dict.fromkeys(stored, file_bits)
    raw = (sum(w.size * width[n] for n, w in stored.items()) + other_params * 32) / 8 + overhead
    gz = len(gzip.compress(b"".join(_codes(w, width[n]) for n, w in stored.items()), compresslevel=6))
    at = (f"{file_bits} bits, if every layer is stored so" if not isinstance(file_bits, dict)
          else "each layer's stored bits (" + "/".join(map(str, sorted(set(width.values()), reverse=True))) + ")")
    return [Number("raw size", raw, "bytes", "estimate", f"dense tensors at {at}: zeros still take space"),
            Number("compressed size", gz + other_params * 4 + overhead, "bytes", "estimate",
                   "gzip of the stored weight values")]


def _runs_accuracy(model, test: Dataset | None, params: int) -> bool:
    return model is not None and test is not None and test.labels is not None and params <= ACCURACY_PARAM_LIMIT


def _accuracy_number(model, weights: dict[str, np.ndarray], test: Dataset | None, params: int, bits: int,
                     what: str, dense: np.ndarray | None = None) -> list[Number]:
    """The one-shot accuracy of `model` (torch module or ONNX graph) with `weights` swapped in, when it can run;
    with the uncompressed model's `dense` answers, the samples that changed side and whether that is noise."""
    if not _runs_accuracy(model, test, params):
        return []
    engine = "ONNX Runtime" if isinstance(model, onnx.ModelProto) else "torch"
    right = oneshot_answers(model, weights, test)
    n = len(test)
    note = (f"{engine}, test split of {n:,} samples (one is {100 / n:.2f} pt; no change of fewer than "
            f"{smallest_detectable()} samples can be told from chance), {what}"
            + ("; quantization simulated" if bits < 32 else ""))
    change = changes(dense, right) if dense is not None and len(dense) == n else None
    if change:
        note += f"; against the uncompressed model, {change.sentence()}"
    return [Number("one-shot accuracy", float(right.mean()), "", "measured", note,
                   change.verdict if change else "")]


def preview_settings(settings: CompressSettings, subject: Subject) -> Preview:
    """The preview of a whole Compress setting: its method, clustering, bitwidth (or QAT) and transfer."""
    s, t = settings, settings.technique
    if t in ("structured", "distill"):
        base = _narrower(s, subject)
    elif t == "lowrank":
        base = _lowrank(s, subject)
    else:
        thinned = _thinned(s, subject) if s.thins_first else None
        on = thinned or subject
        spec = PruneSpec(method=s.method, sparsity=0.5, nm="2:4", exclude=s.exclude) if t == "nm" else \
            PruneSpec(method=s.method, scope=s.scope, sparsity=s.sparsity, exclude=s.exclude,
                      overrides=dict(s.overrides))
        base = preview(on.weights, on.other_params, spec.sparsity, s.bits, spec=spec,
                       module=on.runnable, test=on.test, baseline_file_bytes=on.file_bytes,
                       dense_answers=on.dense_answers, rms=on.rms, out_axes=on.out_axes,
                       clusters=s.clusters, bias_clusters=s.bias_clusters if s.clusters else 0,
                       in_axes=on.in_axes, file_bits=_qat_file_bits(s),
                       layer_bits=dict(s.layer_bits) if s.layer_bits and not s.uses_qat else None,
                       layer_bits_real=s.layer_bits_method == "weight_only")
        if on.macs:
            base = replace(base, numbers=(base.numbers[0], _macs_number(
                on.macs, "computed", "multiply-adds per sample of the dense kernels: zeros are multiplied "
                "too"), *base.numbers[1:]))
        if s.thins_first:
            base = replace(base, gains=(_thinning_gain(s, subject, thinned), *base.gains))
    numbers = list(base.numbers)
    gains = [g for g in base.gains if g[0] != "bitwidth" or not s.uses_qat]
    if s.method == "wanda" and t in ("unstructured", "nm") and subject.rms is None:
        gains.append(("ranking", "run", "wanda weighs each |w| by its input's RMS on the training inputs; this "
                      "preview does not run a model this large and ranks by |w| alone: the run reads the inputs"))
    if s.clusters and t in ("unstructured", "nm"):
        gains.append(("clustering", "real", f"weights.packed stores each nonzero as an entropy-coded index into "
                      f"{s.clusters} shared values per layer"
                      + (f" (biases: {s.bias_clusters} per tensor)" if s.bias_clusters else "")
                      + ": a real, smaller artifact that the workbench decodes; the ONNX file stays float32 and runs "
                      "at float speed"))
    elif s.clusters:
        numbers.append(_index_bits_number(s.clusters))
        gains.append(("clustering", "run", "the shared values are found in the run, after the method has changed "
                      "the weights; weights.packed (a real size) then stores each weight as an entropy-coded index"))
    if s.uses_qat:
        gains.append(("bitwidth", "real", f"quantization-aware training at {s.bits} bits: the run trains with "
                      f"rounded weights and exports them as {_qat_file_bits(s)}-bit integers (QDQ), so the file "
                      "shrinks; speed is measured in the run. The accuracy here is one-shot rounding, before that "
                      "training"))
    if len(s.classes) >= 2:
        gains.append(("transfer", "run", f"the run first re-trains the head for classes "
                      f"{', '.join(map(str, s.classes))} and compares every stage with that model; this preview "
                      "shows the model before the transfer"))
    elif s.retrain_head:
        gains.append(("transfer", "run", "the run first re-trains the head for the training data's classes and "
                      "compares every stage with that model; this preview shows the model before the transfer"))
    return replace(base, numbers=tuple(numbers), gains=tuple(gains))


def _qat_file_bits(s: CompressSettings) -> int | None:
    """The integer container the qat stage exports weights in: INT4 up to 4 bits with float activations,
    else int8 (workbench.qat); None without QAT."""
    if not s.uses_qat:
        return None
    return 4 if s.bits <= 4 and not s.qat_act8 else 8


def _macs_number(macs: dict[str, int], kind: str, note: str, scale: dict[str, float] | None = None) -> Number:
    total = sum(m * (scale or {}).get(n, 1.0) for n, m in macs.items())
    return Number("MACs", total, "", kind, note)


SPARSITY_GAIN = ("sparsity", "simulated", "zeros are stored densely: the raw file and latency do not change; "
                 "only compression (gzip) or a sparse format shrinks it")


def _nm_gain(nm: str) -> tuple[str, str, str]:
    return (f"{nm} sparsity", "simulated", f"accuracy experiment; no CPU kernel: {nm} runs faster only on GPUs "
            "with sparse tensor cores (NVIDIA Ampere and later); ONNX Runtime's CPU provider stores and "
            "multiplies the zeros densely, so file size and latency do not change")


def _bits_gains(bits: int) -> tuple[tuple[str, str, str], ...]:
    if bits >= 32:
        return ()
    if bits in REAL_BITS:
        return (("bitwidth", "real", f"{REAL_BITS[bits]}: a smaller file; speed depends on kernels, measured in "
                 "a run"),)
    return (("bitwidth", "simulated", f"no ONNX Runtime kernel for {bits}-bit: accuracy is simulated (fake-quant), "
             "storage computed"),)


# --- methods that change shapes ----------------------------------------------------------------

def _keep_shares(weights: dict[str, np.ndarray], keep: float) -> dict[str, float]:
    """Share of each layer's weights left when every layer keeps `keep` of its channels: outputs and inputs
    both shrink, except the model's input (first layer) and the classifier's outputs (last layer)."""
    names = list(weights)
    return {n: (keep if i else 1.0) * (keep if i < len(names) - 1 else 1.0) for i, n in enumerate(names)}


def with_layers(subject: Subject, module: Any, test: Dataset) -> Subject:
    """`subject` whose structured/distill previews count on `module`, the model's conversion to layer modules
    (workbench.onnx_torch; `test` typed as it takes inputs), when its parameters carry the subject's weight
    names; else `subject` unchanged (the preview then estimates)."""
    names = {n for n, _ in module.named_parameters()}
    return replace(subject, module=module, test=test) if set(subject.weights) <= names else subject


def _reshaped(stage, subject: Subject):
    """The torch model as the run's `stage` (structured or distill) shapes it, on a copy: structured channel
    removal with the stage's ratio, round_to and layers left whole, or the distilled student's architecture
    (the same Torch-Pruning calls as the run). (module, report), or None without layer modules (an ONNX graph,
    a traced model: the run converts those, the preview estimates) or test inputs."""
    from workbench.models import traced_kind

    if subject.module is None or subject.test is None or traced_kind(subject.module):
        return None
    from workbench.pipeline import example_inputs

    example = example_inputs(subject.test)
    if stage.kind == "structured":
        from workbench.structured import prune_structured

        return prune_structured(subject.module, example, stage)
    from workbench.distill import make_student

    return make_student(subject.module, example, stage)


def _narrower(s: CompressSettings, subject: Subject) -> Preview:
    """Structured channels or a distilled student: counts after the change. With a torch model they are
    counted on the reshaped copy (and a structured model's one-shot accuracy is measured); otherwise
    estimated from the keep share."""
    keep = s.width if s.technique == "distill" else 1 - s.ratio
    reshaped = _reshaped(s.method_stage, subject)
    if reshaped is not None:
        module, report = reshaped
        kept = dict(module.named_parameters())
        after = {n: int(kept[n].numel()) if n in kept else 0 for n in subject.weights}
        other, kind = sum(p.numel() for p in module.parameters()) - sum(after.values()), "computed"
        how = "Torch-Pruning's plan, run here on a copy of the model"
    else:
        module, report, shares = None, None, _keep_shares(subject.weights, keep)
        after = {n: int(round(w.size * shares[n])) for n, w in subject.weights.items()}
        other, kind = int(round(subject.other_params * keep)), "estimate"
        how = (f"every layer keeps {keep:.0%} of its channels (inputs and outputs), except the model's input and "
               "the classifier's outputs" + ("; round_to moves the counts a little" if s.round_to else ""))
    total = sum(after.values())
    bits_of, file_bits, real = _widths(s, subject.weights)
    width = file_bits if isinstance(file_bits, dict) else dict.fromkeys(after, file_bits)
    bits_number, bits_gains = _bits_findings(s.bits, bits_of, after, real)
    at = f"{file_bits} bits" if isinstance(file_bits, int) else "each layer's stored bits"
    numbers = [Number("parameters", total, "", kind, f"weights of Linear/Conv layers after: {how}")]
    if subject.macs:
        numbers.append(_macs_number(subject.macs, kind, f"multiply-adds per sample after: {how}",
                                    {n: after[n] / w.size for n, w in subject.weights.items()}))
    numbers += [
        bits_number,
        Number("raw size", (sum(after[n] * width[n] for n in after) + other * 32) / 8 + _overhead(subject), "bytes",
               "estimate", f"the smaller dense tensors at {at}, other parameters at 32 bits "
               f"({'as counted' if module is not None else 'scaled alike'}), plus the graph"),
        Number("minimum storage", (sum(after[n] * bits_of[n] for n in after) + other * 32) / 8, "bytes",
               "estimate", "weights x bits (dense: no index needed)"),
    ]
    structured = s.technique == "structured"
    if structured and module is not None:
        weights = {n: fake_quantize(kept[n].detach().numpy(), bits_of[n]) for n in subject.weights if n in kept}
        numbers += _accuracy_number(module, weights, subject.test, total, min(bits_of.values()),
                                    "channels removed, before recovery fine-tuning", subject.dense_answers)
    layers = tuple({"layer": n.removesuffix(".weight"), "params": int(w.size), "after": after[n]}
                   for n, w in subject.weights.items())
    what = ("channels/neurons/heads physically removed (Torch-Pruning)" if structured
            else f"a student {keep:g}x as wide, trained on the model's softened outputs")
    counted = "counted here on a pruned copy" if module is not None else "the numbers here are estimates"
    gains = [("size and MACs", "real", f"{what}: a smaller dense model, so fewer weights and multiply-adds in the "
              f"exported file; {counted}, the run measures the file and the speed")]
    if not structured or module is None:
        training = "recovery fine-tuning" if structured else "distillation"
        gains.append(("accuracy", "run", f"not previewed: it depends on the training ({training}) the run does"))
    whole = {n.removesuffix(".weight") for n, w in subject.weights.items() if after[n] == w.size}
    skipped = [f"{name} ({why})" for name, why in (report or {}).get("skipped", []) if name in whole]
    if skipped:
        gains.append(("layers left whole", "none", "; ".join(skipped[:LISTED]) +
                      (f"; and {len(skipped) - LISTED} more" if len(skipped) > LISTED else "")))
    return Preview(tuple(numbers), layers, (*gains, *bits_gains), "params", kind)


def _thinned(s: CompressSettings, subject: Subject) -> Subject | None:
    """`subject` after the setting's channels-first stage (`thin`), run on a copy as the run does: the weights
    it leaves, to be masked; None without layer modules (the preview then masks the whole model and says so)."""
    reshaped = _reshaped(s.thinning_stages()[0], subject)
    if reshaped is None:
        return None
    from workbench.pruning import torch_output_axes, torch_weight_arrays

    module = reshaped[0]
    weights = {n: w for n, w in torch_weight_arrays(module).items() if n in subject.weights}
    other = sum(p.numel() for p in module.parameters()) - sum(w.size for w in weights.values())
    # a Linear/Conv layer's multiply-adds per sample are its weight count times its output positions
    macs = {n: m * weights[n].size // subject.weights[n].size for n, m in subject.macs.items()} if subject.macs \
        else None
    removed = sum(w.size for w in subject.weights.values()) + subject.other_params - other - sum(
        w.size for w in weights.values())
    file_bytes = subject.file_bytes - 4 * removed if subject.file_bytes else None   # the same graph overhead
    return replace(subject, weights=weights, other_params=other, module=module, macs=macs, in_axes=None,
                   out_axes=torch_output_axes(module), rms=None, file_bytes=file_bytes)


def _thinning_gain(s: CompressSettings, subject: Subject, thinned: Subject | None) -> tuple[str, str, str]:
    if thinned is None:
        return ("channels first", "run", f"the run first removes {s.thin:.0%} of the channels per group "
                "(converting the model to layer modules); this preview cannot, so its counts are for pruning the "
                "whole model")
    before, after = (sum(w.size for w in x.weights.values()) for x in (subject, thinned))
    wanda = "; wanda's input RMS of the thinner model is read in the run, this preview ranks it by |w|" \
        if s.method == "wanda" else ""
    return ("channels first", "real", f"{s.thin:.0%} of the channels per group removed first (Torch-Pruning, "
            f"on a copy): {before:,} -> {after:,} weights in smaller dense layers, a really smaller file and "
            f"fewer multiply-adds; the sparsity and accuracy here are of that thinner model, before recovery "
            f"fine-tuning{wanda}")


def _overhead(subject: Subject) -> float:
    """Bytes of the model file beyond its parameters (graph structure, names)."""
    stored = sum(w.size for w in subject.weights.values()) + subject.other_params
    return max(0, (subject.file_bytes or 0) - stored * 4)


def svd_factors(weights: dict[str, np.ndarray], vectors: bool = True) -> dict[str, Factors]:
    """Each weight as a matrix (first axis by the rest) and its SVD; without `vectors`, the singular values
    only (U and V^T empty), which is all the rank choice needs."""
    out = {}
    for name, w in weights.items():
        matrix = w.reshape(w.shape[0], -1).astype(np.float64)
        if vectors:
            out[name] = np.linalg.svd(matrix, full_matrices=False)
        else:
            out[name] = (np.empty(0), np.linalg.svd(matrix, compute_uv=False), np.empty(0))
    return out


def _lowrank(s: CompressSettings, subject: Subject) -> Preview:
    """Low-rank factorization, with the lowrank stage's rules (workbench.lowrank): each layer's rank from its
    singular values, factorized only when that saves weights; the classifier (the last layer) and, in ONNX
    graphs, convolutions stay whole. With singular vectors in `subject.factors`, the gzip size of the factors
    and the one-shot accuracy of the truncated weights too."""
    from workbench.lowrank import choose_rank, saves_weights

    factors = subject.factors or svd_factors(subject.weights, vectors=False)
    vectors = all(u.size for u, _, _ in factors.values())
    values, stored, layers, last = {}, {}, [], list(subject.weights)[-1:]
    for name, w in subject.weights.items():
        u, sv, vt = factors[name]
        m, n = w.shape[0], w.size // w.shape[0]
        r = choose_rank(sv, LowRankSpec(energy=s.energy))
        whole = [name] == last or (subject.module is None and w.ndim > 2)
        factorized = not whole and saves_weights(r, m, n)
        layers.append({"layer": name.removesuffix(".weight"), "params": int(w.size),
                       "after": r * (m + n) if factorized else int(w.size), "rank": r if factorized else None})
        if factorized and vectors:
            left, right = (u[:, :r] * sv[:r]).astype(np.float32), vt[:r].astype(np.float32)
            values[name] = (left @ right).reshape(w.shape)
            stored[name + "/left"], stored[name + "/right"] = left, right
        else:
            values[name] = stored[name] = w
    total, params = sum(row["after"] for row in layers), sum(w.size for w in subject.weights.values())
    scale = {row["layer"]: row["after"] / row["params"] for row in layers}
    bits_of, file_bits, real = _widths(s, subject.weights)
    after = {n: row["after"] for n, row in zip(subject.weights, layers, strict=True)}
    bits_number, bits_gains = _bits_findings(s.bits, bits_of, after, real)
    how = (f"rank per layer keeping {s.energy:.0%} of its squared singular values, where that saves weights; "
           "the classifier kept whole")
    numbers = [Number("parameters", total, "", "estimate", f"weights of Linear/Conv layers after: {how}")]
    if subject.macs:
        numbers.append(_macs_number(subject.macs, "estimate", "multiply-adds per sample of the factorized layers",
                                    {n: scale.get(n.removesuffix(".weight"), 1.0) for n in subject.macs}))
    numbers.append(bits_number)
    if vectors:
        tensor_bits = file_bits if isinstance(file_bits, int) else \
            {t: file_bits[t.removesuffix("/left").removesuffix("/right")] for t in stored}
        numbers += _sizes(stored, subject.other_params, tensor_bits, None, overhead=_overhead(subject))
    numbers.append(Number("minimum storage", (sum(after[n] * bits_of[n] for n in after) + subject.other_params * 32)
                          / 8, "bytes", "estimate", "the factors' weights x bits (dense: no index needed)"))
    if vectors:
        numbers += _accuracy_number(subject.runnable, {n: fake_quantize(v, bits_of[n]) for n, v in values.items()},
                                    subject.test, params, min(bits_of.values()), "truncated SVD, no fine-tuning",
                                    subject.dense_answers)
    done = sum(row["rank"] is not None for row in layers)
    gain = (("size and MACs", "real", f"{done} of {len(layers)} layers become two smaller layers: fewer weights and "
             "multiply-adds in the exported file (estimated here; the run measures them and the speed)") if done
            else ("size and MACs", "none", "no layer saves weights at this energy: nothing would be factorized"))
    return Preview(tuple(numbers), tuple(layers), (gain, *bits_gains), "params")
