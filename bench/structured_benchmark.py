"""Structured channel pruning on digits-cnn: does removing channels buy real latency, and how much of the
multiply-add reduction turns into speed? Writes the "structured" section of BENCHMARKS.md.

Each row is one `run_pipeline` call (structured pruning, then recovery fine-tuning), so its ratios are
taken against the baseline measured in that same call, under the same eval set, batch sizes and threads.

    python bench/structured_benchmark.py [--quick] [--out FILE]    # default: rewrites its BENCHMARKS.md section
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

import onnx
from sections import cell, write_section

import workbench.structured  # noqa: F401  registers the "structured" stage
from workbench.pipeline import run_pipeline
from workbench.report import Report
from workbench.specs import RunSpec
from workbench.summary import summarize_onnx

MODEL = "digits-cnn"
MEASURE = {"batch_sizes": [1, 256], "threads": 1, "warmup": 20, "repeats": 300, "min_time_s": 0.5,
           "torch_eager": False}
SCALE = "ResNet-18 layout, 3×224×224"   # the same setting on a model whose convs are wide: random weights
SCALE_MEASURE = {**MEASURE, "batch_sizes": [1, 8], "warmup": 5, "repeats": 50}
SCALE_SAMPLES = 32
RECOVERY = {"epochs": 30, "lr": 0.01, "label_smoothing": 0.1}  # cosine schedule (the default)
ACCEPTANCE_RATIO = 0.5
UPLOAD = "50%, layer scope, ONNX upload"   # the first row's setting on the exported graph, converted to torch
CONFIGS = {  # the first row is the acceptance row
    "50%, layer scope": {"ratio": 0.5},
    "50%, global scope": {"ratio": 0.5, "scope": "global"},
    "50%, global scope, round_to 8": {"ratio": 0.5, "scope": "global", "round_to": 8},
    "70%, layer scope": {"ratio": 0.7},
    "70%, layer scope, round_to 8": {"ratio": 0.7, "round_to": 8},
}


def onnx_macs(path: Path) -> int:
    """Conv/Gemm multiply-adds per sample of the exported graph: what ONNX Runtime executes."""
    return summarize_onnx(onnx.load(str(path)), path.name).total_macs


def export_sample(path: Path) -> Path:
    """The sample as a user would upload it: exported to ONNX (BatchNorm folded into the convolutions)."""
    import torch

    from workbench.export import export_onnx
    from workbench.zoo import load_sample

    onnx.save(export_onnx(load_sample(MODEL), (torch.zeros(2, 1, 8, 8),)), str(path))
    return path


def baseline_macs() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return onnx_macs(export_sample(Path(tmp) / "baseline.onnx"))


def run_upload(base_macs: int) -> tuple[dict, Report]:
    """The acceptance row's setting on the exported graph: the run converts it to torch modules (onnx_torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_sample(Path(tmp) / f"{MODEL}.onnx")
        return run(UPLOAD, CONFIGS[next(iter(CONFIGS))], base_macs, {"path": str(path)})


def run(name: str, structured: dict, base_macs: int, model: str | dict = MODEL) -> tuple[dict, Report]:
    spec = RunSpec.from_dict({"name": name, "model": model, "measure": MEASURE,
                              "stages": [{"structured": structured}, {"finetune": RECOVERY}]})
    with tempfile.TemporaryDirectory() as tmp:
        report = run_pipeline(spec, out_dir=tmp)
        macs = onnx_macs(Path(tmp) / "model.onnx")
    return row(name, report, macs, base_macs), report


def row(name: str, report: Report, macs: int, base_macs: int) -> dict:
    base, final = report.baseline.measurement, report.final.measurement
    pruned = report.variants[0].history[0]
    convs = [str(r["after"][0]) for r in pruned["pruned_layers"] if r["op"].startswith("Conv")]
    out = {"variant": name, "channels": "/".join(convs), "accuracy": final.metrics["accuracy"],
           "Δ acc (pt)": 100 * (final.metrics["accuracy"] - base.metrics["accuracy"]),
           "params": pruned["params_after"], "file ×": base.size.file_bytes / final.size.file_bytes,
           "MACs": macs, "MACs ×": base_macs / macs}
    for s in final.latency:
        ref = base.latency_at(s.batch_size)
        out[f"ms @{s.batch_size}"] = s.median_ms
        out[f"base ms @{s.batch_size}"] = ref.median_ms
        out[f"speedup @{s.batch_size}"] = ref.median_ms / s.median_ms
        out[f"speedup ÷ MACs× @{s.batch_size}"] = out[f"speedup @{s.batch_size}"] / out["MACs ×"]
    return out


