"""Recipes as data: frozen, validated dataclasses that round-trip to plain dicts (and YAML).

A `RunSpec` is everything needed to reproduce a run: which model, which data, the compression
stages in order, and how to measure. Specs validate in `__post_init__`; errors name the field
(`stages[1].sparsity: ...`). `to_dict` writes a `version`; `from_dict` migrates older versions, so
old runs stay readable. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from workbench.errors import WorkbenchError

SPEC_VERSION = 1
MODEL_SUFFIXES = (".onnx", ".pt2", ".pt", ".ts", ".safetensors")
PRUNE_METHODS = ("magnitude", "random", "lamp", "wanda")
PRUNE_SCOPES = ("global", "layer", "unit")
STRUCTURED_SCOPES = ("global", "layer")
PRUNE_SCHEDULES = ("oneshot", "iterative", "gradual")
REWINDS = ("lr", "none", "weight")
RECONSTRUCTIONS = ("none", "refit", "obs")
QUANT_METHODS = ("static", "dynamic", "weight_only", "fp16", "fake")
LR_SCHEDULES = ("cosine", "constant")
STRUCTURED_IMPORTANCE = ("l1", "l2", "random")
STUDENT_INITS = ("teacher", "random")
CALIBRATIONS = ("minmax", "entropy", "percentile")
WEIGHT_ONLY_BITS = (2, 4, 8)


class SpecError(WorkbenchError):
    """An invalid recipe field; the message starts with the field's path."""


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise SpecError(f"{name}: {message}")


def _fraction(value: float, name: str, upper_open: bool = True) -> None:
    _check(isinstance(value, int | float) and not isinstance(value, bool), name, f"must be a number, got {value!r}")
    _check(0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0, name,
           f"must be in [0, 1{')' if upper_open else ']'}, got {value}")


@dataclass(frozen=True)
class ModelRef:
    """A sample by name, or a user file (ONNX, torch.export .pt2, TorchScript, safetensors + arch)."""

    sample: str | None = None
    path: str | None = None
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None  # per-sample shape, for TorchScript without data hints

    def __post_init__(self) -> None:
        _check((self.sample is None) != (self.path is None), "sample", "give exactly one of 'sample' or 'path'")
        if self.path is not None:
            suffix = Path(self.path).suffix.lower()
            _check(suffix in MODEL_SUFFIXES, "path",
                   f"unsupported file type '{suffix}' (supported: {', '.join(MODEL_SUFFIXES)})")
            _check(suffix != ".safetensors" or self.arch is not None, "arch",
                   "safetensors weights need 'arch' (a built-in architecture name)")

    @property
    def label(self) -> str:
        return self.sample or Path(self.path or "").name


@dataclass(frozen=True)
class DataRef:
    """Built-in data by name, or a user `.npz`/`.csv` for evaluation (+ optional training file)."""

    builtin: str | None = "digits"
    path: str | None = None
    train_path: str | None = None
    label_column: str | None = None
    max_samples: int | None = None
    classes: tuple[int, ...] | None = None   # keep only these labels, relabelled 0..k-1 in this order

    def __post_init__(self) -> None:
        _check(self.classes is None or (len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)
                                        and all(isinstance(c, int) and c >= 0 for c in self.classes)),
               "classes", f"must be two or more distinct non-negative labels, got {self.classes!r}")
        if self.path is not None and self.builtin is not None:
            object.__setattr__(self, "builtin", None)
        _check(self.builtin in (None, "digits"), "builtin", f"unknown dataset '{self.builtin}' (known: digits)")
        _check(self.builtin is not None or self.path is not None, "path", "give 'builtin' or 'path'")
        _check(self.max_samples is None or self.max_samples > 0, "max_samples", "must be positive")

    @property
    def label(self) -> str:
        return self.builtin or Path(self.path or "").name


