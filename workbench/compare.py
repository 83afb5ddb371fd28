"""Side-by-side comparison of finished runs as pandas DataFrames (what the Compare page and charts read).

Contract: `runs_frame(store, runs)` gives one row per run, built from the final variant of the run's
`report.json` (falling back to the summary rows in the store when the file is gone): accuracy and its
change vs the run's own baseline (with `acc_change`: whether it is beyond test-set noise, by the paired
counts of workbench.significance), file / gzip / minimum-storage / weights.packed bytes and their ratios vs the
baseline file (`stored`: the smaller of the file and weights.packed with its gzipped graph.onnx, the bytes the
run really keeps), ONNX
Runtime latency per batch size and speedups, sparsity, stored bits, the method, the real/simulated kind
of each claim, and the sweep settings (sparsity, bits) parsed from the recipe.
Rigour (ShrinkBench-style): each row also says what the recipe asked for next to what was measured
(`requested_*` vs achieved `sparsity`, `bits`, `storage_bits`, `channels_removed`, `params_x`), its `seed`,
and a `config` key (the recipe without seeds or name); `seed_summary` folds runs that differ only by seed
into mean ± std rows, and `random_baseline_frame` sets a ranking (magnitude, lamp, wanda) against random
pruning of otherwise equal recipes.
`class_frame` splits each run's accuracy change by class; `versus_frame` sets runs against one of them sample
by sample (the same test samples, from the per-sample answers in report.json). `pareto_front` marks the
non-dominated rows; `layer_frame` / `history_frame` give per-layer sparsity and per-round accuracy;
`default_selection` picks what Compare opens with; `artifact_path` is the one way to reach a file of a run
(it never leaves the run's folder). Reads files only; never writes.

Non-goals: plotting (workbench.charts), streamlit (the ui package).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.significance import PairedChange, changes, unpack_answers
from workbench.specs import RunSpec
from workbench.store import Run, Store

log = logging.getLogger(__name__)
FileName = Callable[[str], str]   # a model or data file's path -> the name shown for it


def _base_name(path: str) -> str:
    return Path(path).name

ARTIFACTS = {"model": "model.onnx", "recipe": "recipe.yaml", "report": "report.json", "log": "log.txt",
             "packed": "weights.packed", "graph": "graph.onnx", "torch": "model.pt2"}
CLAIM_ASPECTS = ("file size", "compressed size", "minimum storage", "latency @ batch 1", "accuracy")
LAYER_SUFFIXES = ("_quantized", "_fp16", "_DequantizeLinear", ".weight")
SIZE_KEYS = ("file", "gzip", "min_storage", "packed", "stored")   # each with _bytes, _kb and _x columns
NBITS_SUFFIX = re.compile(r"_KxN_Q\d+$")   # what ORT's MatMulNBits quantizer appends: fc1.weight_KxN_Q4


# --- reading one run ---------------------------------------------------------------------------

def artifact_path(store: Store, run_id: int, name: str) -> Path:
    """The path of artifact `name` (model, recipe, report, log) of a run; refuses anything outside its folder."""
    if name not in ARTIFACTS:
        raise WorkbenchError(f"unknown artifact '{name}' (known: {', '.join(ARTIFACTS)})")
    root = store.run_dir(run_id).resolve()
    path = (root / ARTIFACTS[name]).resolve()
    if not path.is_relative_to(root):  # a symlink pointing out of the run folder
        raise WorkbenchError(f"run {run_id}: {name} points outside the run's folder")
    if not path.is_file():
        raise WorkbenchError(f"run {run_id}: no {ARTIFACTS[name]} (the run did not finish, or it was deleted)")
    return path


def load_report(store: Store, run_id: int) -> dict[str, Any] | None:
    """The run's report.json as a dict, or None when it is missing or unreadable."""
    try:
        return json.loads(artifact_path(store, run_id, "report").read_text())
    except (WorkbenchError, OSError, ValueError) as exc:
        log.debug("run %s: no report (%s)", run_id, exc)
        return None


