"""Search under an accuracy bar: queue candidate recipes over a space as one sweep, keep every one, and
summarise them against the bar.

Contract:
- `candidates(base, space)` applies each point of the space (prune `sparsity` x `bits` x optional
  structured `ratio`; 0 / 32 / 0 mean "no such stage") to the base recipe, skipping a point that leaves it
  nothing that compresses (only fine-tuning or a transfer): with a cluster stage in the base, the point
  without pruning is "clustering alone", a candidate like any other. The order is coarse-to-fine:
  farthest-point order over the grid (each axis by rank, scaled to [0, 1]), starting at the point nearest
  the centre, so any prefix spans the space as evenly as the grid allows. Deterministic: no shuffle, no seed.
- `search(store, base, max_drop, trials, minutes)` queues the first `trials` candidates as one sweep
  through workbench.jobs and records the sweep as a "search" with its settings and, with `minutes`, a
  deadline. Candidates still queued at the deadline are cancelled ("search budget exhausted") by the
  store and the worker; runs already started finish. Every candidate stays a run in the store.
- `search_summary(store, sweep_id)` reads every candidate: its drop in percentage points vs its own
  measured baseline (accuracy; or 1 - top-1 agreement without labels), size (gzip of the exported
  file, measured) and ORT latency at the smallest batch; `meets_bar`, `pareto` (compare.pareto_front
  on the objective vs the metric, succeeded runs only), and a recommendation: the smallest (or
  fastest) candidate meeting the bar, else the closest ones with a plain sentence. Objective `packed` ranks by
  the size of weights.packed (a recipe with a cluster stage; its space keeps 32-bit weights, since a quantize
  stage after clustering would drop the packed weights).

Non-goals: adaptive search (Bayesian, successive halving); every candidate is planned up front.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench import jobs
from workbench.errors import WorkbenchError
from workbench.specs import PruneSpec, RunSpec, StructuredSpec
from workbench.store import Run, Store

if TYPE_CHECKING:
    import pandas as pd

SPACE: dict[str, tuple] = {"sparsity": (0.0, 0.5, 0.7, 0.8, 0.9, 0.95), "bits": (32, 8, 4)}
AXES = ("sparsity", "bits", "ratio")
OBJECTIVES = {"size": "gzip_kb", "latency": "latency_ms", "packed": "packed_kb"}
WORDS = {"size": "smallest", "latency": "fastest", "packed": "smallest packed"}
CLOSEST = 3
NOT_COMPRESSING = ("finetune", "transfer")   # stages that leave the model's size and speed as they are


# --- planning ----------------------------------------------------------------------------------

def _check_space(space: dict[str, Any]) -> dict[str, tuple]:
    unknown = sorted(set(space) - set(AXES))
    if unknown:
        raise WorkbenchError(f"space.{unknown[0]}: unknown axis (known: {', '.join(AXES)})")
    checked = {}
    for axis, values in space.items():
        values = tuple(dict.fromkeys(values))
        if not values:
            raise WorkbenchError(f"space.{axis}: give at least one value")
        checked[axis] = values
    return checked


def apply_point(base: RunSpec, point: dict[str, Any]) -> RunSpec:
    """`base` with one point of the space: a structured stage first (ratio > 0), the prune stage set or
    removed (sparsity 0), and the quantization for the bitwidth (jobs.apply_setting)."""
    spec = base
    if "sparsity" in point:
        if point["sparsity"]:
            spec = jobs.apply_setting(spec, "sparsity", point["sparsity"])
        else:
            spec = dataclasses.replace(spec, stages=tuple(s for s in spec.stages if not isinstance(s, PruneSpec)))
    if "ratio" in point:   # channels go first: unstructured masks are then computed on the slimmer model
        kept = [s for s in spec.stages if not isinstance(s, StructuredSpec)]
        # a new stage keeps SIMD-friendly widths, as the Compress page does by default (BENCHMARKS.md, structured)
        old = next((s for s in spec.stages if isinstance(s, StructuredSpec)), StructuredSpec(round_to=8))
        stages = ([dataclasses.replace(old, ratio=point["ratio"])] if point["ratio"] else []) + kept
        spec = RunSpec.from_dict(dataclasses.replace(spec, stages=tuple(stages)).to_dict())
    if "bits" in point:
        spec = jobs.apply_setting(spec, "bits", point["bits"])
    label = " ".join(f"{k}={v}" for k, v in point.items())
    return dataclasses.replace(spec, name=f"{base.name or base.model.label} [search {label}]")


def coarse_to_fine(points: list[dict[str, Any]], space: dict[str, tuple]) -> list[dict[str, Any]]:
    """Farthest-point order over the grid scaled to [0, 1] per axis, from the point nearest the centre."""
    if not points:
        return []
    coords = np.array([[space[a].index(p[a]) / max(1, len(space[a]) - 1) for a in space] for p in points])
    order = [int(np.argmin(np.linalg.norm(coords - 0.5, axis=1)))]
    nearest = np.linalg.norm(coords - coords[order[0]], axis=1)
    while len(order) < len(points):
        nearest[order] = -1.0
        nxt = int(np.argmax(nearest))   # ties go to the earlier grid point
        order.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(coords - coords[nxt], axis=1))
    return [points[i] for i in order]


def candidates(base: RunSpec, space: dict[str, Any] | None = None) -> list[RunSpec]:
    """Every point of the space applied to `base`, coarse-to-fine; a point that compresses nothing is left out."""
    space = _check_space(space if space is not None else SPACE)
    axes = list(space)
    points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(space[a] for a in axes))]
    specs = {tuple(p.values()): apply_point(base, p) for p in points}
    kept = [p for p in points if any(s.kind not in NOT_COMPRESSING for s in specs[tuple(p.values())].stages)]
    return [specs[tuple(p.values())] for p in coarse_to_fine(kept, space)]


def _check_packing(base: RunSpec, space: dict[str, Any], objective: str) -> None:
    clusters = any(s.kind == "cluster" for s in base.stages)
    if objective == "packed" and not clusters:
        raise WorkbenchError("objective packed: the recipe has no cluster stage, so no candidate writes "
                             "weights.packed; add one (Compress: Weight clustering) or search by size")
    if clusters and any(b != 32 for b in space.get("bits", ())):
        raise WorkbenchError("space.bits: the recipe clusters its weights, and a quantize stage after clustering "
                             "would drop weights.packed; search bits 32 only (or drop the cluster stage)")


def _check_bar(max_drop: float, objective: str) -> None:
    if not isinstance(max_drop, int | float) or max_drop < 0:
        raise WorkbenchError(f"max_drop: must be >= 0 percentage points, got {max_drop}")
    if objective not in OBJECTIVES:
        raise WorkbenchError(f"objective: unknown '{objective}' (known: {', '.join(OBJECTIVES)})")


def search(store: Store, base: RunSpec, max_drop: float, trials: int | None = None, minutes: float | None = None,
           space: dict[str, Any] | None = None, objective: str = "size") -> tuple[str, list[Run]]:
    """Queue the first `trials` candidates as one search sweep with an optional deadline; see the module doc."""
    if trials is None and minutes is None:
        raise WorkbenchError("search: give a budget: trials, minutes or both")
    _check_bar(max_drop, objective)
    if trials is not None and trials < 1:
        raise WorkbenchError(f"trials: must be >= 1, got {trials}")
    if minutes is not None and minutes <= 0:
        raise WorkbenchError(f"minutes: must be > 0, got {minutes}")
    _check_packing(base, space if space is not None else SPACE, objective)
    planned = candidates(base, space)   # validates every candidate before anything is queued
    if not planned:
        raise WorkbenchError("space: every point leaves the recipe unchanged; nothing to try")
    chosen = planned[:trials] if trials is not None else planned
    sweep_id = uuid.uuid4().hex[:8]
    settings = {"max_drop": max_drop, "objective": objective, "trials": trials, "minutes": minutes,
                "space": {k: list(v) for k, v in _check_space(space if space is not None else SPACE).items()},
                "planned": len(planned), "order": "coarse-to-fine"}
    store.add_sweep(sweep_id, "search", time.time() + 60 * minutes if minutes else None, settings)
    return sweep_id, [jobs.submit(store, spec, sweep_id=sweep_id) for spec in chosen]


# --- reading the results -----------------------------------------------------------------------

@dataclass(frozen=True)
class SearchSummary:
    sweep_id: str
    max_drop: float
    objective: str
    metric: str
    frame: pd.DataFrame             # one row per candidate, oldest first
    recommended: int | None         # run id of the candidate to pick, when one meets the bar
    closest: tuple[int, ...]        # when none does: the succeeded candidates with the least drop
    message: str

    def to_dict(self) -> dict[str, Any]:
        rows = self.frame.astype(object).where(self.frame.notna(), None).to_dict(orient="records")
        return {"sweep_id": self.sweep_id, "max_drop": self.max_drop, "objective": self.objective,
                "metric": self.metric, "recommended": self.recommended, "closest": list(self.closest),
                "message": self.message, "candidates": rows}


def search_summary(store: Store, sweep_id: str, max_drop: float | None = None,
                   objective: str | None = None) -> SearchSummary:
    """Every candidate of a search against the bar; see the module doc. Expired queued runs are
    cancelled first, so the summary shows the budget as spent."""
    settings = store.get_sweep(sweep_id).settings
    max_drop = settings.get("max_drop", 1.0) if max_drop is None else max_drop
    _check_bar(max_drop, objective := objective or settings.get("objective", "size"))
    store.expire_sweeps()
    runs = store.list(sweep_id=sweep_id, limit=10_000)
    frame, metric = candidate_frame(store, runs, max_drop, OBJECTIVES[objective])
    recommended, closest, message = recommend(frame, max_drop, objective)
    return SearchSummary(sweep_id, max_drop, objective, metric, frame, recommended, closest, message)


def candidate_frame(store: Store, runs: list[Run], max_drop: float, x: str) -> tuple[pd.DataFrame, str]:
    """id, label, status, settings, metric, drop (pt), gzip_kb, latency_ms, meets_bar, pareto, error."""
    import pandas as pd

    from workbench.compare import batch_sizes, pareto_front, quality_metric, runs_frame

    df = runs_frame(store, runs)
    metric = quality_metric(df)
    out = pd.DataFrame({"id": df["id"], "label": df["label"], "status": df["status"]})
    for axis, column in (("sparsity", "setting_sparsity"), ("bits", "setting_bits")):
        out[axis] = df[column]
    out["ratio"] = [_ratio(r.spec) for r in sorted(runs, key=lambda r: r.id)]
    out[metric] = df.get(metric, np.nan)
    # without labels the metric is agreement with the baseline, which agrees with itself
    drop = -100 * df[f"d_{metric}"] if f"d_{metric}" in df else 100 * (1 - out[metric])
    out["drop"] = drop.astype(float).round(4) + 0.0   # + 0.0: no "-0" for an unchanged accuracy
    out["acc_change"] = df.get("acc_change")   # beyond test-set noise, or not (None: an older run)
    for column in ("gzip_kb", "gzip_x", "packed_kb", "packed_x"):
        out[column] = df.get(column, np.nan)
    sizes = batch_sizes(df)
    out["latency_ms"] = df[f"ort_ms@{sizes[0]}"] if sizes else np.nan
    ok = (out["status"] == "succeeded") & out["drop"].notna()
    out["meets_bar"] = ok & (out["drop"] <= max_drop + 1e-9)
    out["pareto"] = False
    if ok.any():
        out.loc[ok, "pareto"] = pareto_front(out[ok], x, metric)
    errors = {r.id: (r.error or "").splitlines()[0] if r.error else "" for r in runs}
    out["error"] = out["id"].map(errors)
    return out.reset_index(drop=True), metric


def _ratio(spec: dict[str, Any]) -> float:
    for stage in spec.get("stages", []):
        if "structured" in stage:
            return float(stage["structured"].get("ratio", 0.5))
    return 0.0


def _describe(row: Any) -> str:
    structured = f" · structured {row['ratio']:.0%}" if row["ratio"] else ""
    smaller = f" ({row['gzip_x']:.1f}x smaller than the baseline file)" if row["gzip_x"] == row["gzip_x"] else ""
    noise = f" ({row.get('acc_change')})" if row.get("acc_change") in ("within noise", "identical") else ""
    packed = row.get("packed_kb")
    packed = (f", weights.packed {packed:.1f} KB ({row['packed_x']:.1f}x smaller than the baseline file)"
              if packed is not None and packed == packed else "")
    return (f"{row['label']}{structured}: drop {row['drop']:.2f} pt{noise}, gzip {row['gzip_kb']:.1f} KB{smaller}"
            f"{packed}, {row['latency_ms']:.3f} ms")


def recommend(frame: pd.DataFrame, max_drop: float, objective: str) -> tuple[int | None, tuple[int, ...], str]:
    """(recommended id, closest ids, a sentence): never an empty answer."""
    x = OBJECTIVES[objective]
    done = frame[(frame["status"] == "succeeded") & frame["drop"].notna()]
    meeting = done[done["meets_bar"]]
    pending = int(frame["status"].isin(["queued", "running"]).sum())
    later = f" {pending} still to run." if pending else ""
    if len(meeting):
        best = meeting.sort_values([x, "drop"]).iloc[0]
        word = WORDS[objective]
        return int(best["id"]), (), (
            f"Recommended: {_describe(best)}; the {word} of the {len(meeting)} candidate(s) within "
            f"{max_drop:g} pt ({len(done)} finished, {int(done['pareto'].sum())} on the Pareto front).{later}")
    if len(done):
        near = done.sort_values(["drop", x]).head(CLOSEST)
        listed = "; ".join(_describe(r) for _, r in near.iterrows())
        return None, tuple(int(i) for i in near["id"]), (
            f"No candidate stays within {max_drop:g} pt of its baseline ({len(done)} finished). Closest: {listed}. "
            f"To get under the bar: add fine-tuning to the recipe, search lower sparsities or more bits, "
            f"or loosen the bar.{later}")
    return None, (), _nothing_finished(frame)


def _nothing_finished(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    if counts.get("queued", 0) or counts.get("running", 0):
        return f"No candidate has finished yet ({parts}); results appear here as they finish."
    errors = frame.loc[frame["error"] != "", "error"]
    first = f" First error: {errors.iloc[0]}" if len(errors) else ""
    return f"None of the {len(frame)} candidate(s) produced a result ({parts}).{first}"