@dataclass(frozen=True)
class FinetuneSpec:
    """Recovery training of a torch model; pruning masks are kept (pruned weights stay zero).

    `distill` > 0 mixes in knowledge distillation from the run's original (uncompressed) model: that
    share of the loss is the Hinton soft-target loss at `temperature`, the rest cross-entropy on labels."""

    kind: ClassVar[str] = "finetune"
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    schedule: str = "cosine"          # cosine decay to 0 over all steps, or constant
    label_smoothing: float = 0.0
    seed: int = 0
    distill: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _check(self.schedule in LR_SCHEDULES, "schedule",
               f"unknown '{self.schedule}' (known: {', '.join(LR_SCHEDULES)})")
        _fraction(self.label_smoothing, "label_smoothing")
        _check(isinstance(self.epochs, int) and self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _fraction(self.distill, "distill", upper_open=False)
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class PruneSpec:
    """Unstructured pruning of Linear/Conv (MatMul/Gemm/Conv) weights.

    `method` scores the weights: "magnitude" |w|, "random" (a baseline), "lamp" (Lee et al. 2021: |w|
    rescaled per layer, so a global ranking does not favour layers by their scale and never empties one),
    "wanda" (Sun et al. 2024: |w| times the RMS of its input on the training inputs, else the calibration
    split, read again every round; no labels).
    `scope="global"` ranks all weights together; `"layer"` prunes each layer to the same sparsity; `"unit"`
    prunes each output unit (a Linear's output feature, a conv's output channel) to it, the comparison group
    of Wanda's paper and a mask with the same count in every row.
    `overrides` sets a sparsity per layer (glob patterns on layer names; a module's name covers the layers
    inside it), `exclude` leaves layers dense.
    `schedule="iterative"` prunes `per_round` of the remaining weights per round until `sparsity`,
    running `finetune` between rounds (the seed recipe); `"gradual"` follows the cubic schedule of Zhu &
    Gupta (2017), s_r = sparsity * (1 - (1 - r/steps)^3), over `steps` rounds with `finetune` between.
    `rewind` says how each round retrains (Renda, Frankle & Carbin 2020): "lr" restarts the `finetune`
    learning-rate schedule every round (LR rewinding), "none" continues one schedule spread over all
    rounds (fine-tuning), "weight" resets the surviving weights to `rewind_weights` (an early-training
    checkpoint; samples ship one) and restarts the schedule (lottery-ticket weight rewinding).
    `nm="2:4"` keeps N of every M consecutive weights along the input dimension (semi-structured);
    it fixes the sparsity at 1 - N/M.
    `reconstruct` re-fits the kept weights after every round, layer by layer, so each layer reproduces the
    unpruned model's outputs on calibration inputs (no labels, no training): "refit" solves least squares
    on the mask as chosen; "obs" keeps each output unit's number of pruned weights but lets Optimal Brain
    Surgeon choose which (OBC, Frantar & Alistarh 2022), so it needs method magnitude (or lamp, which only
    moves the counts between layers) and no N:M. Torch
    Linear/Conv layers and ONNX MatMul/Gemm/Conv initializers (workbench.reconstruct, reconstruct_onnx).
    `calib_samples` bounds the inputs that reconstruction and method wanda read: a fixed random draw from the
    training split (else the calibration split), so a file sorted by class still gives every class; fewer
    samples solve and rank faster on large models (Wanda's and SparseGPT's papers use 128).
    """

    kind: ClassVar[str] = "prune"
    method: str = "magnitude"
    scope: str = "global"
    sparsity: float = 0.5
    overrides: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    schedule: str = "oneshot"
    per_round: float = 0.2
    finetune: FinetuneSpec | None = None
    seed: int = 0
    steps: int = 10
    rewind: str = "lr"
    rewind_weights: str | None = None
    nm: str | None = None
    reconstruct: str = "none"
    calib_samples: int = 2048

    def __post_init__(self) -> None:
        _check(self.method in PRUNE_METHODS, "method", f"unknown '{self.method}' (known: {', '.join(PRUNE_METHODS)})")
        _check(self.scope in PRUNE_SCOPES, "scope", f"unknown '{self.scope}' (known: {', '.join(PRUNE_SCOPES)})")
        _check(self.schedule in PRUNE_SCHEDULES, "schedule",
               f"unknown '{self.schedule}' (known: {', '.join(PRUNE_SCHEDULES)})")
        _fraction(self.sparsity, "sparsity")
        _fraction(self.per_round, "per_round")
        _check(self.per_round > 0, "per_round", "must be > 0")
        for pattern, value in self.overrides.items():
            _fraction(value, f"overrides[{pattern}]")
        _check(isinstance(self.steps, int) and 1 <= self.steps <= 1000, "steps", f"must be 1..1000, got {self.steps}")
        _check(self.rewind in REWINDS, "rewind", f"unknown '{self.rewind}' (known: {', '.join(REWINDS)})")
        _check(self.rewind_weights is None or self.rewind == "weight", "rewind_weights",
               "only used with rewind: weight")
        if self.nm is not None:
            n, m = nm_pattern(self.nm)
            _check(abs(self.sparsity - (1 - n / m)) < 1e-6, "sparsity",
                   f"nm {self.nm} fixes the sparsity at {1 - n / m:g}; set sparsity: {1 - n / m:g}")
            _check(self.schedule == "oneshot" and not self.overrides, "nm",
                   "N:M masks are one-shot and apply to every pruned layer (no schedule, no overrides)")
        _check(self.reconstruct in RECONSTRUCTIONS, "reconstruct",
               f"unknown '{self.reconstruct}' (known: {', '.join(RECONSTRUCTIONS)})")
        _check(self.reconstruct != "obs" or (self.method != "random" and self.nm is None), "reconstruct",
               "obs chooses the pruned weights itself: it needs method magnitude, lamp or wanda and no nm (use refit)")
        _check(self.reconstruct == "none" or self.rewind != "weight" or self.finetune is None, "reconstruct",
               "weight rewinding resets the solved weights every round; use rewind: lr with reconstruct")
        _check(isinstance(self.calib_samples, int) and self.calib_samples >= 1, "calib_samples",
               f"must be a positive integer, got {self.calib_samples!r}")

    @property
    def rounds(self) -> int:
        """Rounds needed to reach `sparsity`: `per_round` of the survivors each round (iterative) or
        `steps` (gradual)."""
        if self.schedule == "oneshot" or self.sparsity == 0:
            return 1
        if self.schedule == "gradual":
            return self.steps
        import math

        return max(1, math.ceil(math.log(1 - self.sparsity) / math.log(1 - self.per_round) - 1e-9))


def nm_pattern(text: str) -> tuple[int, int]:
    """"2:4" -> (2, 4): keep N of every M consecutive weights."""
    n, sep, m = str(text).partition(":")
    ok = sep and n.strip().isdigit() and m.strip().isdigit() and 1 <= int(n) < int(m) <= 32
    _check(bool(ok), "nm", f"expected 'N:M' with 1 <= N < M <= 32 (e.g. '2:4'), got {text!r}")
    return int(n), int(m)


@dataclass(frozen=True)
class QuantSpec:
    """Quantization of the exported ONNX model.

    static: int8 QDQ with calibration (ORT); dynamic: int8 weights, activations quantized at run time
    (ORT; MatMul/Gemm only unless `op_types` says otherwise); weight_only: MatMulNBits 2/4/8-bit (ORT);
    fp16: half-precision weights; fake: weights (and optionally activations) rounded to `weight_bits` /
    `activation_bits` but stored in float -- accuracy simulated, storage computed.
    `exclude` keeps layers in float and `overrides` sets weight bits per layer (glob patterns on layer
    names, matched as prune patterns are); per-layer bits need `fake` or `weight_only` (static and dynamic
    are int8 throughout), fp16 takes neither.
    """

    kind: ClassVar[str] = "quantize"
    method: str = "static"
    weight_bits: int = 8
    activation_bits: int | None = None
    calibration: str = "minmax"
    per_channel: bool = False
    op_types: tuple[str, ...] | None = None
    block_size: int = 32
    calib_samples: int = 128
    exclude: tuple[str, ...] = ()                          # layers kept in float
    overrides: dict[str, int] = field(default_factory=dict)   # layer pattern -> weight bits

    def __post_init__(self) -> None:
        m = self.method
        _check(m in QUANT_METHODS, "method", f"unknown '{m}' (known: {', '.join(QUANT_METHODS)})")
        _check(self.calibration in CALIBRATIONS, "calibration",
               f"unknown '{self.calibration}' (known: {', '.join(CALIBRATIONS)})")
        _check_weight_bits(m, self.weight_bits, "weight_bits")
        _check(all(isinstance(p, str) and p for p in self.exclude), "exclude", "must be a list of layer patterns")
        _check(m != "fp16" or not (self.exclude or self.overrides), "exclude" if self.exclude else "overrides",
               "fp16 converts every weight; use 'fake' or 'weight_only' for per-layer precision")
        _check(isinstance(self.overrides, dict), "overrides", "must be a mapping {layer pattern: bits}")
        for pattern, bits in self.overrides.items():
            where = f"overrides[{pattern}]"
            _check(isinstance(pattern, str) and bool(pattern), where, "the key must be a layer pattern")
            _check(m not in ("static", "dynamic") or bits == 8, where,
                   f"{m} quantization is int8; use 'fake' or 'weight_only' for per-layer bits")
            _check_weight_bits(m, bits, where)
        a = self.activation_bits
        _check(a is None or (isinstance(a, int) and 2 <= a <= 16), "activation_bits", f"must be 2..16, got {a}")
        _check(a is None or m == "fake", "activation_bits",
               "only method 'fake' takes activation_bits (static/dynamic activations are int8)")
        _check(self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0, "block_size",
               f"must be a power of two >= 16, got {self.block_size}")
        _check(self.calib_samples > 0, "calib_samples", "must be positive")


def _check_weight_bits(method: str, b: Any, where: str) -> None:
    """Weight bits that `method` can produce (`weight_bits`, or one layer's override)."""
    _check(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 32, where,
           f"must be an integer in 1..32, got {b!r}")
    if method in ("static", "dynamic"):
        _check(b == 8, where, f"{method} quantization is int8; use method 'fake' for {b} bits")
    elif method == "weight_only":
        _check(b in WEIGHT_ONLY_BITS, where,
               f"MatMulNBits supports {WEIGHT_ONLY_BITS}; use method 'fake' to simulate {b} bits")
    elif method == "fp16":
        _check(b == 16, where, "fp16 stores 16-bit weights; set weight_bits: 16")
    else:
        _check(2 <= b <= 16, where, f"fake quantization supports 2..16 bits, got {b}")


def quant_spec_for_bits(bits: int, base: QuantSpec | None = None) -> QuantSpec | None:
    """The quantization a bitwidth slider means: 32 none, 16 fp16, 8 static int8 (or the base's int8
    method), 4 and 2 weight-only MatMulNBits, other bits simulated (fake-quant)."""
    keep = {"per_channel": base.per_channel, "calibration": base.calibration} if base else {}
    if bits == 32:
        return None
    if bits == 16:
        return QuantSpec(method="fp16", weight_bits=16)
    if bits == 8:
        method = base.method if base and base.method in ("static", "dynamic") else "static"
        return QuantSpec(method=method, weight_bits=8, **keep)
    if bits in (2, 4):
        return QuantSpec(method="weight_only", weight_bits=bits, block_size=base.block_size if base else 32)
    return QuantSpec(method="fake", weight_bits=bits, **keep)


@dataclass(frozen=True)
class MeasureSpec:
    """How every variant is measured: the same for the baseline and each stage."""

    batch_sizes: tuple[int, ...] = (1, 256)
    threads: int = 1
    warmup: int = 10
    repeats: int = 100
    min_time_s: float = 0.25   # time fast calls for at least this long: a few-ms window is mostly noise
    torch_eager: bool = True
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        _check(len(self.batch_sizes) > 0 and all(b > 0 for b in self.batch_sizes), "batch_sizes",
               "must be a non-empty list of positive integers")
        _check(self.threads >= 1, "threads", "must be >= 1")
        _check(self.repeats >= 1 and self.warmup >= 0, "repeats", "repeats >= 1 and warmup >= 0")
        _check(0 <= self.min_time_s <= 60, "min_time_s", f"must be in [0, 60] seconds, got {self.min_time_s}")


@dataclass(frozen=True)
class StructuredSpec:
    """Structured pruning that physically removes channels / neurons / attention heads (Torch-Pruning),
    so the exported model is smaller and dense. `ratio` is the fraction removed from each prunable group;
    coupled layers (residual adds, BatchNorm, depthwise convs, heads) are pruned together."""

    kind: ClassVar[str] = "structured"
    ratio: float = 0.5
    importance: str = "l1"
    scope: str = "layer"
    exclude: tuple[str, ...] = ()
    round_to: int | None = None

    def __post_init__(self) -> None:
        _fraction(self.ratio, "ratio")
        _check(self.importance in STRUCTURED_IMPORTANCE, "importance",
               f"unknown '{self.importance}' (known: {', '.join(STRUCTURED_IMPORTANCE)})")
        _check(self.scope in STRUCTURED_SCOPES, "scope",
               f"unknown '{self.scope}' (known: {', '.join(STRUCTURED_SCOPES)})")
        _check(self.round_to is None or self.round_to >= 1, "round_to", "must be >= 1")


@dataclass(frozen=True)
class ClusterSpec:
    """Weight sharing (Deep Compression): k-means each layer's nonzero weights into `clusters` shared
    values; zeros stay zero. The ONNX file stays float; the packed, entropy-coded size is real."""

    kind: ClassVar[str] = "cluster"
    clusters: int = 16
    exclude: tuple[str, ...] = ()
    finetune: FinetuneSpec | None = None   # fine-tune the shared values (centroids), zeros kept
    bias_clusters: int | None = None       # also share values of biases / norm parameters
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.clusters, int) and 2 <= self.clusters <= 256, "clusters",
               f"must be an integer in 2..256, got {self.clusters}")
        _check(self.bias_clusters is None or 2 <= self.bias_clusters <= 256, "bias_clusters",
               f"must be 2..256, got {self.bias_clusters}")


