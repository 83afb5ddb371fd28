"""The compress knobs as data, and named presets built from them.

`CompressSettings` holds what the Compress screen shows: a method (unstructured pruning, N:M 2:4,
structured channels, a distilled student, low-rank factorization) with its knobs, optional weight
clustering, the bitwidth (post-training quantization, or quantization-aware training), and an optional
transfer to a subset of the classes first. `stages` turns a setting into recipe stages and `to_spec` into
a `RunSpec`; `from_spec` reads one back from a recipe, best effort; `sweep` builds a sweep over the
method's main knob and the bitwidth. `PRESETS` names useful starting points; `preset_spec(name, model)`
builds the recipe for any model, for the app and the CLI alike.
Per-layer `exclude` patterns and sparsity `overrides` (from workbench.sensitivity) go into the pruning stage;
per-layer weight bits (`layer_bits`, from the sensitivity bits allocation) replace the bitwidth with a
quantize stage of method `layer_bits_method` (fake, simulated; or weight_only, MatMulNBits) and overrides.
Non-goals: every recipe option (per-stage exclusions, fake activation bits): recipes in YAML cover those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workbench.models import traced_reason
from workbench.specs import (
    CALIBRATIONS,
    PRUNE_METHODS,
    PRUNE_SCHEDULES,
    PRUNE_SCOPES,
    RECONSTRUCTIONS,
    REWINDS,
    STUDENT_INITS,
    ClusterSpec,
    DataRef,
    DistillSpec,
    FinetuneSpec,
    LowRankSpec,
    MeasureSpec,
    ModelRef,
    PruneSpec,
    QATSpec,
    QuantSpec,
    RunSpec,
    SpecError,
    StructuredSpec,
    TransferSpec,
    quant_spec_for_bits,
)
from workbench.stage_needs import layer_edits, needs_conversion

LAYER_BITS_METHODS = ("fake", "weight_only")   # the quantize methods that take per-layer bits

TECHNIQUES = ("unstructured", "nm", "structured", "distill", "lowrank")
TORCH_ONLY = {"structured": "structured pruning", "distill": "distillation"}
NM = "2:4"
BITWIDTHS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
QAT_BITS = range(2, 9)
CLUSTER_CHOICES = (0, 4, 8, 16, 32, 64)   # 0: no clustering
INT8_KINDS = ("static", "dynamic")
MAX_RECOVERY_EPOCHS = 50
MAX_DISTILL_EPOCHS = 100
# recovery fine-tuning lr per sample (the transformer diverges at 0.01; it was trained at 1e-3, see bench/)
RECOVERY_LR = {"digits-mlp": 0.01, "digits-cnn": 0.01, "digits-vit": 1e-3}
DEFAULT_RECOVERY_LR = 1e-3      # unknown models: the cautious choice
RECOVERY_LRS = (0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4)   # the app's choices for `CompressSettings.lr`
RECOVERY_LABEL_SMOOTHING = 0.1
# a shared value moves every weight of its cluster at once: a tenth of the model's recovery lr (the
# clustering benchmark's centroid fine-tune: 0.001 on digits-mlp)
CENTROID_LR_DIVISOR = 10
# the main knob a sweep varies per method (grid key for workbench.jobs.apply_setting); N:M has none
SWEEP_KEYS = {"unstructured": "sparsity", "structured": "structured.ratio", "distill": "distill.width",
              "lowrank": "lowrank.energy"}


@dataclass(frozen=True)
class CompressSettings:
    technique: str = "unstructured"   # see TECHNIQUES
    sparsity: float = 0.0          # unstructured: fraction of Linear/Conv weights set to zero
    bits: int = 32                 # 32 none, 16 fp16, 8 int8, 2/4 MatMulNBits, others simulated (or QAT)
    method: str = "magnitude"      # unstructured and N:M: which weights go
    scope: str = "global"
    int8: str = "static"           # the int8 kind when bits == 8 (post-training)
    calibration: str = "minmax"
    epochs: int = 0                # recovery fine-tuning; per round when the schedule is iterative/gradual
    lr: float = 0.0                # its learning rate (0: the model's, RECOVERY_LR)
    schedule: str = "oneshot"
    per_round: float = 0.2         # iterative: fraction of the survivors pruned per round
    steps: int = 10                # gradual: rounds of the cubic schedule
    rewind: str = "lr"             # iterative/gradual: how each round retrains (PruneSpec.rewind)
    reconstruct: str = "none"      # unstructured and N:M: solve the kept weights on calibration inputs
    calib_samples: int = PruneSpec.calib_samples   # inputs that reconstruction and method wanda read
    thin: float = 0.0              # unstructured: first remove this fraction of channels per group (structured)
    thin_epochs: int | None = None   # and recover this long, at the model's lr (None: `epochs`)
    ratio: float = 0.5             # structured: fraction of channels removed per group
    round_to: int | None = 8       # structured: keep channel counts multiples of this (None: the exact ratio)
    width: float = 0.5             # distill: fraction of channels the student keeps
    distill_epochs: int = 30
    init: str = "teacher"          # distill: the student starts from the teacher's channels or at random
    energy: float = 0.9            # low-rank: share of squared singular values kept per layer
    clusters: int = 0              # weight sharing: shared values per layer (0: off)
    cluster_epochs: int = 0        # fine-tune the shared values
    bias_clusters: int = 0         # weight sharing: shared values per bias / norm tensor too (0: float16)
    qat: bool = False              # bits 2..8: quantization-aware training instead of post-training
    qat_epochs: int = 5
    qat_act8: bool = False         # QAT: int8 activations too
    classes: tuple[int, ...] = ()  # transfer first: re-train the head on these classes (empty: no transfer)
    retrain_head: bool = False     # transfer first: re-train the head on the training data's own classes
    transfer_backbone: bool = False   # transfer: train the whole model (backbone at a tenth of the head's lr)
    exclude: tuple[str, ...] = ()  # layers left dense (unstructured, N:M, structured) or whole (low-rank)
    overrides: tuple[tuple[str, float], ...] = ()   # unstructured: per-layer sparsity (layer pattern, sparsity)
    layer_bits: tuple[tuple[str, int], ...] = ()   # per-layer weight bits (layer pattern, bits): replace `bits`
    layer_bits_method: str = "fake"                # fake (simulated) or weight_only (MatMulNBits, real)

    def __post_init__(self) -> None:
        _one_of(self.technique, TECHNIQUES, "technique")
        _one_of(self.bits, BITWIDTHS, "bits")
        _one_of(self.method, PRUNE_METHODS, "method")
        _one_of(self.scope, PRUNE_SCOPES, "scope")
        _one_of(self.int8, INT8_KINDS, "int8")
        _one_of(self.calibration, CALIBRATIONS, "calibration")
        _one_of(self.schedule, PRUNE_SCHEDULES, "schedule")
        _one_of(self.rewind, REWINDS, "rewind")
        _one_of(self.reconstruct, RECONSTRUCTIONS, "reconstruct")
        _one_of(self.init, STUDENT_INITS, "init")
        _one_of(self.clusters, (0, *range(2, 257)), "clusters")
        _one_of(self.bias_clusters, (0, *range(2, 257)), "bias_clusters")
        for name, low, top in (("epochs", 0, MAX_RECOVERY_EPOCHS), ("cluster_epochs", 0, MAX_RECOVERY_EPOCHS),
                               ("thin_epochs", 0, MAX_RECOVERY_EPOCHS), ("qat_epochs", 0, MAX_RECOVERY_EPOCHS),
                               ("distill_epochs", 1, MAX_DISTILL_EPOCHS)):
            value = getattr(self, name)
            if not (isinstance(value, int) and low <= value <= top) and not (name == "thin_epochs" and value is None):
                raise SpecError(f"{name}: must be an integer in {low}..{top}, got {value!r}")
        if not (isinstance(self.lr, int | float) and 0 <= self.lr < 1):
            raise SpecError(f"lr: must be in [0, 1) (0: the model's own), got {self.lr!r}")
        # the spec classes validate their own fields (fractions, steps, widths, energies)
        PruneSpec(sparsity=self.sparsity, per_round=self.per_round, steps=self.steps, rewind=self.rewind,
                  overrides=dict(self.overrides), exclude=self.exclude, calib_samples=self.calib_samples)
        StructuredSpec(ratio=self.ratio, round_to=self.round_to)
        try:
            StructuredSpec(ratio=self.thin)
        except SpecError as exc:
            raise SpecError("thin" + str(exc).removeprefix("ratio")) from None
        DistillSpec(width=self.width, epochs=self.distill_epochs, init=self.init)
        LowRankSpec(energy=self.energy)
        _one_of(self.layer_bits_method, LAYER_BITS_METHODS, "layer_bits_method")
        if self.layer_bits:
            try:
                self.layer_quant_spec()
            except SpecError as exc:
                raise SpecError(f"layer_bits: {exc}") from None
        if len(set(self.classes)) != len(self.classes) or not all(isinstance(c, int) and c >= 0
                                                                   for c in self.classes):
            raise SpecError(f"classes: must be distinct non-negative labels, got {self.classes!r}")

    @property
    def iterative(self) -> bool:
        """Pruning in rounds with fine-tuning between them (iterative or gradual schedule)."""
        return self.technique == "unstructured" and self.schedule != "oneshot"

    @property
    def transfers(self) -> bool:
        """A transfer stage comes first: to a class subset, or to the classes of the user's training data."""
        return len(self.classes) >= 2 or self.retrain_head

    @property
    def uses_qat(self) -> bool:
        return self.qat and self.bits in QAT_BITS

    def stages(self, model: ModelRef | None = None, always_prune: bool = False) -> tuple:
        """The recipe stages: [transfer], the method (+ recovery), [cluster], then quantize or QAT. The model
        picks the fine-tuning learning rates (without one: the defaults, enough to ask what the stages do)."""
        recovery = recovery_finetune(model, self.epochs, self.lr) if self.epochs else None
        stages: list = [TransferSpec(train_backbone=self.transfer_backbone)] if self.transfers else []
        stages += self._method_stages(recovery, always_prune, model)
        if self.clusters:
            tune = centroid_finetune(model, self.cluster_epochs) if self.cluster_epochs else None
            stages.append(ClusterSpec(clusters=self.clusters, finetune=tune, bias_clusters=self.bias_clusters or None))
        if self.uses_qat:
            stages.append(QATSpec(weight_bits=self.bits, activation_bits=8 if self.qat_act8 else None,
                                  epochs=self.qat_epochs))
        elif self.layer_bits:
            stages.append(self.layer_quant_spec())
        else:
            quant = quant_spec_for_bits(self.bits, QuantSpec(method=self.int8, calibration=self.calibration))
            stages += [quant] if quant else []
        return tuple(stages)

    def layer_quant_spec(self) -> QuantSpec:
        """The quantize stage of the per-layer bits: every listed layer at its bits (`weight_bits`, for any
        other layer, is the most bits listed); fake rounds per channel, as the sensitivity table measured."""
        bits = dict(self.layer_bits)
        return QuantSpec(method=self.layer_bits_method, weight_bits=max(bits.values()),
                         per_channel=self.layer_bits_method == "fake", overrides=bits)

    @property
    def method_stage(self):
        """The stage that applies the method, without recovery (None when nothing is pruned)."""
        stages = self._method_stages(None, False, None)
        return stages[0] if stages else None

    def _method_stages(self, recovery: FinetuneSpec | None, always_prune: bool, model: ModelRef | None) -> list:
        t, first = self.technique, []
        if t == "distill":
            return [DistillSpec(width=self.width, epochs=self.distill_epochs, init=self.init)]
        if t == "lowrank":
            return [LowRankSpec(energy=self.energy, exclude=self.exclude, finetune=recovery)]
        if t == "structured":
            main = StructuredSpec(ratio=self.ratio, round_to=self.round_to, exclude=self.exclude)
        elif t == "nm":
            main = PruneSpec(method=self.method, sparsity=0.5, nm=NM, exclude=self.exclude,
                             reconstruct=self._reconstruct(), calib_samples=self.calib_samples)
        elif self.sparsity > 0 or always_prune:
            first = self.thinning_stages(model)
            main = PruneSpec(method=self.method, scope=self.scope, sparsity=self.sparsity, schedule=self.schedule,
                             per_round=self.per_round, steps=self.steps, rewind=self._rewind,
                             finetune=recovery if self.iterative else None, exclude=self.exclude,
                             overrides=dict(self.overrides), reconstruct=self._reconstruct(),
                             calib_samples=self.calib_samples)
        else:
            return []
        return first + ([main, recovery] if recovery and not self.iterative else [main])

    @property
    def thins_first(self) -> bool:
        """Channels are removed before the weights are pruned (unstructured, `thin` and a sparsity above 0)."""
        return self.technique == "unstructured" and self.thin > 0 and self.sparsity > 0

    def thinning_stages(self, model: ModelRef | None = None) -> list:
        """Unstructured with `thin`: the structured stage that first removes that share of channels per group
        (the exact ratio: the zeros pruned afterwards leave no SIMD width to keep) and its recovery:
        `thin_recovery_epochs` at the model's own learning rate, not `lr`. Removing channels is a bigger
        change than a round of pruning: the benchmarked recipe recovers from it at 0.01 and retrains its
        rounds at 0.003."""
        if self.technique != "unstructured" or not self.thin:
            return []
        epochs = self.thin_recovery_epochs
        return [StructuredSpec(ratio=self.thin, exclude=self.exclude),
                *([recovery_finetune(model, epochs)] if epochs else [])]

    @property
    def thin_recovery_epochs(self) -> int:
        """Epochs of the recovery after the channels are removed first: `thin_epochs`, else `epochs`."""
        return self.epochs if self.thin_epochs is None else self.thin_epochs

    @property
    def _rewind(self) -> str:
        """The prune stage's `rewind`: it only says how rounds retrain, so without training the default."""
        return self.rewind if self.iterative and self.epochs else "lr"

    def _reconstruct(self) -> str:
        """The prune stage's `reconstruct`: the chosen one, or "none" where `problems` refuses the mix."""
        return "none" if self._reconstruct_problem() else self.reconstruct

    def _reconstruct_problem(self) -> str | None:
        if self.reconstruct == "obs" and (self.method == "random" or self.technique == "nm"):
            return ("OBS reconstruction chooses the pruned weights itself: use it with unstructured magnitude, "
                    "lamp or wanda pruning, or pick refit")
        if self.reconstruct != "none" and self._rewind == "weight":
            return ("weight rewinding resets the solved weights every round: use LR rewinding or fine-tuning with "
                    "reconstruction")
        return None

    def to_spec(self, model: ModelRef, data: DataRef | None = None, measure: MeasureSpec | None = None,
                name: str = "", always_prune: bool = False) -> RunSpec:
        """The recipe for this setting. `always_prune` keeps a prune stage at 0% (a sweep varies it).
        A transfer sets the data's class subset (`DataRef.classes`)."""
        data = data or DataRef()
        if len(self.classes) >= 2:
            data = dataclasses.replace(data, classes=self.classes)
        return RunSpec(model=model, data=data, stages=self.stages(model, always_prune),
                       measure=measure or MeasureSpec(), name=name)

    def sweep(self, model: ModelRef, values: list[float], bits: list[int], data: DataRef | None = None,
              measure: MeasureSpec | None = None, name: str = "",
              thin: list[float] | None = None) -> tuple[RunSpec, dict[str, list]]:
        """(base recipe, grid) of a sweep over the method's main knob (`values`, fractions; see SWEEP_KEYS),
        the bitwidth (with QAT: the QAT stage's weight bits, 2..8) and, with channels removed first, the
        share removed (`thin`, fractions)."""
        if thin and not self.thins_first:
            raise SpecError("sweep: channels removed first are swept only when the setting removes some before "
                            "pruning (thin and a sparsity above 0)")
        if bits and self.clusters:
            raise SpecError("sweep: clustering replaces quantization; sweep bitwidths without clustering")
        if bits and self.layer_bits:
            raise SpecError("sweep: per-layer bits are set and every run keeps them; clear them to sweep bitwidths")
        base = dataclasses.replace(self, bits=8 if bits else self.bits).to_spec(model, data, measure, name,
                                                                                always_prune=True)
        grid: dict[str, list] = {}
        if values and self.technique in SWEEP_KEYS:
            grid[SWEEP_KEYS[self.technique]] = sorted(values)
        if thin:
            grid["structured.ratio"] = sorted(thin)
        if bits:
            grid["qat.weight_bits" if self.uses_qat else "bits"] = sorted(bits, reverse=True)
        return base, grid

    @classmethod
    def from_spec(cls, spec: RunSpec) -> CompressSettings:
        """The knobs a recipe sets (its first stage of each kind), best effort."""
        first = {kind: next((s for s in spec.stages if s.kind == kind), None) for kind in
                 ("prune", "finetune", "quantize", "structured", "distill", "lowrank", "cluster", "qat", "transfer")}
        values: dict = {}
        tune = first["finetune"]
        if first["structured"] and first["prune"] and first["prune"].nm is None:
            values["thin"] = first["structured"].ratio   # channels removed first, then the weights pruned
            thin_tune = _tune_after(spec, first["structured"])
            values["thin_epochs"] = min(thin_tune.epochs, MAX_RECOVERY_EPOCHS) if thin_tune else 0
            tune = _tune_after(spec, first["prune"])
        if first["structured"] and "thin" not in values:
            s = first["structured"]
            values.update(technique="structured", ratio=s.ratio, round_to=s.round_to, exclude=s.exclude)
        elif first["distill"]:
            d = first["distill"]
            values.update(technique="distill", width=d.width, distill_epochs=min(d.epochs, MAX_DISTILL_EPOCHS),
                          init=d.init)
        elif first["lowrank"]:
            values.update(technique="lowrank", energy=first["lowrank"].energy, exclude=first["lowrank"].exclude)
            tune = first["lowrank"].finetune or tune
        elif first["prune"]:
            p = first["prune"]
            values.update(method=p.method, exclude=p.exclude)
            if p.nm is not None:
                values["technique"] = "nm"
            else:
                values.update(sparsity=p.sparsity, scope=p.scope, schedule=p.schedule, per_round=p.per_round,
                              steps=p.steps, rewind=p.rewind, overrides=tuple(p.overrides.items()))
                tune = p.finetune if p.schedule != "oneshot" else tune
            values.update(reconstruct=p.reconstruct, calib_samples=p.calib_samples)
        if tune:
            values["epochs"] = min(tune.epochs, MAX_RECOVERY_EPOCHS)
            values["lr"] = 0.0 if tune.lr == model_lr(spec.model) else tune.lr
        if values.get("thin_epochs") == values.get("epochs", 0):
            values["thin_epochs"] = None   # the same as the recovery's: the default
        values.update(_cluster_values(first["cluster"]))
        values.update(_quant_values(first["quantize"], first["qat"]))
        if first["transfer"] and spec.data.classes:
            values["classes"] = tuple(spec.data.classes)
        elif first["transfer"]:
            values["retrain_head"] = True
        if first["transfer"]:
            values["transfer_backbone"] = first["transfer"].train_backbone
        return cls(**values)

    def describe(self) -> str:
        """A short label, e.g. '90% magnitude/global + 30 ep recovery + int8 static'."""
        parts = [self._describe_method() + self._describe_layers()] if self._describe_method() else []
        if self.epochs and self.technique != "distill" and parts:
            parts.append(f"{self.epochs} ep recovery" + (" per round" if self.iterative else "")
                         + (f" at lr {self.lr:g}" if self.lr else ""))
        if self.clusters:
            parts.append(f"k={self.clusters} clustering" + (f" (biases k={self.bias_clusters})" if self.bias_clusters
                                                           else "")
                         + (f" + {self.cluster_epochs} ep centroid FT" if self.cluster_epochs else ""))
        if self.uses_qat:
            parts.append(f"QAT {self.bits}-bit{' + int8 activations' if self.qat_act8 else ''} "
                         f"({self.qat_epochs} ep)")
        elif self.layer_bits:
            widths = "/".join(map(str, sorted({b for _, b in self.layer_bits}, reverse=True)))
            parts.append(f"per-layer {widths}-bit {self.layer_bits_method} ({len(self.layer_bits)} layers)")
        else:
            quant = quant_spec_for_bits(self.bits, QuantSpec(method=self.int8))
            if quant:
                parts.append(f"int8 {quant.method}" if self.bits == 8 else f"{self.bits}-bit {quant.method}")
        backbone = " + backbone" if self.transfer_backbone else ""
        if len(self.classes) >= 2:
            parts.insert(0, f"transfer to classes {','.join(map(str, self.classes))}{backbone}")
        elif self.retrain_head:
            parts.insert(0, f"transfer (head re-trained on the training data{backbone})")
        return " + ".join(parts) or "baseline only"

    def _describe_method(self) -> str:
        t = self.technique
        solved = {"none": "", "refit": " + least-squares refit", "obs": " + OBS reconstruction"}[self._reconstruct()]
        if t == "nm":
            return f"{NM} {self.method}{solved}"
        if t == "structured":
            return f"structured {self.ratio:.0%} channels" + (f" (round to {self.round_to})" if self.round_to else "")
        if t == "distill":
            return f"distilled student {self.width:g}x ({self.distill_epochs} ep, {self.init} init)"
        if t == "lowrank":
            return f"low-rank {self.energy:.0%} energy"
        if self.sparsity <= 0:
            return ""
        epochs = self.thin_recovery_epochs
        thin = (f"{self.thin:.0%} channels removed" + (f" + {epochs} ep recovery" if epochs else "")
                + ", then ") if self.thin else ""
        rounds = {"iterative": f" iterative {self.per_round:.0%}/round", "gradual": f" gradual {self.steps} steps"}
        rewind = {"lr": ", LR rewinding", "none": ", fine-tuning", "weight": ", weight rewinding"}
        return (f"{thin}{self.sparsity:.0%} {self.method}/{self.scope}{rounds.get(self.schedule, '')}"
                + (rewind[self.rewind] if self.iterative and self.epochs else "") + solved)

    def _describe_layers(self) -> str:
        overrides = self.overrides and self.technique == "unstructured"
        excludes = self.technique in ("nm", "structured", "lowrank") or (self.technique == "unstructured" and
                                                                        self.sparsity > 0)
        per_layer = [f"{len(self.exclude)} layer(s) excluded" if self.exclude and excludes else "",
                     f"{len(self.overrides)} per-layer sparsities" if overrides else ""]
        return "".join(f" ({p})" for p in per_layer if p)

    def converts(self, model_kind: str, traced: str | None = None) -> bool:
        """Whether a run of this setting converts the model to torch modules first (workbench.stage_needs):
        an ONNX graph it trains or reshapes, or a traced torch model (`traced`) whose layers it edits."""
        return needs_conversion(self.stages(), model_kind != "torch", traced)

    def problems(self, model_kind: str, has_train_data: bool, has_rewind_checkpoint: bool = True,
                 traced: str | None = None, unconvertible: str | None = None, has_layers: bool = True) -> list[str]:
        """Reasons this setting cannot run on the current model and data (empty when it can).
        `has_rewind_checkpoint`: the model has an early-training checkpoint (samples ship one); `traced`: the
        torch model's traced kind (workbench.models.traced_kind), which has no Linear/Conv modules to edit;
        `unconvertible`: why the model does not convert to torch modules (workbench.onnx_torch), when a run of
        this setting would convert it (`converts`); None when it converts. `has_layers`: the model has Conv /
        Gemm / MatMul weights, which every method but quantization acts on."""
        out = []
        if not has_layers and (self.technique != "unstructured" or self.sparsity > 0 or self.clusters):
            out.append("the model has no Conv, Gemm or MatMul layer with its weights: nothing for this method to "
                       "act on (quantization alone may still apply)")
        refused = [r for stage in self.stages() for edit in layer_edits(stage) if traced and unconvertible
                   and (r := traced_reason(edit, traced, unconvertible))]
        out += refused[:1]
        trains = self._training_steps()
        what = TORCH_ONLY.get(self.technique) or ("structured pruning" if self.thins_first else None)
        what = what or (trains[0] if trains else None)
        if what and model_kind != "torch" and unconvertible:
            out.append(f"{what} needs torch modules, and this ONNX graph does not convert to them: {unconvertible}")
        elif trains and not has_train_data:
            out.append(f"{trains[0]} needs training data; the chosen data has none (add a labelled training file "
                       "on the Model page, data.train_path in a recipe, or use the built-in data)")
        if self.clusters and (self.bits != 32 or self.layer_bits):
            out.append("clustering already stores each weight as a short index into shared values, and a "
                       "quantize stage after it would drop the packed weights: set the bitwidth to 32 (and "
                       "clear per-layer bits)")
        if self.layer_bits and self.uses_qat:
            out.append("per-layer bits are post-training quantization: turn quantization-aware training off, or "
                       "clear the per-layer bits")
        if self.iterative and self.rewind == "weight" and self.epochs and not has_rewind_checkpoint:
            out.append("weight rewinding needs an early-training checkpoint (prune.rewind_weights), and this "
                       "model has none: use LR rewinding, or set rewind_weights in a recipe")
        if self.technique in ("unstructured", "nm") and (problem := self._reconstruct_problem()):
            out.append(problem)
        if len(self.classes) == 1:
            out.append("transfer: pick at least two classes (or none)")
        return out

    def _training_steps(self) -> list[str]:
        """What this setting trains, in recipe order (each needs a torch model and training data)."""
        steps = ["transfer"] if self.transfers else []
        if self.technique == "distill":
            steps.append("distillation")
        elif self.epochs and (self.technique != "unstructured" or self.sparsity > 0) or (
                self.thins_first and self.thin_recovery_epochs):
            steps.append("recovery fine-tuning")
        if self.clusters and self.cluster_epochs:
            steps.append("centroid fine-tuning")
        if self.uses_qat:
            steps.append("quantization-aware training")
        return steps