def settings_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The slider settings a recipe amounts to: sparsity (0 without pruning) and bits (32 without quantization)."""
    sparsity, bits, quant, finetune, methods = 0.0, 32, None, False, []
    for stage in spec.get("stages", []):
        (kind, body), = stage.items()
        if kind == "prune":
            sparsity = float(body.get("sparsity", 0.0))
            finetune = finetune or bool((body.get("finetune") or {}).get("epochs"))
        elif kind == "quantize":
            quant = body.get("method", "static")
            bits = int(body.get("weight_bits", 8))
        elif kind == "finetune":
            finetune = finetune or bool(body.get("epochs", 0))
        elif kind in SHORT_LABELS:
            methods.append(SHORT_LABELS[kind](body or {}))
    return {"setting_sparsity": sparsity, "setting_bits": bits, "quant_method": quant, "finetuned": finetune,
            "methods": " · ".join(methods)}


def _prune_label(body: dict[str, Any]) -> str:
    schedule = body.get("schedule", "oneshot")
    sched = {"iterative": f", iterative {body.get('per_round', 0.2):.0%}/round",
             "gradual": f", gradual {body.get('steps', 10)} steps"}.get(schedule, "")
    if schedule != "oneshot" and (body.get("finetune") or {}).get("epochs"):
        sched += {"lr": " + LR rewinding", "none": " + fine-tuning", "weight": " + weight rewinding"}.get(
            body.get("rewind", "lr"), "")
    solved = {"refit": " + least-squares refit", "obs": " + OBS"}.get(body.get("reconstruct", "none"), "")
    if body.get("nm"):
        return f"prune {body['nm']} N:M {body.get('method', 'magnitude')}{solved}"
    return (f"prune {body.get('sparsity', 0):.0%} {body.get('scope', 'global')} {body.get('method', 'magnitude')}"
            f"{sched}{solved}")


def _quant_label(body: dict[str, Any]) -> str:
    method, bits = body.get("method", "static"), body.get("weight_bits", 8)
    names = {"static": "static int8", "dynamic": "dynamic int8", "fp16": "fp16",
             "weight_only": f"weight-only {bits}-bit", "fake": f"simulated {bits}-bit"}
    return names.get(method, method)


STAGE_LABELS = {
    "prune": _prune_label,
    "finetune": lambda b: f"finetune {b.get('epochs', 3)} ep",
    "quantize": _quant_label,
    "structured": lambda b: f"structured {b.get('ratio', 0.5):.0%} channels",
    "cluster": lambda b: f"cluster k={b.get('clusters', 16)}" + (" + centroid FT" if (b.get("finetune") or {}).get(
        "epochs") else ""),
    "qat": lambda b: f"QAT {b.get('weight_bits', 4)}-bit" + (" + int8 act" if b.get("activation_bits") else ""),
    "distill": lambda b: f"distill width {b.get('width', 0.5):g}, {b.get('init', 'teacher')} init, "
                         f"{b.get('epochs', 30)} ep",
    "lowrank": lambda b: (f"low-rank rank {b['rank']}" if b.get("rank")
                          else f"low-rank {b.get('energy', 0.9):.0%} energy"),
    "transfer": lambda b: f"transfer head {b.get('epochs', 20)} ep" + (" + backbone" * bool(b.get("train_backbone"))),
}
SHORT_LABELS = {
    "structured": lambda b: f"struct {b.get('ratio', 0.5):.0%}",
    "cluster": lambda b: f"k={b.get('clusters', 16)}",
    "qat": lambda b: f"QAT {b.get('weight_bits', 4)}b",
    "distill": lambda b: f"student {b.get('width', 0.5):g}x",
    "lowrank": lambda b: f"rank {b['rank']}" if b.get("rank") else f"SVD {b.get('energy', 0.9):.0%}",
    "transfer": lambda b: "transfer",
}


def method_label(spec: dict[str, Any]) -> str:
    """A short description of the recipe's stages: 'prune 90% global magnitude → finetune 30 ep → static int8'."""
    parts = []
    for stage in spec.get("stages", []):
        (kind, body), = stage.items()
        parts.append(STAGE_LABELS[kind](body or {}) if kind in STAGE_LABELS else kind)
    return " → ".join(parts) or "no stages (baseline only)"


def short_label(run_id: int, settings: dict[str, Any]) -> str:
    """'#7 90% · int8' — short enough for a chart axis."""
    bits, method = settings["setting_bits"], settings["quant_method"]
    quant = {None: "", "static": "int8", "dynamic": "int8 dyn", "fp16": "fp16", "fake": f"{bits}b sim",
             "weight_only": f"{bits}b"}.get(method, str(method))
    sparsity = f"{settings['setting_sparsity']:.0%}" if settings["setting_sparsity"] else ""
    parts = [settings.get("methods", ""), sparsity, quant, "ft" if settings["finetuned"] else ""]
    return f"#{run_id} " + (" · ".join(p for p in parts if p) or "baseline")