@dataclass(frozen=True)
class QATSpec:
    """Quantization-aware training: train with the weights (and optionally activations) fake-quantized to
    `weight_bits` (straight-through estimator), then export ONNX QDQ with the weights stored as integers."""

    kind: ClassVar[str] = "qat"
    weight_bits: int = 4
    activation_bits: int | None = None     # None: activations stay float; 8: int8 QDQ activations
    per_channel: bool = True
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 64
    exclude: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        b, a = self.weight_bits, self.activation_bits
        _check(isinstance(b, int) and 2 <= b <= 8, "weight_bits", f"must be an integer in 2..8, got {b}")
        _check(a is None or a == 8, "activation_bits", f"must be null (float) or 8, got {a}")
        _check(isinstance(self.epochs, int) and self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


@dataclass(frozen=True)
class DistillSpec:
    """Knowledge distillation (Hinton et al. 2015): a narrower student keeping `width` of every prunable
    group's channels / neurons / heads, trained on the teacher's softened outputs (`temperature`) mixed
    with the hard labels (`alpha` = weight of the soft loss)."""

    kind: ClassVar[str] = "distill"
    width: float = 0.5
    temperature: float = 4.0
    alpha: float = 0.9
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    init: str = "teacher"      # teacher: start from the teacher's most important channels; random: re-initialised
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.width, int | float) and 0 < self.width <= 1, "width",
               f"must be in (0, 1], got {self.width}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _fraction(self.alpha, "alpha", upper_open=False)
        _check(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.init in STUDENT_INITS, "init", f"unknown '{self.init}' (known: {', '.join(STUDENT_INITS)})")