def _tune_after(spec: RunSpec, stage) -> FinetuneSpec | None:
    """The fine-tuning stage right after `stage` in the recipe, if that is one."""
    index = spec.stages.index(stage) + 1
    return spec.stages[index] if index < len(spec.stages) and spec.stages[index].kind == "finetune" else None


def _one_of(value, allowed: tuple, name: str) -> None:
    if value not in allowed:
        shown = ", ".join(map(str, allowed)) if len(allowed) <= 12 else f"{allowed[0]}, {allowed[1]}..{allowed[-1]}"
        raise SpecError(f"{name}: unknown {value!r} (known: {shown})")


def _cluster_values(cluster: ClusterSpec | None) -> dict:
    if cluster is None:
        return {}
    tune = cluster.finetune.epochs if cluster.finetune else 0
    return {"clusters": cluster.clusters, "cluster_epochs": min(tune, MAX_RECOVERY_EPOCHS),
            "bias_clusters": cluster.bias_clusters or 0}


def _quant_values(quant: QuantSpec | None, qat: QATSpec | None) -> dict:
    if qat is not None:
        return {"qat": True, "bits": qat.weight_bits, "qat_epochs": min(qat.epochs, MAX_RECOVERY_EPOCHS),
                "qat_act8": qat.activation_bits == 8}
    if quant is None:
        return {}
    if quant.overrides and quant.method in LAYER_BITS_METHODS:   # per-layer bits replace the bitwidth
        return {"layer_bits": tuple(quant.overrides.items()), "layer_bits_method": quant.method,
                "calibration": quant.calibration}
    bits = quant.weight_bits
    return {"bits": bits if bits in BITWIDTHS else 8, "calibration": quant.calibration,
            "int8": quant.method if quant.method in INT8_KINDS else "static"}


