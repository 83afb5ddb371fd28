"""Post-training reconstruction of pruned layers from calibration inputs: no labels, no training.

After a pruning round zeroes weights, every Linear/Conv layer's kept weights (and bias) are solved again so
that the layer reproduces the *unpruned* model's outputs, given the inputs that the already-reconstructed
layers before it now produce. Layers go in execution order, so upstream error is corrected rather than
compounded (the sequential scheme of OBC and SparseGPT). Per layer, with X the inputs (im2col rows for a
convolution, a ones column for the bias) and Y the unpruned outputs, only H = XᵀX and G = XᵀY are kept:

- "refit": each output unit's kept weights w_K = H_KK⁻¹ G_K (least squares on the mask as chosen);
- "obs": Optimal Brain Surgeon per output unit (Frantar & Alistarh 2022, "Optimal Brain Compression"):
  starting from the least-squares fit of the whole row, repeatedly remove the weight whose removal raises
  the squared error least, w_q² / [H⁻¹]_qq, and update the others by the exact OBS correction, until the
  unit has as many zeros as the magnitude mask gave it. Weights pruned in earlier rounds go first.

H gets 1% of its mean diagonal as damping (as in SparseGPT), which also covers inputs that are always
zero. Layers this cannot handle (grouped or transposed convolutions, modules called twice, inputs wider
than `MAX_INPUTS`) keep their magnitude mask and are named in a note. Knows nothing about ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from workbench.errors import WorkbenchError

DAMPING = 0.01
MAX_INPUTS = 2048           # inputs per output unit (in_features, or in_channels x kernel); H is that squared
CHUNK = 256                 # samples per forward pass
OBS_BLOCK = 2**24           # float64 elements of the per-unit inverse Hessians held at once (128 MiB)
OBS_MAX_COST = 6e10         # OBS multiply-adds per layer (about 30 s on 2 vCPUs); a costlier layer is refit instead


@dataclass(frozen=True)
class LayerFit:
    """One layer's relative output error ‖XW - Y‖ / ‖Y‖ on the calibration inputs, masked vs solved."""

    name: str
    masked_error: float
    solved_error: float
    method: str = "refit"      # how it was solved: "refit", "obs", or "mask" (solving fit worse: mask kept)


class _Stop(Exception):
    """Raised by a capture hook once the layer of interest has run: the rest of the forward is skipped."""


def reconstruct(pruned: nn.Module, reference: nn.Module, masks: dict[str, np.ndarray],
                inputs: tuple[np.ndarray, ...], mode: str, previous: dict[str, np.ndarray] | None = None,
                cancelled: Callable[[], bool] = lambda: False,
                progress: Callable[[float, str], None] = lambda *_: None) -> tuple[dict[str, np.ndarray],
                                                                                   list[LayerFit], list[str]]:
    """Solve the kept weights of `pruned` (in place) against `reference` (the unpruned model, same layer
    names). `masks` are the round's keep-masks by weight name, `previous` the masks before the round
    ("obs" removes those weights first). Returns the keep-masks after solving ("obs" may choose other
    weights than `masks`, never more of them per unit), one `LayerFit` per solved layer, and the names of
    the layers left as masked with the reason. `progress(fraction, layer)` follows each solved layer."""
    if mode not in ("refit", "obs"):
        raise WorkbenchError(f"prune.reconstruct: unknown '{mode}' (known: refit, obs)")
    x = tuple(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in inputs)
    layers, skipped = _layers(pruned, masks, x)
    out, fits = dict(masks), []
    states = [(m, m.training) for m in (pruned, reference)]
    for m, _ in states:
        m.eval()
    try:
        for done, name in enumerate(layers):
            if cancelled():
                break
            progress(done / len(layers), name)
            layer = pruned.get_submodule(name)
            key, bias = f"{name}.weight", layer.bias is not None
            keep = with_bias(torch.from_numpy(_unit_rows(masks[key], layer)), bias)
            before = with_bias(torch.from_numpy(_unit_rows(previous[key], layer)), bias) \
                if previous and key in previous else None
            solved, keep, fit = solve(name, _rows(layer), keep, before, bias, _statistics(pruned, reference, name, x),
                                      mode)
            _write(layer, solved)
            out[key] = keep[:, :_fan_in(layer)].reshape(masks[key].shape).numpy()
            fits.append(fit)
    finally:
        for m, training in states:
            m.train(training)
    return out, fits, skipped


def _layers(module: nn.Module, masks: dict[str, np.ndarray], x: tuple[torch.Tensor, ...]) -> tuple[list[str],
                                                                                                   list[str]]:
    """Masked layers this can solve, in execution order (one forward on a few samples), and the others
    with the reason."""
    candidates = {n: m for n, m in module.named_modules() if f"{n}.weight" in masks}
    calls: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: calls.append(n)) for n, m in candidates.items()]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*(t[:2] for t in x))
    finally:
        module.train(was_training)
        for hook in hooks:
            hook.remove()
    order, skipped = [], []
    for name in dict.fromkeys(calls):
        reason = _unsupported(candidates[name], calls.count(name))
        (skipped.append(f"{name} ({reason})") if reason else order.append(name))
    skipped.extend(f"{n} (never called)" for n in candidates if n not in calls)
    return order, skipped


