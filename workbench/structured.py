"""Structured pruning: physically remove channels, neurons and attention heads, so the exported model is
smaller and dense (and faster, unlike masked zeros).

Built on Torch-Pruning's dependency graph, which finds the layers coupled to each channel (BatchNorm,
residual adds, depthwise convolutions, flatten, LayerNorm, unwrapped parameters such as position
embeddings) and prunes them together. Attention modules written as `qkv` + `proj` Linears with integer
`heads`/`num_heads` and `head_dim` attributes lose whole heads (their forward must read the head count
from that attribute, which is updated); `nn.MultiheadAttention` keeps its heads and narrows each one;
other modules with a head count are left whole. The classifier's outputs are never pruned. A layer whose
pruning breaks the forward pass is left whole and named in the report, never a crash. Torch only: ONNX
graphs are not pruned here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.models import copy_module, needs_layer_modules
from workbench.specs import StructuredSpec
from workbench.stages import Context, Variant, runner

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)
LISTED = 6   # layers left whole named in the stage's note
HEAD_ATTRS = ("heads", "num_heads")


@dataclass
class _Plan:
    """What stays whole, by module name (names survive the deep copies between attempts)."""

    classifier: str
    excluded: dict[str, str]                                  # name -> the pattern that matched
    ignored: set[str] = field(default_factory=set)            # roots Torch-Pruning must not prune
    reasons: dict[str, str] = field(default_factory=dict)     # name -> why it was left whole


def _tp():
    try:
        import torch_pruning
    except ImportError:
        raise WorkbenchError("structured: needs the torch-pruning package (pip install 'torch-pruning>=1.5')") from None
    return torch_pruning


def _importance(tp, kind: str):
    if kind == "random":
        return tp.importance.RandomImportance()
    return tp.importance.MagnitudeImportance(p=1 if kind == "l1" else 2)


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    from torch import nn

    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.MultiheadAttention)}
    # nn.MultiheadAttention's out_proj is pruned with (and reported as) the attention module
    mha = [n for n, m in layers.items() if isinstance(m, nn.MultiheadAttention)]
    return {n: m for n, m in layers.items() if not any(n.startswith(p + ".") for p in mha)}


def _head_attr(m: nn.Module) -> str | None:
    return next((a for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)


def _attention(model: nn.Module) -> dict[str, nn.Module]:
    """Hand-written attention modules whose heads we can remove: a `qkv` Linear emitting q, k, v as
    (3, heads, head_dim) blocks, with integer head-count and head_dim attributes."""
    from torch import nn

    found = {}
    for name, m in model.named_modules():
        attr, qkv = _head_attr(m), getattr(m, "qkv", None)
        if attr and isinstance(qkv, nn.Linear) and isinstance(getattr(m, "head_dim", None), int) \
                and qkv.out_features == 3 * getattr(m, attr) * m.head_dim:
            found[name] = m
    return found


def _sync_heads(attention: dict[str, nn.Module]) -> None:
    """Head dims are never narrowed, so the head count follows from qkv's width."""
    for m in attention.values():
        setattr(m, _head_attr(m), m.qkv.out_features // (3 * m.head_dim))


def _run(model: nn.Module, example: tuple) -> torch.Tensor:
    import torch

    with torch.no_grad():
        out = model(*example)
    if not isinstance(out, torch.Tensor):
        raise WorkbenchError("structured: the model must return one tensor")
    return out


def _classifier(model: nn.Module, example: tuple) -> str:
    """The weight layer that ran last: its outputs are the model's outputs."""

    layers = _weight_layers(model)
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: order.append(n)) for n, m in layers.items()]
    try:
        _run(model, example)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise WorkbenchError(f"structured: the model does not run on the example input ({_line(exc)})") from None
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise WorkbenchError("structured: no Linear/Conv layer runs in the model's forward pass")
    return order[-1]