@dataclass(frozen=True)
class TransferSpec:
    """Re-train the classification head (the last Linear layer) on the run's training data, resized to
    its number of classes; the backbone stays frozen unless `train_backbone`. As the first stage, the
    baseline is the transferred model, so later stages are compared with it."""

    kind: ClassVar[str] = "transfer"
    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 64
    train_backbone: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


@dataclass(frozen=True)
class LowRankSpec:
    """Low-rank factorization (truncated SVD) of Linear and Conv weights: W ~ U_r S_r V_r^T becomes two
    smaller layers. `rank` fixes the rank of every layer; otherwise each layer keeps the smallest rank
    holding `energy` of its squared singular values. A layer is only factorized when that saves weights."""

    kind: ClassVar[str] = "lowrank"
    rank: int | None = None
    energy: float = 0.9
    exclude: tuple[str, ...] = ()
    finetune: FinetuneSpec | None = None

    def __post_init__(self) -> None:
        _check(self.rank is None or (isinstance(self.rank, int) and self.rank >= 1), "rank",
               f"must be a positive integer, got {self.rank}")
        _check(isinstance(self.energy, int | float) and 0 < self.energy <= 1, "energy",
               f"must be in (0, 1], got {self.energy}")


StageSpec = (PruneSpec | FinetuneSpec | QuantSpec | StructuredSpec | ClusterSpec | QATSpec | DistillSpec
             | TransferSpec | LowRankSpec)