def _unsupported(layer: nn.Module, calls: int) -> str | None:
    if calls > 1:
        return f"called {calls} times per forward"
    if isinstance(layer, nn.Conv1d | nn.Conv2d) and type(layer) in (nn.Conv1d, nn.Conv2d):
        if layer.groups != 1:
            return "grouped convolution"
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return "padding other than explicit zeros"
    elif type(layer) is not nn.Linear:
        return f"{type(layer).__name__} is not a Linear or Conv1d/Conv2d"
    if _fan_in(layer) > MAX_INPUTS:
        return f"{_fan_in(layer)} inputs per unit, more than {MAX_INPUTS}"
    return None


@dataclass
class Statistics:
    """What a layer's solve needs from the calibration data: H = XᵀX, G = XᵀY and the per-unit ‖Y‖², in
    float64, X the layer's input rows (with a ones column when it has a bias) and Y its unpruned outputs."""

    h: torch.Tensor
    g: torch.Tensor
    yy: torch.Tensor

    @classmethod
    def empty(cls, width: int, units: int) -> Statistics:
        return cls(torch.zeros(width, width, dtype=torch.float64), torch.zeros(width, units, dtype=torch.float64),
                   torch.zeros(units, dtype=torch.float64))

    def add(self, rows: torch.Tensor, y: torch.Tensor) -> None:
        self.h += rows.T @ rows
        self.g += rows.T @ y
        self.yy += (y * y).sum(0)


def solve(name: str, w: torch.Tensor, keep: torch.Tensor, before: torch.Tensor | None, bias: bool,
          stats: Statistics, mode: str) -> tuple[torch.Tensor, torch.Tensor, LayerFit]:
    """One layer: `w`, `keep` and `before` are (units, inputs) with the bias column last when `bias`.
    Returns the solved weights, their keep-mask and the fit. OBS costs units x removals x inputs²; a layer
    over `OBS_MAX_COST` is refit instead (its fit says so)."""
    masked = _error(w * keep, stats)
    if mode == "obs" and obs_cost(keep) > OBS_MAX_COST:
        mode = "refit"
    solved, solved_keep = _obs(stats.h, stats.g, keep, before, bias) if mode == "obs" else \
        _refit(stats.h, stats.g, keep)
    error = _error(solved, stats)
    if error >= masked:        # damping can cost more than it fixes where pruning changed little: keep the mask
        return w * keep, keep, LayerFit(name, masked, masked, "mask")
    return solved, solved_keep, LayerFit(name, masked, error, mode)


def obs_cost(keep: torch.Tensor) -> float:
    """Multiply-adds of OBS on a layer with this keep-mask: every removal updates a unit's inputs² inverse."""
    return float(len(keep)) * float((~keep).sum(1).max()) * float(keep.shape[1]) ** 2


def patches(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
            dilation: tuple[int, ...]) -> torch.Tensor:
    """im2col: (n, c, *spatial) -> (n * positions, c * kernel) rows, for 1-D or 2-D convolutions (zero
    padding, the same on both sides of each axis)."""
    if x.dim() == 3:
        x, kernel, stride, padding, dilation = x.unsqueeze(2), (1, *kernel), (1, *stride), (0, *padding), \
            (1, *dilation)
    cols = functional.unfold(x, tuple(kernel), dilation=tuple(dilation), padding=tuple(padding), stride=tuple(stride))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def with_bias(rows: torch.Tensor, bias: bool, value=True) -> torch.Tensor:
    """`rows` with a last column of `value` (ones for inputs, True for masks) when the layer has a bias."""
    if not bias:
        return rows
    return torch.cat([rows, torch.full((len(rows), 1), value, dtype=rows.dtype)], 1)


def _statistics(pruned: nn.Module, reference: nn.Module, name: str, x: tuple[torch.Tensor, ...]) -> Statistics:
    """The layer's statistics: its inputs in `pruned`, its outputs in `reference`."""
    layer = pruned.get_submodule(name)
    stats = Statistics.empty(_fan_in(layer) + (layer.bias is not None), layer.weight.shape[0])
    for i in range(0, len(x[0]), CHUNK):
        batch = tuple(t[i:i + CHUNK] for t in x)
        stats.add(_input_rows(layer, _capture(pruned, name, batch, output=False)),
                  _output_rows(layer, _capture(reference, name, batch, output=True)))
    return stats


def _capture(module: nn.Module, name: str, batch: tuple[torch.Tensor, ...], output: bool) -> torch.Tensor:
    """The input (or output) tensor of submodule `name` when `module` runs `batch`."""
    seen: list[torch.Tensor] = []

    def grab(_m, args, result=None):
        seen.append(result if output else args[0])
        raise _Stop

    layer = module.get_submodule(name)
    hook = layer.register_forward_hook(grab) if output else layer.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            module(*batch)
    except _Stop:
        pass
    finally:
        hook.remove()
    if not seen:
        raise WorkbenchError(f"prune.reconstruct: layer {name} did not run on the calibration data")
    return seen[0]