def _plan(model: nn.Module, example: tuple, spec: StructuredSpec) -> _Plan:
    plan = _Plan(_classifier(model, example), {})
    for name, _ in model.named_modules():
        pattern = next((p for p in spec.exclude if name and fnmatch.fnmatchcase(name, p)), None)
        if pattern:
            plan.excluded[name] = pattern
            plan.reasons[name] = f"excluded by pattern '{pattern}'"
    unmatched = [p for p in spec.exclude if p not in plan.excluded.values()]
    if unmatched:
        layers = ", ".join(_weight_layers(model))
        raise WorkbenchError(f"structured exclude: '{unmatched[0]}' matches no layer (layers: {layers})")
    plan.ignored = {plan.classifier, *plan.excluded}
    plan.reasons.setdefault(plan.classifier, "classifier: its outputs are the model's outputs")
    attention = _attention(model)
    for name, m in model.named_modules():
        if _head_attr(m) and name not in attention and not _inside(name, plan.excluded) and \
                not isinstance(m, _mha_type()):
            for child, _ in m.named_modules(prefix=name):
                plan.ignored.add(child)
                plan.reasons[child] = f"inside {name}, whose heads are left whole"
            plan.reasons[name] = (f"attention-like module ({type(m).__name__}.{_head_attr(m)}) without a fused qkv "
                                  "Linear of (3, heads, head_dim) blocks: its heads are left whole")
    return plan


def _mha_type() -> type:
    from torch import nn

    return nn.MultiheadAttention


def _inside(name: str, parents) -> bool:
    return any(name == p or name.startswith(p + ".") for p in parents if p)


def _line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]


def _pruner(tp, model: nn.Module, example: tuple, spec: StructuredSpec, ignored: list, attention: dict):
    qkv_heads = {m.qkv: getattr(m, _head_attr(m)) for m in attention.values()}
    # keep >= 1 head: Torch-Pruning removes ceil(ratio * heads) heads per layer
    head_ratio = {m.qkv: max(0.0, min(spec.ratio, (h - 1.5) / h)) for m, h in
                  ((a, getattr(a, _head_attr(a))) for a in attention.values())}
    mha_groups = {m: m.num_heads for m in model.modules() if isinstance(m, _mha_type()) and m.num_heads > 1}
    # fresh dicts every time: Torch-Pruning mutates these arguments, whose defaults are shared objects
    return tp.pruner.BasePruner(
        model, example, importance=_importance(tp, spec.importance), pruning_ratio=spec.ratio,
        global_pruning=spec.scope == "global", ignored_layers=ignored, round_to=spec.round_to,
        num_heads=qkv_heads, prune_num_heads=bool(qkv_heads), prune_head_dims=False,
        head_pruning_ratio=spec.ratio, head_pruning_ratio_dict=head_ratio,
        in_channel_groups={}, out_channel_groups=dict(mha_groups), channel_groups={},
    )


def _owners(pruner, group, names: dict) -> list[str]:
    """The layers whose outputs `group` narrows (ignoring any of them makes Torch-Pruning skip it), else the
    group's root layer."""
    owners = [names[d.target.module] for d, _ in group
              if d.target.module in names and pruner.DG.is_out_channel_pruning_fn(d.handler)]
    return owners or [names.get(group[0].dep.target.module, "?")]


def _unrankable(pruner, names: dict) -> tuple[list[str], str] | None:
    """The first group whose channels Torch-Pruning cannot score (a graph it does not model, such as an attention
    projection split by a converted ONNX graph's Split), as (its layers, why): the caller leaves them whole."""
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        try:
            pruner.estimate_importance(group)
        except Exception as exc:
            return _owners(pruner, group, names), f"Torch-Pruning cannot rank its channels ({_line(exc)})"
    return None


def _groups(pruner) -> Iterator:
    """The pruner's groups; Torch-Pruning failing while it scores one (graphs it does not model, such as a
    split attention projection in a converted ONNX graph) is a WorkbenchError naming its error."""
    steps = pruner.step(interactive=True)
    while True:
        try:
            group = next(steps)
        except StopIteration:
            return
        except Exception as exc:
            raise WorkbenchError(f"structured: Torch-Pruning cannot rank this model's channels ({_line(exc)}); "
                                 "exclude the layers around it, or use unstructured pruning") from None
        yield group


