"""Queue operations on top of the store: submit a recipe or a sweep grid, and execute one claimed run.

A grid varies `sparsity`, `bits`, `seed` (the run's seed and every stage's, so seeds are real repeats) or
any `<stage>.<field>`. `sweep_summary` gives one row per run, or with `over_seeds` one row per setting with
the mean and standard deviation over its seeds.

`execute(store, run_id)` is what a worker's child process (or a Ray task) calls: it runs the pipeline
with throttled progress written to the store, polls for cancellation, writes the artifacts into the
run's folder, and records the outcome. It never raises for a failed run: the failure is the outcome.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import statistics
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import yaml

from workbench.errors import WorkbenchError
from workbench.specs import PruneSpec, QuantSpec, RunSpec, SpecError, quant_spec_for_bits
from workbench.store import Run, Store

log = logging.getLogger(__name__)
THROTTLE_S = 0.5     # at most two progress writes / cancel polls per second per run
LOG_TAIL_LINES = 20


def submit(store: Store, spec: RunSpec, name: str | None = None, sweep_id: str | None = None) -> Run:
    return store.submit(spec.to_dict(), name or spec.name or spec.model.label, sweep_id)


# --- sweeps ------------------------------------------------------------------------------------

def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["sparsity=0.5,0.7,0.9", "bits=8,4"]` -> {"sparsity": [0.5, 0.7, 0.9], "bits": [8, 4]}."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise SpecError(f"grid: expected KEY=V1,V2,... got '{item}'")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def apply_setting(spec: RunSpec, key: str, value: Any) -> RunSpec:
    """One grid setting. `sparsity` sets (or adds) the prune stage, `bits` picks the quantization for
    that bitwidth (32 = none), `seed` sets the run's seed and every stage's (nested fine-tuning too),
    `<stage>.<field>` sets a field of the first stage of that kind."""
    stages = list(spec.stages)
    if key == "seed":
        return with_seed(spec, value)
    if key == "sparsity":
        prune = next((s for s in stages if isinstance(s, PruneSpec)), None)
        if prune is None:
            stages.insert(0, PruneSpec(sparsity=value))
        else:
            stages[stages.index(prune)] = dataclasses.replace(prune, sparsity=value)
    elif key == "bits":
        quant = next((s for s in stages if isinstance(s, QuantSpec)), None)
        new = quant_spec_for_bits(int(value), quant)
        stages = [s for s in stages if s is not quant] + ([new] if new else [])
    else:
        kind, _, field = key.partition(".")
        match = next((s for s in stages if s.kind == kind), None)
        if match is None or not field:
            raise SpecError(f"grid.{key}: no '{kind}' stage in the recipe to vary (or no field given)")
        raw = spec.to_dict()
        index = stages.index(match)
        raw["stages"][index][kind][field] = value
        return RunSpec.from_dict(raw)
    return RunSpec.from_dict(dataclasses.replace(spec, stages=tuple(stages)).to_dict())


def with_seed(spec: RunSpec, seed: Any) -> RunSpec:
    """`spec` with `seed` as the run's seed and in every stage that has one (and in its nested finetune)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SpecError(f"grid.seed: must be a whole number, got {seed!r}")
    raw = spec.to_dict()
    raw["seed"] = seed
    for stage in raw["stages"]:
        for body in stage.values():
            if "seed" in body:
                body["seed"] = seed
            if isinstance(body.get("finetune"), dict):
                body["finetune"]["seed"] = seed
    return RunSpec.from_dict(raw)


def expand_grid(spec: RunSpec, grid: dict[str, list[Any]]) -> list[RunSpec]:
    """Every combination of the grid's values applied to `spec`, named after its settings."""
    specs = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        variant = spec
        for key, value in zip(keys, combo, strict=True):
            variant = apply_setting(variant, key, value)
        label = " ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
        specs.append(dataclasses.replace(variant, name=f"{spec.name or spec.model.label} [{label}]"))
    return specs


def submit_sweep(store: Store, spec: RunSpec, grid: dict[str, list[Any]]) -> tuple[str, list[Run]]:
    specs = expand_grid(spec, grid)  # validate every combination before queueing any
    sweep_id = uuid.uuid4().hex[:8]
    return sweep_id, [submit(store, s, sweep_id=sweep_id) for s in specs]