STAGES: dict[str, type] = {cls.kind: cls for cls in (PruneSpec, FinetuneSpec, QuantSpec, StructuredSpec, ClusterSpec,
                                                     QATSpec, DistillSpec, TransferSpec, LowRankSpec)}


@dataclass(frozen=True)
class RunSpec:
    model: ModelRef
    data: DataRef = field(default_factory=DataRef)
    stages: tuple[StageSpec, ...] = ()
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    name: str = ""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "name": self.name,
            "seed": self.seed,
            "model": _plain(self.model),
            "data": _plain(self.data),
            "stages": [stage_dict(stage) for stage in self.stages],
            "measure": _plain(self.measure),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSpec:
        if not isinstance(raw, dict):
            raise SpecError(f"recipe: expected a mapping, got {type(raw).__name__}")
        raw = _migrate(dict(raw))
        _no_unknown(raw, {"version", "name", "seed", "model", "data", "stages", "measure"}, "recipe")
        _check("model" in raw, "model", "missing (give a sample name or a file path)")
        model = raw["model"]
        if isinstance(model, str):
            model = {"sample": model} if Path(model).suffix.lower() not in MODEL_SUFFIXES else {"path": model}
        data = raw.get("data") or {}
        if isinstance(data, str):
            data = {"builtin": data} if data == "digits" else {"path": data}
        stages = raw.get("stages") or []
        _check(isinstance(stages, list), "stages", "must be a list")
        return cls(
            model=_build(ModelRef, model, "model"),
            data=_build(DataRef, data, "data"),
            stages=tuple(_stage(s, f"stages[{i}]") for i, s in enumerate(stages)),
            measure=_build(MeasureSpec, raw.get("measure") or {}, "measure"),
            name=str(raw.get("name") or ""),
            seed=int(raw.get("seed", 0)),
        )