def _attempt(base: nn.Module, example: tuple, spec: StructuredSpec, plan: _Plan,
             ref_shape: tuple) -> tuple[nn.Module | None, tuple[list[str], str] | None]:
    """Prune a copy of `base` group by group, checking the forward pass after each group. Returns the
    pruned copy, or the layers whose group broke the model and why (the caller retries without them)."""
    import torch

    tp = _tp()
    model = copy_module(base)
    for p in model.parameters():
        p.requires_grad_(True)  # the dependency graph is traced through autograd
    named = dict(model.named_modules())
    names = {m: n for n, m in named.items()}
    ignored = [named[n] for n in sorted(plan.ignored) if n in named]
    untouched = {m for n, m in named.items() if _inside(n, plan.excluded)}
    attention = _attention(model)
    with torch.enable_grad(), warnings.catch_warnings(record=True) as caught, torch.random.fork_rng():
        warnings.simplefilter("always")
        torch.manual_seed(0)  # random importance stays reproducible
        try:
            pruner = _pruner(tp, model, example, spec, ignored, attention)
        except Exception as exc:
            raise WorkbenchError(f"structured: could not trace the model's layers ({_line(exc)})") from None
        if (unrankable := _unrankable(pruner, names)) is not None:
            return None, unrankable
        for group in _groups(pruner):
            owners = _owners(pruner, group, names)
            touched = [names.get(d.target.module, "?") for d, _ in group if d.target.module in untouched]
            if touched:
                plan.reasons.setdefault(owners[0], f"coupled to excluded layer {touched[0]}")
                continue
            try:
                group.prune()
                _sync_heads(attention)
                shape = tuple(_run(model, example).shape)
            except Exception as exc:
                return None, (owners, f"pruning it breaks the forward pass ({_line(exc)})")
            if shape != ref_shape:
                return None, (owners, f"pruning it changes the output shape {ref_shape} -> {shape}")
    for w in caught:
        log.debug("torch-pruning: %s", _line(w.message))
    return model, None


def _count(model: nn.Module, example: tuple) -> tuple[int | None, int]:
    """(MACs per sample of the layers Torch-Pruning counts, parameters)."""
    params = sum(p.numel() for p in model.parameters())
    one = tuple(x[:1] for x in example)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = _tp().utils.count_ops_and_params(model, one)
        return int(macs), params
    except Exception:  # an op the counter does not know: MACs stay unknown
        return None, params


def prune_structured(module: nn.Module, example: tuple[torch.Tensor, ...],
                     spec: StructuredSpec) -> tuple[nn.Module, dict[str, Any]]:
    """A new module with `spec.ratio` of the channels / neurons / heads of each prunable group removed
    (`scope="global"` ranks groups together), plus a report: params and MACs before/after, the layers
    whose shapes changed, and the layers left whole with the reason."""

    needs_layer_modules("structured", module)
    example = tuple(example)
    base = copy_module(module).eval()
    grads = {n: p.requires_grad for n, p in base.named_parameters()}
    ref_shape = tuple(_run(base, example).shape)
    plan = _plan(base, example, spec)
    macs_before, params_before = _count(base, example)
    for _ in range(len(_weight_layers(base)) + 1):
        pruned, broken = _attempt(base, example, spec, plan, ref_shape)
        if broken is None:
            break
        plan.ignored.update(broken[0])
        plan.reasons[broken[0][0]] = broken[1]
        log.info("structured: leaving %s whole: %s", ", ".join(broken[0]), broken[1])
    else:
        raise WorkbenchError("structured: every prunable layer breaks the forward pass when pruned")
    pruned.eval()
    for n, p in pruned.named_parameters():
        p.requires_grad_(grads.get(n, True))
    macs_after, params_after = _count(pruned, example)
    report = {"params_before": params_before, "params_after": params_after,
              "macs_before": macs_before, "macs_after": macs_after,
              "pruned_layers": _changed(base, pruned), "heads": _heads(base, pruned),
              "skipped": _skipped(base, pruned, plan, spec)}
    if params_after >= params_before:
        raise WorkbenchError(f"structured: nothing could be pruned ({_why_nothing(report, spec)})")
    return pruned, report