def seed_of(spec: dict[str, Any]) -> int:
    """The run's seed: RunSpec.seed, else the first non-zero stage seed (a seed sweep sets them all alike)."""
    seeds = [spec.get("seed", 0)] + [v for stage in spec.get("stages", []) for v in _seeds(stage)]
    return next((int(s) for s in seeds if s), 0)


def _seeds(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for k, x in value.items() for v in ([x] if k == "seed" else _seeds(x))]
    return [v for x in value for v in _seeds(x)] if isinstance(value, list) else []


def _without_seeds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    return [_without_seeds(v) for v in value] if isinstance(value, list) else value


def config_key(spec: dict[str, Any]) -> str:
    """The recipe with every default filled in, minus its name and seeds, as canonical JSON: runs with
    equal keys differ only by seed."""
    try:
        spec = RunSpec.from_dict(spec).to_dict()
    except WorkbenchError:   # an old or hand-written recipe: compare it as written
        spec = dict(spec)
    body = {k: v for k, v in spec.items() if k not in ("name", "version")}
    return json.dumps(_without_seeds(body), sort_keys=True, default=str)


def requested_of(spec: dict[str, Any]) -> dict[str, Any]:
    """What the recipe asked for (NaN where it asked nothing): unstructured sparsity (N:M included),
    the fraction of channels removed (structured ratio, or 1 - distill width), weight bits (quantize,
    QAT; log2 of the cluster count), and the last prune stage's method."""
    out: dict[str, Any] = {"requested_sparsity": np.nan, "requested_channels_removed": np.nan,
                           "requested_bits": 32, "prune_method": None}
    for stage in spec.get("stages", []):
        (kind, body), = stage.items()
        body = body or {}
        if kind == "prune":
            out.update(requested_sparsity=float(body.get("sparsity", 0.5)),
                       prune_method=body.get("method", "magnitude"))
        elif kind == "structured":
            out["requested_channels_removed"] = float(body.get("ratio", 0.5))
        elif kind == "distill":
            out["requested_channels_removed"] = 1 - float(body.get("width", 0.5))
        elif kind in ("quantize", "qat"):
            out["requested_bits"] = int(body.get("weight_bits", 8 if kind == "quantize" else 4))
        elif kind == "cluster":
            out["requested_bits"] = math.ceil(math.log2(int(body.get("clusters", 16))))
    return out


# --- one row per run ---------------------------------------------------------------------------