def stage_dict(stage: StageSpec) -> dict[str, Any]:
    """A stage as recipes write it: `{kind: {field: value, ...}}`."""
    return {stage.kind: _plain(stage)}


def _migrate(raw: dict[str, Any]) -> dict[str, Any]:
    version = raw.pop("version", SPEC_VERSION)
    _check(isinstance(version, int) and 1 <= version <= SPEC_VERSION, "version",
           f"unsupported recipe version {version!r} (this workbench reads 1..{SPEC_VERSION})")
    return raw  # version 1 is the first; later versions add their migration steps here


def _stage(raw: Any, where: str) -> StageSpec:
    if isinstance(raw, dict) and "kind" in raw:
        kind, body = raw["kind"], {k: v for k, v in raw.items() if k != "kind"}
    elif isinstance(raw, dict) and len(raw) == 1:
        (kind, body), = raw.items()
    else:
        raise SpecError(f"{where}: expected {{<stage>: {{...}}}} with stage one of {', '.join(STAGES)}")
    _check(kind in STAGES, where, f"unknown stage '{kind}' (known: {', '.join(STAGES)})")
    return _build(STAGES[kind], body or {}, f"{where}.{kind}")


def _build(cls: type, raw: Any, where: str) -> Any:
    _check(isinstance(raw, dict), where, f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    _no_unknown(raw, names, where)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except SpecError as exc:
        raise SpecError(f"{where}.{exc}") from None
    except TypeError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Turn YAML values (lists, dicts) into the field's type: tuples and nested specs."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is tuple:
        _check(isinstance(value, list | tuple), where, f"expected a list, got {value!r}")
        return tuple(value)
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    """Numbers, booleans and strings of the right type, so `lr: fast` fails naming its field."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if hint is float:
        _check(number, where, f"expected a number, got {value!r}")
        return float(value)
    if hint is int:
        _check(number and float(value).is_integer(), where, f"expected an integer, got {value!r}")
        return int(value)
    if hint is bool:
        _check(isinstance(value, bool), where, f"expected true or false, got {value!r}")
    if hint is str:
        _check(isinstance(value, str), where, f"expected text, got {value!r}")
    return value


def _no_unknown(raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    _check(not unknown, f"{where}.{unknown[0]}" if unknown else where,
           f"unknown field (known: {', '.join(sorted(known))})")


def _plain(spec: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[f.name] = value
    return out


def load_recipe(path: str | Path) -> RunSpec:
    """Read and validate a YAML (or JSON) recipe; relative model/data paths resolve next to it."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: recipe not found")
    return resolve_paths(parse_recipe(path.read_text(), path.name), path.parent)