def sweep_summary(store: Store, sweep_id: str, over_seeds: bool = False) -> list[dict[str, Any]]:
    """One row per run of the sweep: status and the final variant's headline numbers. With `over_seeds`,
    one row per setting (runs whose recipes differ only in seeds): its runs, seeds, how many succeeded,
    and for each number the mean over the succeeded runs and `<number>_std`, their sample standard
    deviation (0 for a single run)."""
    runs = list(reversed(store.list(sweep_id=sweep_id, limit=10_000)))
    if not over_seeds:
        return [{"id": r.id, "name": r.name, "status": r.status, **(r.metrics or {}).get("final", {})} for r in runs]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_without_seeds(run.spec), []).append(run)
    return [_seed_row(group) for group in groups.values()]


def _without_seeds(spec: dict[str, Any]) -> str:
    """The recipe minus its name and seeds, as a key: equal keys are repeats of one setting."""
    raw = json.loads(json.dumps(spec))
    raw.pop("name", None)
    raw.pop("seed", None)
    for stage in raw.get("stages", []):
        for body in stage.values():
            body.pop("seed", None)
            if isinstance(body.get("finetune"), dict):
                body["finetune"].pop("seed", None)
    return json.dumps(raw, sort_keys=True)


def _seed_row(group: list[Run]) -> dict[str, Any]:
    done = [r for r in group if r.status == "succeeded" and (r.metrics or {}).get("final")]
    statuses = Counter(r.status for r in group)
    label = re.sub(r"\s*\bseed=-?\d+", "", group[0].name).replace(" []", "").replace("[ ", "[")
    row: dict[str, Any] = {"setting": label, "runs": ",".join(str(r.id) for r in group),
                           "seeds": ",".join(str(r.spec.get("seed", 0)) for r in group), "n": len(done),
                           "status": ", ".join(f"{n} {s}" for s, n in statuses.items())}
    finals = [r.metrics["final"] for r in done]
    for key in dict.fromkeys(k for f in finals for k in f):
        values = [f[key] for f in finals if isinstance(f.get(key), int | float) and not isinstance(f.get(key), bool)]
        if len(values) == len(finals) and values:
            row[key] = round(statistics.fmean(values), 6)
            row[f"{key}_std"] = round(statistics.stdev(values), 6) if len(values) > 1 else 0.0
    return row


# --- executing one run -------------------------------------------------------------------------

def _throttled(fn: Callable[..., Any], every: float) -> Callable[..., Any]:
    last = {"t": 0.0, "stage": None, "value": None}

    def call(*args: Any, force: bool = False) -> Any:
        now = time.monotonic()
        stage = args[1] if len(args) > 1 else None
        if force or now - last["t"] >= every or stage != last["stage"]:
            last.update(t=now, stage=stage, value=fn(*args))
        return last["value"]

    return call


def execute(store: Store, run_id: int) -> str:
    """Run a claimed run to its end; returns the final status (the store holds the details)."""
    from workbench.pipeline import run_pipeline
    from workbench.stages import Cancelled

    out = store.run_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("workbench")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    run = store.get(run_id)
    owner = run.worker_id  # this attempt's worker: a reaped-and-retried run is not ours to write any more
    progress = _throttled(lambda f, stage, msg: store.set_progress(run_id, f, stage, msg, owner), THROTTLE_S)
    cancelled = _throttled(lambda: store.cancel_requested(run_id), THROTTLE_S)
    try:
        spec = RunSpec.from_dict(run.spec)
        log.info("run %d: %s", run_id, spec.name or spec.model.label)
        report = run_pipeline(spec, progress=progress, cancel=cancelled, out_dir=out)
        rows = report.summary_rows()
        store.finish(run_id, "succeeded", {"rows": rows, "final": rows[-1]}, worker_id=owner)
    except Cancelled:
        log.info("run %d: cancelled", run_id)
        store.finish(run_id, "cancelled", error="cancelled by request", worker_id=owner)
    except Exception as exc:  # any failure is this run's outcome, never the worker's crash
        message = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        log.error("run %d failed: %s\n%s", run_id, message, traceback.format_exc())
        handler.flush()
        store.finish(run_id, "failed", error=f"{message}\n--- log tail ---\n{_tail(out / 'log.txt')}",
                     worker_id=owner)
    finally:
        root.removeHandler(handler)
        handler.close()
    return store.get(run_id).status  # finish() is a no-op if the run was reaped meanwhile


def _tail(path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