def _input_rows(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as rows that multiply its weight rows: features for Linear, im2col patches for
    convolutions; plus a ones column when it has a bias."""
    if isinstance(layer, nn.Linear):
        rows = t.reshape(-1, t.shape[-1])
    else:
        rows = patches(t, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    return with_bias(rows.double(), layer.bias is not None, 1.0)


def _output_rows(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """(N, out) for Linear outputs (..., out); (N·positions, out) for conv outputs (n, out, *spatial)."""
    if isinstance(layer, nn.Linear):
        return t.reshape(-1, t.shape[-1]).double()
    return t.movedim(1, -1).reshape(-1, t.shape[1]).double()


def _fan_in(layer: nn.Module) -> int:
    return int(np.prod(layer.weight.shape[1:]))


def _unit_rows(mask: np.ndarray, layer: nn.Module) -> np.ndarray:
    return np.asarray(mask, dtype=bool).reshape(layer.weight.shape[0], -1)


def _rows(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    return torch.cat([w, layer.bias.detach().double()[:, None]], 1) if layer.bias is not None else w


def _write(layer: nn.Module, solved: torch.Tensor) -> None:
    fan_in = _fan_in(layer)
    with torch.no_grad():
        layer.weight.copy_(solved[:, :fan_in].reshape(layer.weight.shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(solved[:, fan_in].to(layer.bias.dtype))


def _error(w: torch.Tensor, stats: Statistics) -> float:
    """‖XWᵀ - Y‖ / ‖Y‖ from the statistics: Σ_units w H wᵀ - 2 w G + ‖y‖²."""
    sq = (w @ stats.h * w).sum() - 2 * (w * stats.g.T).sum() + stats.yy.sum()
    return float(torch.sqrt(sq.clamp(min=0)) / torch.sqrt(stats.yy.sum()).clamp(min=1e-30))


def _damped(h: torch.Tensor) -> torch.Tensor:
    return h + DAMPING * h.diagonal().mean().clamp(min=1e-12) * torch.eye(len(h), dtype=h.dtype)


def _refit(h: torch.Tensor, g: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares per unit on its kept inputs (the bias column is kept); units sharing a mask share one
    solve."""
    h = _damped(h)
    w = torch.zeros(keep.shape, dtype=torch.float64)
    patterns, which = torch.unique(keep, dim=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        units = torch.nonzero(which == p).flatten()
        idx = torch.nonzero(pattern).flatten()
        if len(idx):
            w[units[:, None], idx] = torch.linalg.solve(h[idx][:, idx], g[idx][:, units]).T
    return w, keep


def _obs(h: torch.Tensor, g: torch.Tensor, keep: torch.Tensor, before: torch.Tensor | None, bias: bool
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal Brain Surgeon per unit (the bias, the last column when `bias`, is never removed), in
    blocks of units whose inverse Hessians fit `OBS_BLOCK`."""
    h = _damped(h)
    inverse = torch.linalg.inv(h)
    never = torch.zeros(len(h), dtype=torch.bool)
    never[-1] = bias
    w = torch.linalg.solve(h, g).T.contiguous()            # every unit's unpruned least-squares fit
    out_keep = torch.ones_like(keep)
    step = max(1, OBS_BLOCK // (len(h) ** 2))
    for start in range(0, len(keep), step):
        units = slice(start, start + step)
        w[units], out_keep[units] = _obs_block(w[units], inverse, (~keep[units]).sum(1),
                                               None if before is None else ~before[units], never)
    return w, out_keep


def _obs_block(w: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, forced: torch.Tensor | None,
               never: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OBS on a block of units; units sorted by how many weights they lose, so the units still pruning
    at each step are a prefix and every update works on views."""
    order = torch.argsort(counts, descending=True)
    w, counts = w[order].clone(), counts[order]
    forced = None if forced is None else forced[order]
    units, width = w.shape
    hinv = inverse.expand(units, width, width).clone()
    removed = torch.zeros(units, width, dtype=torch.bool)
    for step in range(int(counts.max()) if len(counts) else 0):
        a = int((counts > step).sum())
        wa, ha, gone = w[:a], hinv[:a], removed[:a]
        score = wa**2 / ha.diagonal(dim1=1, dim2=2)
        score[gone | never] = float("inf")
        if forced is not None:
            score[forced[:a] & ~gone] = float("-inf")
        q = score.argmin(1)
        at = torch.arange(a)
        col = ha[at, :, q]                                                  # (a, width): column q of H⁻¹
        pivot = col[at, q]
        wa -= (wa[at, q] / pivot)[:, None] * col
        wa[at, q] = 0.0
        gone[at, q] = True
        ha.baddbmm_(col[:, :, None], (col / pivot[:, None])[:, None, :], alpha=-1)   # symmetric: row q = column q
    w[removed] = 0.0
    back = torch.argsort(order)
    return w[back], ~removed[back]