def parse_recipe(text: str, name: str = "recipe") -> RunSpec:
    """Validate a recipe's YAML (or JSON) text; `name` labels YAML errors. Paths stay as written."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkbenchError(f"{name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return RunSpec.from_dict(raw)


def retarget(spec: RunSpec, model: ModelRef, data: DataRef) -> RunSpec:
    """`spec` on another model and data: its stages, measurement, class subset and sample limit kept."""
    data = dataclasses.replace(data, classes=spec.data.classes, max_samples=spec.data.max_samples)
    return dataclasses.replace(spec, model=model, data=data)


def missing_files(spec: RunSpec) -> list[str]:
    """The files a recipe names that are not there ("model.path: /x.onnx"): a run would fail on each."""
    named = {"model.path": spec.model.path, "data.path": spec.data.path, "data.train_path": spec.data.train_path}
    named.update({f"stages[{i}].prune.rewind_weights": s.rewind_weights for i, s in enumerate(spec.stages)
                  if isinstance(s, PruneSpec)})
    return [f"{field}: {path}" for field, path in named.items() if path and not Path(path).is_file()]


def resolve_paths(spec: RunSpec, base: Path) -> RunSpec:
    def fix(p: str | None) -> str | None:
        return p if p is None or Path(p).is_absolute() else str((base / p).resolve())

    model = dataclasses.replace(spec.model, path=fix(spec.model.path)) if spec.model.path else spec.model
    data = dataclasses.replace(spec.data, path=fix(spec.data.path), train_path=fix(spec.data.train_path))
    stages = tuple(dataclasses.replace(s, rewind_weights=fix(s.rewind_weights))
                   if isinstance(s, PruneSpec) and s.rewind_weights else s for s in spec.stages)
    return dataclasses.replace(spec, model=model, data=data, stages=stages)


def dump_recipe(spec: RunSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
