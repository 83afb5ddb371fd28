"""The compress knobs as data, and named presets built from them.

`CompressSettings` holds what the Compress screen shows (sparsity, bitwidth, pruning method and scope,
the int8 kind, calibration, recovery epochs, schedule). `to_spec` turns a setting into a `RunSpec`;
`from_spec` reads one back from a recipe, best effort. `PRESETS` names useful starting points;
`preset_spec(name, model)` builds the recipe for any model, for the app and the CLI alike.
Non-goals: every recipe option (per-layer overrides, fake activation bits): recipes in YAML cover those.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.specs import (
    CALIBRATIONS,
    PRUNE_METHODS,
    PRUNE_SCHEDULES,
    PRUNE_SCOPES,
    DataRef,
    FinetuneSpec,
    MeasureSpec,
    ModelRef,
    PruneSpec,
    QuantSpec,
    RunSpec,
    SpecError,
    quant_spec_for_bits,
)

BITWIDTHS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
INT8_KINDS = ("static", "dynamic")
MAX_RECOVERY_EPOCHS = 50
# recovery fine-tuning lr per sample (the transformer diverges at 0.01; it was trained at 1e-3, see bench/)
RECOVERY_LR = {"digits-mlp": 0.01, "digits-cnn": 0.01, "digits-vit": 1e-3}
DEFAULT_RECOVERY_LR = 1e-3      # unknown models: the cautious choice
RECOVERY_LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class CompressSettings:
    sparsity: float = 0.0          # fraction of Linear/Conv weights set to zero
    bits: int = 32                 # 32 none, 16 fp16, 8 int8, 2/4 MatMulNBits, others simulated
    method: str = "magnitude"
    scope: str = "global"
    int8: str = "static"           # the int8 kind when bits == 8
    calibration: str = "minmax"
    epochs: int = 0                # recovery fine-tuning; per round when the schedule is iterative
    schedule: str = "oneshot"
    per_round: float = 0.2

    def __post_init__(self) -> None:
        _one_of(self.bits, BITWIDTHS, "bits")
        _one_of(self.method, PRUNE_METHODS, "method")
        _one_of(self.scope, PRUNE_SCOPES, "scope")
        _one_of(self.int8, INT8_KINDS, "int8")
        _one_of(self.calibration, CALIBRATIONS, "calibration")
        _one_of(self.schedule, PRUNE_SCHEDULES, "schedule")
        if not (isinstance(self.epochs, int) and 0 <= self.epochs <= MAX_RECOVERY_EPOCHS):
            raise SpecError(f"epochs: must be an integer in 0..{MAX_RECOVERY_EPOCHS}, got {self.epochs!r}")
        PruneSpec(sparsity=self.sparsity, per_round=self.per_round)  # validates both fractions

    def stages(self, model: ModelRef, always_prune: bool = False) -> tuple:
        """The recipe stages: prune (+ recovery), then quantize."""
        stages: list = []
        recovery = recovery_finetune(model, self.epochs) if self.epochs else None
        if self.sparsity > 0 or always_prune:
            iterative = self.schedule == "iterative"
            stages.append(PruneSpec(method=self.method, scope=self.scope, sparsity=self.sparsity,
                                    schedule=self.schedule, per_round=self.per_round,
                                    finetune=recovery if iterative else None))
            if recovery and not iterative:
                stages.append(recovery)
        quant = quant_spec_for_bits(self.bits, QuantSpec(method=self.int8, calibration=self.calibration))
        return (*stages, *([quant] if quant else []))

    def to_spec(self, model: ModelRef, data: DataRef | None = None, measure: MeasureSpec | None = None,
                name: str = "", always_prune: bool = False) -> RunSpec:
        """The recipe for this setting. `always_prune` keeps a prune stage at 0% (a sweep varies it)."""
        return RunSpec(model=model, data=data or DataRef(), stages=self.stages(model, always_prune),
                       measure=measure or MeasureSpec(), name=name)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> CompressSettings:
        """The knobs a recipe sets (its first prune, fine-tune and quantize stages)."""
        prune = next((s for s in spec.stages if isinstance(s, PruneSpec)), None)
        tune = next((s for s in spec.stages if isinstance(s, FinetuneSpec)), None)
        quant = next((s for s in spec.stages if isinstance(s, QuantSpec)), None)
        values: dict = {}
        if prune:
            values.update(sparsity=prune.sparsity, method=prune.method, scope=prune.scope,
                          schedule=prune.schedule, per_round=prune.per_round)
            tune = prune.finetune if prune.schedule == "iterative" else tune
        if tune:
            values["epochs"] = min(tune.epochs, MAX_RECOVERY_EPOCHS)
        if quant:
            bits = quant.weight_bits
            values.update(bits=bits if bits in BITWIDTHS else 8, calibration=quant.calibration)
            values["int8"] = quant.method if quant.method in INT8_KINDS else "static"
        return cls(**values)

    def describe(self) -> str:
        """A short label, e.g. '90% magnitude/global + 30 ep recovery + int8 static'."""
        parts = []
        if self.sparsity > 0:
            rounds = f" iterative {self.per_round:.0%}/round" if self.schedule == "iterative" else ""
            parts.append(f"{self.sparsity:.0%} {self.method}/{self.scope}{rounds}")
        if self.epochs:
            parts.append(f"{self.epochs} ep recovery" + (" per round" if self.schedule == "iterative" else ""))
        quant = quant_spec_for_bits(self.bits, QuantSpec(method=self.int8))
        if quant:
            parts.append(f"int8 {quant.method}" if self.bits == 8 else f"{self.bits}-bit {quant.method}")
        return " + ".join(parts) or "baseline only"

    def problems(self, model_kind: str, has_train_data: bool) -> list[str]:
        """Reasons this setting cannot run on the current model and data (empty when it can)."""
        out = []
        if self.epochs and self.sparsity > 0 and model_kind != "torch":
            out.append("recovery fine-tuning needs a torch model; this model is ONNX (set recovery epochs to 0)")
        elif self.epochs and self.sparsity > 0 and not has_train_data:
            out.append("recovery fine-tuning needs training data; the chosen data has none (use the built-in data)")
        return out


def _one_of(value, allowed: tuple, name: str) -> None:
    if value not in allowed:
        raise SpecError(f"{name}: unknown {value!r} (known: {', '.join(map(str, allowed))})")


def recovery_finetune(model: ModelRef, epochs: int) -> FinetuneSpec:
    """Masked recovery fine-tuning with the lr that suits the model (see `RECOVERY_LR`)."""
    lr = RECOVERY_LR.get(model.sample or model.arch or "", DEFAULT_RECOVERY_LR)
    return FinetuneSpec(epochs=epochs, lr=lr, label_smoothing=RECOVERY_LABEL_SMOOTHING)


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
    "Seed recipe: iterative 20% per round + fine-tuning": Preset(
        CompressSettings(sparsity=0.9, bits=8, epochs=2, schedule="iterative", per_round=0.2),
        "prune 20% of the survivors per round (11 rounds to 90%), 2 epochs of fine-tuning between rounds, int8"),
}


def preset_spec(name: str, model: ModelRef, data: DataRef | None = None,
                measure: MeasureSpec | None = None) -> RunSpec:
    """The recipe of preset `name` for `model`."""
    if name not in PRESETS:
        raise SpecError(f"preset: unknown '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name].settings.to_spec(model, data, measure, name=f"{model.label} {name}")
