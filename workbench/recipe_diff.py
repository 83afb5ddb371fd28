"""What two recipes' stages differ in, field by field, in words: how the app says which parts of a recipe its
Compress knobs could not hold when a run or recipe file is opened there.

Contract: `stage_differences(wanted, got)` aligns the two stage lists by kind (difflib), then lists, in recipe
order, each field that differs in an aligned pair ("prune.finetune.lr: 0.005 -> 0.003", nested fields
dotted) and each stage only one side has ("quantize: not held", "finetune: added"). Empty: the same stages.
`measure_differences(wanted, got)` does the same for what two MeasureSpecs measure (MEASURED_FIELDS:
"measure.batch_sizes: 1, 4 -> 1"); how long the timing runs (warmup, repeats, min_time_s) is left out, as it
changes a median's noise, not what is measured.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Any

from workbench.specs import MeasureSpec, stage_dict

MEASURED_FIELDS = ("batch_sizes", "threads", "torch_eager", "max_eval_samples")


def stage_differences(wanted: tuple, got: tuple) -> list[str]:
    """The differences from `wanted`'s stages to `got`'s (stage specs); see the module doc."""
    kinds = [s.kind for s in wanted], [s.kind for s in got]
    out: list[str] = []
    for op, a0, a1, b0, b1 in SequenceMatcher(None, *kinds, autojunk=False).get_opcodes():
        if op == "equal":
            for a, b in zip(wanted[a0:a1], got[b0:b1], strict=True):
                out += [f"{a.kind}.{path}: {_show(x)} -> {_show(y)}"
                        for path, x, y in _fields(_body(a), _body(b))]
            continue
        out += [f"{kind}: not held" for kind in kinds[0][a0:a1]]
        out += [f"{kind}: added" for kind in kinds[1][b0:b1]]
    return out


def measure_differences(wanted: MeasureSpec, got: MeasureSpec) -> list[str]:
    """The differences from `wanted` to `got` in MEASURED_FIELDS; see the module doc."""
    return [f"measure.{name}: {_show(getattr(wanted, name))} -> {_show(getattr(got, name))}"
            for name in MEASURED_FIELDS if getattr(wanted, name) != getattr(got, name)]


def _body(stage) -> dict[str, Any]:
    return stage_dict(stage)[stage.kind]


def _fields(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _fields(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append((f"{prefix}{key}", x, y))
    return out


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(map(_show, value)) or "none"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