def run_at_scale() -> list[dict]:
    """Structured pruning (no recovery: random weights, no labels) of the ResNet-18 layout exported to ONNX,
    as a user would upload it: latency and MACs only, at batch 1 and 8 (batch 256 is 464 GMAC per call)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.architectures import ResNet18, random_init
    from workbench.export import export_onnx

    torch.manual_seed(0)
    module = random_init(ResNet18(classes=10)).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, data = Path(tmp) / "resnet18.onnx", Path(tmp) / "eval.npz"
        onnx.save(export_onnx(module, (torch.zeros(2, 3, 224, 224),)), str(path))
        np.savez(data, x=np.random.default_rng(0).standard_normal((SCALE_SAMPLES, 3, 224, 224), dtype=np.float32))
        base_macs = onnx_macs(path)
        for name, structured in (("50%, layer scope", {"ratio": 0.5}), ("70%, layer scope", {"ratio": 0.7}),
                                 ("70%, layer scope, round_to 8", {"ratio": 0.7, "round_to": 8})):
            print(f"{SCALE}: {name}", file=sys.stderr, flush=True)
            spec = RunSpec.from_dict({"name": name, "model": {"path": str(path)}, "data": {"path": str(data)},
                                      "measure": SCALE_MEASURE, "stages": [{"structured": structured}]})
            out = Path(tmp) / "out"
            report = run_pipeline(spec, out_dir=out)
            rows.append(scale_row(name, report, onnx_macs(out / "model.onnx"), base_macs))
    return rows


def scale_row(name: str, report: Report, macs: int, base_macs: int) -> dict:
    base, final = report.baseline.measurement, report.final.measurement
    pruned = report.variants[0].history[0]
    out = {"variant": name, "params": f"{pruned['params_before']:,} -> {pruned['params_after']:,}",
           "GMACs": f"{base_macs / 1e9:.2f} -> {macs / 1e9:.2f}", "MACs ×": base_macs / macs}
    for s in final.latency:
        ref = base.latency_at(s.batch_size)
        out[f"ms @{s.batch_size}"] = f"{ref.median_ms:.2f} -> {s.median_ms:.2f}"
        out[f"speedup @{s.batch_size}"] = ref.median_ms / s.median_ms
        out[f"speedup ÷ MACs× @{s.batch_size}"] = out[f"speedup @{s.batch_size}"] / out["MACs ×"]
    return out


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(cell(k, r[k]) for k in keys) + " |" for r in rows]


def scale_lines(rows: list[dict], digits_ratio: float) -> list[str]:
    if not rows:
        return []
    first = rows[0]
    return [
        f"### The same pruning at scale: {SCALE}",
        "",
        f"torchvision's ResNet-18 layout with random weights (BatchNorm folded on export), uploaded as ONNX, "
        f"converted and pruned; no recovery and no accuracy (random weights, {SCALE_SAMPLES} random inputs: "
        "latency and MACs only). Batch 1 and 8: at batch 256 one call is 464 GMAC. Same threads and timing as "
        "above; every ratio against the baseline of the same run.",
        "",
        *table(rows),
        "",
        f"- Here {first['variant']} turns {first['speedup ÷ MACs× @1']:.2f} of the MAC reduction into batch-1 "
        f"speed (digits-cnn above: {digits_ratio:.2f}): with 64-512 channels on 56×56 to 7×7 maps each call is "
        "milliseconds of arithmetic, so the per-call floor that caps the tiny sample vanishes.",
        *round_to_line(rows),
        "",
    ]


def round_to_line(rows: list[dict]) -> list[str]:
    by_name = {r["variant"]: r for r in rows}
    plain, aligned = by_name.get("70%, layer scope"), by_name.get("70%, layer scope, round_to 8")
    if not (plain and aligned):
        return []
    return [f"- At 70% the widths left are multiples of neither 8 nor 16, so part of every vector instruction "
            f"idles: {plain['speedup @1']:.2f}× faster for {plain['MACs ×']:.1f}× fewer MACs (ratio "
            f"{plain['speedup ÷ MACs× @1']:.2f}); `round_to: 8` gives {aligned['speedup @1']:.2f}× for "
            f"{aligned['MACs ×']:.1f}× (ratio {aligned['speedup ÷ MACs× @1']:.2f})."]


def render(rows: list[dict], main: Report, base_macs: int, env: dict, seconds: float,
           scale: list[dict] | None = None) -> str:
    v, first = env["versions"], rows[0]
    pruned = main.variants[0]
    base_acc = main.baseline.measurement.metrics["accuracy"]
    lines = [
        "## Structured pruning: channels physically removed (digits-cnn)",
        "",
        f"Generated by `python bench/structured_benchmark.py` on {datetime.date.today()} in {seconds / 60:.1f} min. "
        f"CPU: {env['cpu_model']} ({env['logical_cores']} logical cores). onnxruntime {v['onnxruntime']}, "
        f"torch {v['torch']}; {MEASURE['threads']} thread; latency = median of up to {MEASURE['repeats']} calls "
        f"after {MEASURE['warmup']} warm-ups and at least {MEASURE['min_time_s']} s of calls.",
        "",
        "Each row: `structured` (Torch-Pruning dependency graph, l1 channel importance unless noted; the "
        "classifier's outputs kept) then recovery fine-tuning "
        f"({RECOVERY['epochs']} epochs, Adam lr {RECOVERY['lr']} cosine, label smoothing "
        f"{RECOVERY['label_smoothing']}). Baseline accuracy {base_acc:.4f} (360 test samples; one sample is "
        f"0.28 pt), baseline {base_macs:,} MACs/sample. `ratio` removes that fraction of every coupled channel "
        "group, so a conv whose inputs and outputs both shrink by half keeps a quarter of its multiply-adds. "
        "MACs are the Conv/Gemm multiply-adds of the exported ONNX graph per sample; `speedup ÷ MACs×` is the "
        "share of the arithmetic reduction that became measured ORT speed (1.0 = all of it). Every ratio is "
        "against the baseline measured in the same run.",
        "",
        *table(rows),
        "",
        f"What was removed at {ACCEPTANCE_RATIO:.0%}: {pruned.notes[0]} (this count includes BatchNorm; the "
        "table counts the exported graph's Conv/Gemm only).",
        "",
        "### Acceptance checks (structured pruning)",
        "",
        f"- digits-cnn {ACCEPTANCE_RATIO:.0%} structured + recovery: accuracy drop {-first['Δ acc (pt)']:.2f} pt "
        "(goal ≤ 1).",
        f"- ORT latency: {first['speedup @1']:.2f}× faster at batch 1, {first['speedup @256']:.2f}× at batch 256 "
        "(goal ≥ 1.5× both).",
        f"- MACs {first['MACs ×']:.2f}× fewer; realized speedup ÷ MACs reduction {first['speedup ÷ MACs× @1']:.2f} "
        f"at batch 1, {first['speedup ÷ MACs× @256']:.2f} at batch 256 (goal ≥ 0.8).",
        "",
        *explain(rows),
        *scale_lines(scale or [], first["speedup ÷ MACs× @1"]),
    ]
    return "\n".join(lines) + "\n"


def explain(rows: list[dict]) -> list[str]:
    """The honest reading of the numbers, in words, written from the measured values."""
    first, notes = rows[0], []
    if first["speedup ÷ MACs× @1"] < 0.8:
        fastest = min(rows, key=lambda r: r["ms @1"])
        notes.append(
            f"- Batch 1 turns only {first['speedup ÷ MACs× @1']:.0%} of the MAC reduction into speed: one call takes "
            f"{first['ms @1'] * 1000:.0f} µs and even the fastest variant ({fastest['variant']}, "
            f"{fastest['MACs ×']:.1f}× fewer MACs) needs {fastest['ms @1'] * 1000:.0f} µs. That floor is per-call "
            "cost (session run, input/output handling, one kernel dispatch per op) that does not shrink with the "
            "channel count; at batch 256 the arithmetic dominates and the ratio is "
            f"{first['speedup ÷ MACs× @256']:.2f}.")
    by_name = {r["variant"]: r for r in rows}
    if UPLOAD in by_name:
        up = by_name[UPLOAD]
        notes.append(
            f"- {UPLOAD}: the same setting on the sample exported to ONNX (what a user uploads; BatchNorm folded into "
            "the convolutions), which the run converts to torch modules (`workbench.onnx_torch`, checked against "
            f"ONNX Runtime) to remove channels and fine-tune: channels {up['channels']}, accuracy "
            f"{up['accuracy']:.4f} ({up['Δ acc (pt)']:+.2f} pt), {up['speedup @1']:.2f}× faster at batch 1 and "
            f"{up['speedup @256']:.2f}× at batch 256 against the uploaded file (the torch sample: "
            f"{first['speedup @1']:.2f}× and {first['speedup @256']:.2f}×).")
    pairs = [(by_name[r["variant"].removesuffix(", round_to 8")], r) for r in rows
             if r["variant"].endswith(", round_to 8") and r["variant"].removesuffix(", round_to 8") in by_name]
    if pairs:
        text = "; ".join(f"{a['variant']}: channels {a['channels']}, {a['MACs ×']:.1f}× fewer MACs, "
                         f"{a['speedup @256']:.2f}× faster at batch 256 -> with round_to 8: {b['channels']}, "
                         f"{b['MACs ×']:.1f}×, {b['speedup @256']:.2f}×" for a, b in pairs)
        notes.append(f"- Channel counts matter as much as MACs ({text}). ONNX Runtime's CPU convolutions work on "
                     "blocks of channels, so a width that is not a multiple of the block leaves part of the "
                     "vector work idle; `round_to: 8` keeps the widths aligned.")
    return [*notes, ""] if notes else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 50%% acceptance row")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the section into this file instead of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    from workbench.environment import environment

    base_macs = baseline_macs()
    rows, reports = [], []
    for name, structured in list(CONFIGS.items())[:1 if args.quick else None]:
        print(f"{MODEL}: {name}", file=sys.stderr, flush=True)
        r, report = run(name, structured, base_macs)
        rows.append(r)
        reports.append(report)
    if not args.quick:
        print(f"{MODEL}: {UPLOAD}", file=sys.stderr, flush=True)
        rows.append(run_upload(base_macs)[0])
    scale = [] if args.quick else run_at_scale()
    text = render(rows, reports[0], base_macs, environment(MEASURE["threads"]), time.perf_counter() - started,
                  scale)
    print(text)
    if args.out is None:
        write_section("structured", text)
    else:
        write_section("structured", text, args.out)
    print(f"wrote the structured section of {args.out or 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