def model_lr(model: ModelRef | None) -> float:
    """The recovery learning rate that suits the model (see `RECOVERY_LR`; None: the default)."""
    return RECOVERY_LR.get(model and (model.sample or model.arch) or "", DEFAULT_RECOVERY_LR)


def recovery_finetune(model: ModelRef | None, epochs: int, lr: float = 0.0) -> FinetuneSpec:
    """Masked recovery fine-tuning at `lr` (0: the model's, `model_lr`)."""
    return FinetuneSpec(epochs=epochs, lr=lr or model_lr(model), label_smoothing=RECOVERY_LABEL_SMOOTHING)


def centroid_finetune(model: ModelRef | None, epochs: int) -> FinetuneSpec:
    """Fine-tuning of clustered weights' shared values (see `CENTROID_LR_DIVISOR`)."""
    return recovery_finetune(model, epochs, model_lr(model) / CENTROID_LR_DIVISOR)


@dataclass(frozen=True)
class Preset:
    settings: CompressSettings
    blurb: str


PRESETS: dict[str, Preset] = {
    "PM quick look": Preset(
        CompressSettings(sparsity=0.5, bits=8),
        "50% global magnitude pruning + static int8, no training: a first answer in seconds"),
    "Deep compression look": Preset(
        CompressSettings(sparsity=0.9, bits=8, epochs=30),
        "90% pruning, 30 epochs of masked recovery fine-tuning, static int8"),
    "Seed recipe: iterative 20% + LR rewinding": Preset(
        CompressSettings(sparsity=0.9, bits=8, epochs=2, schedule="iterative", per_round=0.2, rewind="lr"),
        "prune 20% of the survivors per round (11 rounds to 90%), 2 epochs between rounds with the learning "
        "rate rewound to its start each round (LR rewinding), then static int8. The zeros are stored densely: "
        "smaller gzip, same raw file and speed until int8"),
    "No training: 90% + OBS repair": Preset(
        CompressSettings(sparsity=0.9, reconstruct="obs"),
        "90% magnitude pruning in one shot, then Optimal Brain Surgeon re-solves each layer's kept weights to "
        "reproduce the original outputs on the training inputs: no labels, no training, seconds. Torch and ONNX; "
        "the zeros are stored densely, so the gain is simulated until a sparse format or int8"),
    "Real speed: structured 50%": Preset(
        CompressSettings(technique="structured", ratio=0.5, epochs=30),
        "remove half the channels/neurons of every layer (Torch-Pruning) + 30 epochs of recovery: a smaller "
        "dense model whose file size and multiply-adds really drop; the speedup is measured in the run "
        "(tiny layers can stay overhead-bound). Torch models, and ONNX graphs through their conversion"),
    "Deep Compression: 90% + k=16 + packed": Preset(
        CompressSettings(sparsity=0.9, epochs=2, schedule="iterative", per_round=0.2, clusters=16,
                         cluster_epochs=10),
        "iterative pruning to 90% (2 epochs per round), 16 shared values per layer (4-bit indices) with 10 "
        "epochs of centroid fine-tuning, entropy-coded into weights.packed: that file's size is real; the "
        "ONNX file stays float32 and runs at float speed"),
    "Smallest packed: channels first + 65% + k=8": Preset(
        CompressSettings(thin=0.5, thin_epochs=30, sparsity=0.65, epochs=20, lr=0.003, schedule="iterative",
                         per_round=0.2, reconstruct="obs", clusters=8, cluster_epochs=30, bias_clusters=32),
        "remove half the channels/neurons first (a really smaller, faster dense model), recover 30 epochs, then "
        "prune the remaining weights to 65% in rounds (20 epochs each at lr 0.003, OBS repair), 8 shared values "
        "with 30 epochs of centroid fine-tuning, entropy-coded into weights.packed. Fewer, denser weights cost "
        "fewer bytes than 90% of the full model; biases share 32 values. On digits-mlp this is "
        "recipes/mlp-thin-sparse-packed.yaml, the benchmarked recipe (BENCHMARKS.md, clustering section). Torch "
        "models, and ONNX graphs through their conversion"),
    "Distilled student 0.5×": Preset(
        CompressSettings(technique="distill", width=0.5, distill_epochs=30),
        "a student with half the channels of every layer, trained 30 epochs on the original model's softened "
        "outputs: a really smaller, dense model; its accuracy is only known after training. Torch models, and ONNX "
        "graphs through their conversion"),
}


def preset_spec(name: str, model: ModelRef, data: DataRef | None = None,
                measure: MeasureSpec | None = None) -> RunSpec:
    """The recipe of preset `name` for `model`."""
    if name not in PRESETS:
        raise SpecError(f"preset: unknown '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name].settings.to_spec(model, data, measure, name=f"{model.label} {name}")