def _changed(before: nn.Module, after: nn.Module) -> list[dict[str, Any]]:
    old = dict(before.named_parameters())
    rows = []
    for name, layer in _weight_layers(after).items():
        for pname, p in layer.named_parameters(prefix=name, recurse=False):
            if pname.endswith("weight") and tuple(p.shape) != tuple(old[pname].shape):
                rows.append({"layer": name, "op": type(layer).__name__,
                             "before": list(old[pname].shape), "after": list(p.shape)})
                break
    return rows


def _heads(before: nn.Module, after: nn.Module) -> dict[str, list[int]]:
    old = _attention(before)
    return {n: [getattr(old[n], _head_attr(old[n])), getattr(m, _head_attr(m))]
            for n, m in _attention(after).items() if n in old}


def _skipped(before: nn.Module, after: nn.Module, plan: _Plan, spec: StructuredSpec) -> list[tuple[str, str]]:
    changed = {r["layer"] for r in _changed(before, after)}
    skipped = dict(plan.reasons)
    for name, layer in _weight_layers(before).items():
        if name in changed or name in skipped or _inside(name, plan.excluded):
            continue
        width = _out_width(layer)
        if width and math.floor(width * (1 - spec.ratio)) >= width:
            skipped[name] = f"ratio {spec.ratio:g} removes no whole channel of {width}"
        else:
            skipped[name] = "its channels are tied to a layer left whole (or a single channel remains)"
    return sorted(skipped.items())


def _out_width(layer: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "embed_dim"):
        if isinstance(getattr(layer, attr, None), int):
            return getattr(layer, attr)
    return None


def _why_nothing(report: dict, spec: StructuredSpec) -> str:
    reasons = [f"{n}: {r}" for n, r in report["skipped"]]
    if not reasons:
        return f"ratio {spec.ratio:g} removes no whole channel"
    return "; ".join(reasons[:3]) + (f"; +{len(reasons) - 3} more" if len(reasons) > 3 else "")


def _si(n: int | None) -> str:
    if n is None:
        return "?"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def describe(report: dict, spec: StructuredSpec) -> str:
    """One plain-language line for the run's notes."""
    kinds: dict[str, int] = {}
    for row in report["pruned_layers"]:
        kinds[row["op"]] = kinds.get(row["op"], 0) + 1
    layers = ", ".join(f"{n} {op}" for op, n in kinds.items())
    heads = report.get("heads") or {}
    head_text = (f"; attention heads {sum(h[0] for h in heads.values())} -> {sum(h[1] for h in heads.values())}"
                 if heads else "")
    return (f"removed {spec.ratio:.0%} of channels per group ({spec.scope} scope) in {layers} layers{head_text}: "
            f"{report['params_before']:,} -> {report['params_after']:,} params, "
            f"MACs {_si(report['macs_before'])} -> {_si(report['macs_after'])}")


@runner("structured")
def run_structured(variant: Variant, spec: StructuredSpec, ctx: Context) -> Variant:
    if variant.module is None:
        raise WorkbenchError("structured: needs a torch model; this variant is ONNX "
                             "(put structured before quantize, or load a torch model)")
    ctx.progress(0.1, "tracing layer dependencies")
    module, report = prune_structured(variant.module, ctx.example, spec)
    ctx.check()
    out = variant.copy_meta(module=module, masks={}, structured=True)
    out.history.append(report)
    out.notes.append(describe(report, spec))
    left = [f"{name} ({why})" for name, why in report["skipped"]]
    if left:
        more = f"; and {len(left) - LISTED} more (all in the report)" if len(left) > LISTED else ""
        out.notes.append(f"left whole: {'; '.join(left[:LISTED])}{more}")
    if variant.masks:
        out.notes.append("earlier unstructured masks no longer fit the new shapes and were dropped: "
                         "a later finetune may regrow those zeros")
    ctx.progress(1.0, "pruned")
    return out