def _numbers(m: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    size = m["size"]
    row = {f"{prefix}{k}": v for k, v in m["metrics"].items()}
    row.update({f"{prefix}file_bytes": size["file_bytes"], f"{prefix}gzip_bytes": size["gzip_bytes"],
                f"{prefix}min_storage_bytes": size["min_storage_bytes"]})
    row.update({f"{prefix}ort_ms@{s['batch_size']}": s["median_ms"] for s in m["latency"]})
    row.update({f"{prefix}torch_ms@{s['batch_size']}": s["median_ms"] for s in m.get("torch_latency", [])})
    return row


def _final(report: dict[str, Any]) -> dict[str, Any]:
    """The run's last variant (the baseline when the recipe had no stages)."""
    return (report.get("variants") or [report["baseline"]])[-1]


def report_row(report: dict[str, Any]) -> dict[str, Any]:
    """The final variant's numbers vs the baseline's, flat."""
    base, final = report["baseline"], _final(report)
    m = final["measurement"]
    row = {**_numbers(m), **_numbers(base["measurement"], "base_")}
    for metric in m["metrics"]:
        if f"base_{metric}" in row:
            row[f"d_{metric}"] = row[metric] - row[f"base_{metric}"]
    # weights.packed (clustering): the weights in a purpose-built format; NaN for a run that wrote none
    facts = final.get("facts") or {}
    row["packed_bytes"] = facts.get("packed_bytes") or np.nan
    # the smaller real artifact: the file, or weights.packed with the network (gzipped graph.onnx) it needs
    row["stored_bytes"] = np.nanmin([row["file_bytes"], row["packed_bytes"] + (facts.get("graph_gzip_bytes") or 0)])
    for key in SIZE_KEYS:
        row[f"{key}_x"] = row["base_file_bytes"] / row[f"{key}_bytes"] if row[f"{key}_bytes"] else np.nan
    for s in m["latency"]:
        ref = row.get(f"base_ort_ms@{s['batch_size']}")
        row[f"speedup@{s['batch_size']}"] = ref / s["median_ms"] if ref and s["median_ms"] else np.nan
    env = report.get("environment", {})
    row.update(sparsity=m["size"]["sparsity"], bits=m["size"]["bits_per_weight"], variant=final["name"],
               threads=env.get("threads"), cpu=env.get("cpu_model"), storage_bits=m["size"].get("storage_bits"),
               params=m["size"].get("params"), channels_removed=channels_removed(report))
    base_params = base["measurement"]["size"].get("params")
    row["params_x"] = base_params / row["params"] if base_params and row["params"] else np.nan
    if paired := m.get("paired"):
        change = PairedChange(**paired)
        row.update(acc_change=change.verdict, acc_p=change.p_value, acc_worse=change.worse, acc_better=change.better)
    claims = final.get("claims", [])
    row.update({f"claim:{c['aspect']}": c["kind"] for c in claims})
    row["real"] = ", ".join(c["aspect"] for c in claims if c["kind"] == "real" and _is_gain(c))
    row["simulated"] = ", ".join(c["aspect"] for c in claims if c["kind"] in ("simulated", "estimate"))
    return row


def channels_removed(report: dict[str, Any]) -> float:
    """Measured fraction of output channels/neurons removed by structured pruning (the last stage that
    recorded `pruned_layers`; layers it left whole on purpose, e.g. the classifier, are not counted)."""
    records = [h for v in report.get("variants", []) for h in v.get("history", []) if "pruned_layers" in h]
    if not records:
        return np.nan
    skipped = {name for name, *_ in records[-1].get("skipped", [])}
    layers = [r for r in records[-1]["pruned_layers"] if r["layer"] not in skipped]
    before = sum(r["before"][0] for r in layers)
    return 1 - sum(r["after"][0] for r in layers) / before if before else np.nan


def _is_gain(claim: dict[str, Any]) -> bool:
    ratio = claim.get("ratio")
    return claim["aspect"] != "accuracy" and ratio is not None and ratio > 1


def _row_from_metrics(run: Run) -> dict[str, Any]:
    """Fallback when report.json is gone: the summary rows the store kept (KB, no claims)."""
    rows = (run.metrics or {}).get("rows") or []
    if not rows:
        return {}
    base, final = rows[0], rows[-1]
    row = {k: v for k, v in final.items() if k.startswith(("acc", "ort_ms@", "speedup@", "torch_ms@"))}
    for key in ("file", "gzip", "min_storage"):
        row[f"{key}_bytes"] = final.get(f"{key}_kb", np.nan) * 1024
    row.update(base_accuracy=base.get("accuracy"), base_file_bytes=base.get("file_kb", np.nan) * 1024,
               sparsity=final.get("sparsity"), bits=final.get("bits"), variant=final.get("variant"))
    if row.get("accuracy") is not None and row.get("base_accuracy") is not None:
        row["d_accuracy"] = row["accuracy"] - row["base_accuracy"]
    for key in ("file", "gzip", "min_storage"):
        row[f"{key}_x"] = row["base_file_bytes"] / row[f"{key}_bytes"] if row[f"{key}_bytes"] else np.nan
    return row


def run_row(store: Store, run: Run, report: dict[str, Any] | None = None,
            file_name: FileName = _base_name) -> dict[str, Any]:
    report = report if report is not None else load_report(store, run.id)
    settings = settings_of(run.spec)
    head = {"id": run.id, "label": short_label(run.id, settings), "name": run.name,
            "model": _model_label(run.spec, file_name), "data": data_label(run.spec, file_name),
            "status": run.status, "sweep_id": run.sweep_id,
            "method": method_label(run.spec), "finished": run.finished, **settings,
            "seed": seed_of(run.spec), "config": config_key(run.spec), **requested_of(run.spec)}
    try:
        numbers = report_row(report) if report else _row_from_metrics(run)
    except (KeyError, IndexError, TypeError) as exc:  # a report from an older or broken run: show what we can
        log.warning("run %s: unreadable report (%s)", run.id, exc)
        numbers = _row_from_metrics(run)
    return {**head, **numbers}


def runs_frame(store: Store, runs: list[Run], reports: dict[int, dict] | None = None,
               file_name: FileName = _base_name) -> pd.DataFrame:
    """One row per run (oldest first), final variant vs baseline; see the module docstring. `file_name` names
    a model or data file for display (the app passes the name the user uploaded it as)."""
    reports = reports or {}
    rows = [run_row(store, r, reports.get(r.id), file_name) for r in sorted(runs, key=lambda r: r.id)]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for key in SIZE_KEYS:
        if f"{key}_bytes" in df:
            df[f"{key}_kb"] = df[f"{key}_bytes"] / 1024
    return df


def _model_label(spec: dict[str, Any], file_name: FileName = _base_name) -> str:
    model = spec.get("model") or {}
    return model.get("sample") or file_name(model.get("path") or "?")


def data_label(spec: dict[str, Any], file_name: FileName = _base_name) -> str:
    """What the run was scored on: 'digits', an evaluation file's name, plus ' · classes 2,4,6' for a subset
    and ' · a draw of ≤100 samples' for `max_samples`. Accuracies of runs scored on different data do not compare."""
    data = spec.get("data") or {}
    if isinstance(data, str):
        data = {"builtin": data}
    name = data.get("builtin") or file_name(data.get("path") or "?")
    classes = data.get("classes")
    limit = data.get("max_samples") or (spec.get("measure") or {}).get("max_eval_samples")
    return (name + (f" · classes {','.join(map(str, classes))}" if classes else "")
            + (f" · a draw of ≤{limit:,} samples" if limit else ""))


def data_groups(df: pd.DataFrame) -> list[str]:
    """The distinct data the runs were scored on, in order of appearance (one entry: they all compare)."""
    return list(dict.fromkeys(df["data"])) if "data" in df else []


def timing_groups(df: pd.DataFrame) -> list[str]:
    """The distinct conditions the runs were timed under (ONNX Runtime threads, CPU), in order of appearance:
    absolute latencies compare only within one; each run's speedups are against its own baseline."""
    if "threads" not in df:
        return []
    cpus = df["cpu"] if "cpu" in df else pd.Series([None] * len(df), index=df.index)
    labels = [f"{int(t)} thread{'s' if t != 1 else ''}" + (f" on {c}" if isinstance(c, str) and c else "")
              for t, c in zip(df["threads"], cpus, strict=True) if pd.notna(t)]
    return list(dict.fromkeys(labels))


def quality_metric(df: pd.DataFrame) -> str:
    """'accuracy' when the runs had labels, else the fidelity metric they report (top-1 agreement)."""
    for name in ("accuracy", "top1_agreement", "cosine"):
        if name in df and df[name].notna().any():
            return name
    return "accuracy"


def batch_sizes(df: pd.DataFrame) -> list[int]:
    """The batch sizes that have ORT latency columns, ascending."""
    return sorted(int(c.split("@")[1]) for c in df.columns if c.startswith("ort_ms@"))


def baselines_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One reference row per model and data: its (first) baseline, in the same columns as `runs_frame`."""
    if df.empty:
        return df
    cols = [c for c in df.columns if c.startswith("base_")]
    keys = [k for k in ("model", "data") if k in df]
    base = df.groupby(keys, sort=False)[cols].first().reset_index()
    base = base.rename(columns={c: c.removeprefix("base_") for c in cols})
    several = len(data_groups(df)) > 1
    base["label"] = base["model"] + " baseline" + (" on " + base["data"] if several else "")
    if "file_bytes" in base:
        base["stored_bytes"] = base["file_bytes"]   # a baseline is stored as its model file
    for key in ("file", "gzip", "min_storage", "stored"):
        if f"{key}_bytes" in base:
            base[f"{key}_kb"] = base[f"{key}_bytes"] / 1024
    return base


# --- trade-offs --------------------------------------------------------------------------------

def pareto_front(df: pd.DataFrame, x: str, y: str, minimize_x: bool = True, maximize_y: bool = True) -> pd.Series:
    """True for rows no other row beats: at least as good on both axes and strictly better on one.
    Rows with a missing x or y are never on the front."""
    xs = df[x].to_numpy(dtype=float) * (1 if minimize_x else -1)
    ys = df[y].to_numpy(dtype=float) * (-1 if maximize_y else 1)    # both now "smaller is better"
    valid = ~(np.isnan(xs) | np.isnan(ys))
    front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (xs <= xs[i]) & (ys <= ys[i]) & ((xs < xs[i]) | (ys < ys[i]))
        front[i] = not others.any()
    return pd.Series(front, index=df.index, name="pareto")


def tradeoff_frame(df: pd.DataFrame, x: str, y: str = "accuracy", minimize_x: bool = True) -> pd.DataFrame:
    """The runs plus each model's baseline as a reference point, with a `pareto` column and `kind`. A run
    only competes with runs (and baselines) scored on the same data: each data group has its own frontier."""
    cols = ["label", "model", "data", x, y]
    runs = df[[c for c in cols if c in df]].assign(kind="run")
    base = baselines_frame(df)
    base = base[[c for c in cols if c in base]].assign(kind="baseline") if x in base and y in base else base.iloc[:0]
    both = pd.concat([runs, base], ignore_index=True)
    if x not in both or y not in both:
        return both.assign(pareto=False)
    groups = both.groupby("data", sort=False) if "data" in both else [(None, both)]
    both["pareto"] = pd.concat([pareto_front(part, x, y, minimize_x=minimize_x) for _, part in groups])
    return both


# --- per layer, per round, per sweep -----------------------------------------------------------

def layer_name(name: str) -> str:
    """The layer a weight initializer belongs to, whatever a quantizer renamed it to (fc1.weight_KxN_Q4 -> fc1)."""
    name = NBITS_SUFFIX.sub("", name)
    for suffix in LAYER_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def layer_frame(store: Store, run_id: int, label: str | None = None) -> pd.DataFrame:
    """Per-layer sparsity of the run's exported model (model.onnx): layer, op, params, sparsity."""
    import onnx

    from workbench.summary import summarize_onnx

    try:
        model = onnx.load(str(artifact_path(store, run_id, "model")), load_external_data=False)
        layers = summarize_onnx(model, f"run {run_id}").layers
    except Exception as exc:  # missing, truncated or foreign file: the chart just has no bars for this run
        log.debug("run %s: no per-layer sparsity (%s)", run_id, exc)
        return pd.DataFrame(columns=["run", "layer", "op", "params", "sparsity"])
    return pd.DataFrame([{"run": label or f"#{run_id}", "layer": layer_name(row.name), "op": row.op_type,
                          "params": row.params, "sparsity": row.sparsity} for row in layers])


def history_frame(report: dict[str, Any] | None, label: str, min_rounds: int = 1) -> pd.DataFrame:
    """Per-round records of pruning: run, round, sparsity, accuracy (empty with fewer than `min_rounds`)."""
    rows = []
    for variant in (report or {}).get("variants", []):
        for record in variant.get("history", []):
            if "round" in record and "sparsity" in record:
                rows.append({"run": label, "round": record["round"], "sparsity": record["sparsity"],
                             "accuracy": record.get("accuracy", np.nan)})
    return pd.DataFrame(rows if len(rows) >= min_rounds else [], columns=["run", "round", "sparsity", "accuracy"])


def stage_notes(report: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(stage, note) for the baseline and every variant in run order: what each stage did, left whole or warns
    about (layers a method could not touch and why, a conversion, calibration on scored data...)."""
    parts = [(report or {}).get("baseline") or {}, *((report or {}).get("variants") or [])]
    return [(part.get("name", "?"), str(note)) for part in parts for note in part.get("notes") or []]


def claims_frame(report: dict[str, Any] | None) -> pd.DataFrame:
    """The final variant's claims: aspect, kind (real | simulated | estimate | none), ratio, reason."""
    variants = (report or {}).get("variants") or []
    claims = variants[-1].get("claims", []) if variants else []
    return pd.DataFrame(claims, columns=["aspect", "kind", "ratio", "reason"])


def sweep_frame(df: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Sweep settings → `value` (sparsity × bits); the mean where a cell holds several runs."""
    if df.empty or value not in df:
        return pd.DataFrame(columns=["setting_sparsity", "setting_bits", value])
    return df.groupby(["setting_sparsity", "setting_bits"], as_index=False)[value].mean()


def sweep_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The selected runs of the selection's largest sweep, when they vary a setting (what a heatmap shows)."""
    if df.empty or "sweep_id" not in df or df["sweep_id"].isna().all():
        return df.iloc[:0]
    swept = df[df["sweep_id"].notna()]
    rows = swept[swept["sweep_id"] == swept["sweep_id"].value_counts().index[0]]
    return rows if len(rows.drop_duplicates(["setting_sparsity", "setting_bits"])) > 1 else rows.iloc[:0]


# --- rigour: seeds and the random baseline ----------------------------------------------------

SEED_METRICS = ("accuracy", "top1_agreement", "d_accuracy", "d_top1_agreement", "sparsity", "channels_removed",
                "file_x", "gzip_x", "min_storage_x", "params_x")
SETTING_COLUMNS = ("model", "method", "prune_method", "requested_sparsity", "requested_channels_removed",
                   "requested_bits", "quant_method", "finetuned")


def _mean_std(groups: Any, columns: list[str]) -> pd.DataFrame:
    """`<col>_mean` and `<col>_std` (sample std, ddof=1: NaN for a single run) per group."""
    stats = groups[columns].agg(["mean", "std"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    return stats


def _seeds_text(seeds: pd.Series) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe that differs only by seed (`config`): its settings, n, the seeds, and mean ±
    std of accuracy, its change vs the baseline, achieved sparsity, size ratios and speedups."""
    if df.empty or "config" not in df:
        return pd.DataFrame(columns=["config", "n", "seeds"])
    metrics = [c for c in SEED_METRICS if c in df and df[c].notna().any()]
    metrics += sorted((c for c in df if c.startswith("speedup@")), key=lambda c: int(c.split("@")[1]))
    groups = df.groupby("config", sort=False)
    head = groups[[c for c in SETTING_COLUMNS if c in df]].first()
    head["n"], head["seeds"] = groups.size(), groups["seed"].agg(_seeds_text)
    return head.join(_mean_std(groups, metrics)).reset_index()


def _without_prune_method(config: str) -> str:
    spec = json.loads(config)
    for stage in spec.get("stages", []):
        (stage.get("prune") or {}).pop("method", None)
    return json.dumps(spec, sort_keys=True)


def random_baseline_frame(df: pd.DataFrame, per_seed: bool = False) -> pd.DataFrame:
    """A ranking (magnitude, lamp, wanda: `ranking`) vs random pruning of otherwise equal recipes (same seed):
    the quality metric of each and `advantage` = ranked - random. One row per pair with `per_seed`, else one
    row per recipe with n pairs and mean ± std over seeds."""
    metric = quality_metric(df)
    if df.empty or "prune_method" not in df:
        return pd.DataFrame(columns=["model", "method", "ranking", "requested_sparsity", "n", "advantage_mean"])
    pruned = df[df["prune_method"].notna()]
    pruned = pruned.assign(pair=pruned["config"].map(_without_prune_method))
    runs = pruned.groupby(["pair", "seed", "prune_method"], sort=False).agg(
        value=(metric, "mean"), id=("id", "min"), model=("model", "first"), method=("method", "first"),
        requested_sparsity=("requested_sparsity", "first")).reset_index()
    ranked = runs[runs["prune_method"] != "random"].rename(columns={"prune_method": "ranking"})
    rnd = runs[runs["prune_method"] == "random"][["pair", "seed", "value", "id"]]
    pairs = ranked.merge(rnd, on=["pair", "seed"], suffixes=("_ranked", "_random"))
    pairs = pairs.rename(columns={"value_ranked": f"{metric}_ranked", "value_random": f"{metric}_random"})
    pairs["advantage"] = pairs[f"{metric}_ranked"] - pairs[f"{metric}_random"]
    if per_seed:
        return pairs.drop(columns="pair")
    groups = pairs.groupby(["pair", "ranking"], sort=False)     # each ranking of a recipe is its own row
    head = groups[["model", "method", "requested_sparsity"]].first()
    head["n"], head["seeds"] = groups.size(), groups["seed"].agg(_seeds_text)
    stats = _mean_std(groups, [f"{metric}_ranked", f"{metric}_random", "advantage"])
    out = head.join(stats).reset_index(level="ranking").reset_index(drop=True)
    return out[["model", "method", "ranking", "requested_sparsity", "n", "seeds", *stats.columns]]


def final_answers(report: dict[str, Any] | None) -> np.ndarray | None:
    """Which test samples the run's final variant got right (None: no labels, or a run from before they were
    kept in report.json)."""
    if not report:
        return None
    final = _final(report)["measurement"]
    text = final.get("answers")
    return unpack_answers(text, final["eval_samples"]) if text else None


CLASS_LIMIT = 20   # classes shown per chart: the ones whose accuracy moved most


def class_frame(df: pd.DataFrame, reports: dict[int, dict], limit: int = CLASS_LIMIT) -> pd.DataFrame:
    """Per run and class, the final variant's right answers against its own baseline's: `change` in samples
    and `change_pt` in points of that class. Only the `limit` classes whose answers moved most over all runs
    (empty when no run kept per-class counts: no labels, or an older version)."""
    rows = []
    for row in df.to_dict("records"):
        report = reports.get(row["id"])
        if not report:
            continue
        final = _final(report)["measurement"]
        before = {c: right for c, _, right in report["baseline"]["measurement"].get("classes", [])}
        for c, samples, right in final.get("classes", []):
            if c in before:
                rows.append({"id": row["id"], "label": row["label"], "class": c, "samples": samples,
                             "baseline_right": before[c], "right": right, "change": right - before[c],
                             "change_pt": 100 * (right - before[c]) / samples})
    frame = pd.DataFrame(rows, columns=["id", "label", "class", "samples", "baseline_right", "right", "change",
                                        "change_pt"])
    moved = frame.groupby("class")["change"].agg(lambda c: c.abs().sum()).sort_values(ascending=False, kind="stable")
    return frame[frame["class"].isin(moved.index[:limit])].reset_index(drop=True)


def versus_frame(df: pd.DataFrame, reports: dict[int, dict], reference: int) -> pd.DataFrame:
    """Every other run against run `reference`, sample by sample on the same test samples: the samples the
    reference got right and the run wrong (`went_wrong`) and the reverse, the exact McNemar p and its verdict.
    Runs that cannot pair say why in `note` (other data, answers not recorded)."""
    by_id = df.set_index("id")
    ref, ref_answers = by_id.loc[reference], final_answers(reports.get(reference))
    rows = []
    for run_id, row in by_id.drop(index=reference).iterrows():
        out = {"id": run_id, "label": row["label"], "accuracy": row.get("accuracy"),
               "vs reference (pt)": 100 * (row.get("accuracy", np.nan) - ref.get("accuracy", np.nan)), "note": ""}
        answers = final_answers(reports.get(run_id))
        if row.get("data") != ref.get("data"):
            out["note"] = f"scored on {row.get('data')}, the reference on {ref.get('data')}: no pairs"
        elif answers is None or ref_answers is None:
            out["note"] = "per-sample answers not recorded (no labels, or a run from an older version)"
        elif len(answers) != len(ref_answers):
            out["note"] = f"{len(answers)} test samples vs the reference's {len(ref_answers)}"
        else:
            change = changes(ref_answers, answers)
            out.update(went_wrong=change.worse, went_right=change.better, p_value=change.p_value,
                       verdict=change.verdict)
        rows.append(out)
    columns = ["id", "label", "accuracy", "vs reference (pt)", "went_wrong", "went_right", "p_value", "verdict", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


# --- what to show first ------------------------------------------------------------------------

def default_selection(store: Store, model: str | None = None, limit: int = 4) -> list[int]:
    """Run ids Compare opens with: the latest sweep's succeeded runs when the newest finished run belongs
    to one, else the last `limit` succeeded runs of `model` (the current model), else of any model."""
    done = store.list(status="succeeded", limit=200)
    if not done:
        return []
    newest = done[0]
    if newest.sweep_id:
        return sorted(r.id for r in store.list(status="succeeded", sweep_id=newest.sweep_id, limit=10_000))
    same = [r for r in done if model and _model_label(r.spec) == model] or done
    return sorted(r.id for r in same[:limit])


# --- why sparse is not fast (the Learn page) ---------------------------------------------------

def dense_matmul_times(sparsities: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99), shape: tuple[int, int] = (512, 512),
                       batch: int = 32, repeats: int = 30, seed: int = 0) -> list[dict[str, float]]:
    """Time a dense matrix multiply whose weight has each of `sparsities` zeros: the kernel does every
    multiply-add anyway, so the time does not depend on how many weights are zero. The sparsities take
    turns call by call (a warm-up round first), so a noisy neighbour or a cold cache hits all alike;
    the median of `repeats` single-threaded calls each."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, shape[0])).astype(np.float32)
    weights = []
    for sparsity in sparsities:
        w = rng.standard_normal(shape).astype(np.float32)
        w[rng.random(shape) < sparsity] = 0.0
        weights.append(w)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    times: list[list[float]] = [[] for _ in sparsities]
    with threadpool_limits(limits=1):   # one thread, like the workbench's latency numbers
        for round_ in range(repeats + 3):
            for i, w in enumerate(weights):
                start = time.perf_counter()
                x @ w
                if round_ >= 3:
                    times[i].append((time.perf_counter() - start) * 1000)
    return [{"sparsity": s, "median_ms": float(np.median(t)), "mult_adds": batch * shape[0] * shape[1],
             "useful_mult_adds": int(batch * np.count_nonzero(w))} for s, t, w in zip(sparsities, times, weights,
                                                                                       strict=True)]


def pruned_latency_frame(df: pd.DataFrame, batch: int = 1) -> pd.DataFrame:
    """Measured runs that only pruned (no quantization): sparsity vs ORT latency and its speedup."""
    col = f"ort_ms@{batch}"
    if df.empty or col not in df:
        return pd.DataFrame(columns=["label", "sparsity", col, f"base_{col}", f"speedup@{batch}"])
    pruned = df[(df["setting_sparsity"] > 0) & df["quant_method"].isna()]
    cols = [c for c in ["label", "model", "sparsity", col, f"base_{col}", f"speedup@{batch}",
                        f"claim:latency @ batch {batch}"] if c in pruned]
    return pruned[cols].reset_index(drop=True)
