"""Quantization-aware training and low-rank factorization on digits-mlp and digits-cnn: what does each buy
in accuracy, file size and ONNX Runtime latency? Writes the "qat" and "lowrank" sections of BENCHMARKS.md.

Every row is one `run_pipeline` call, so its ratios are against the baseline measured in that same call
(same eval set, batch sizes and threads). Every candidate is kept.

- qat: at 4, 3 and 2 bits, post-training rounding (the "fake" method: simulated, float file; and, at 4 and
  2 bits, weight-only MatMulNBits) against the qat stage with 0 epochs (rounding with its clipping
  scales, stored as integers) and with QAT_EPOCHS epochs; at 4 bits also QAT with int8 activations.
- lowrank: an energy and rank sweep; each pipeline is [lowrank, finetune], so the factorized model is
  measured before and after a short fine-tune in the same run.

    python bench/qat_lowrank_benchmark.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
from sections import cell, write_section

from workbench.environment import environment
from workbench.errors import WorkbenchError
from workbench.pipeline import run_pipeline
from workbench.qat import ort_kernels
from workbench.report import Report, VariantResult
from workbench.specs import RunSpec
from workbench.summary import summarize_onnx

MODELS = ("digits-mlp", "digits-cnn")
MEASURE = {"batch_sizes": [1, 256], "threads": 1, "warmup": 20, "repeats": 300, "min_time_s": 0.5,
           "torch_eager": False}
QAT_EPOCHS, QAT_LR = 10, 3e-4
TUNE = {"epochs": 5, "lr": 1e-3}
BITS = (4, 3, 2)
SWEEP = {"digits-mlp": [{"energy": e} for e in (0.99, 0.95, 0.9, 0.8, 0.7)] + [{"rank": r} for r in (32, 16, 8)],
         "digits-cnn": [{"energy": e} for e in (0.95, 0.9, 0.8, 0.7, 0.5)] + [{"rank": r} for r in (32, 16)]}


PTQ, ZERO, QAT, QAT_ACT = ("PTQ fake-quant (simulated)", "qat, 0 epochs (rounding only)", f"QAT {QAT_EPOCHS} epochs",
                           f"QAT {QAT_EPOCHS} epochs + int8 activations")


def qat_candidates(bits: int) -> dict[str, dict]:
    rows = {PTQ: {"quantize": {"method": "fake", "weight_bits": bits, "per_channel": True}}}
    if bits in (4, 2):
        rows["PTQ weight-only MatMulNBits"] = {"quantize": {"method": "weight_only", "weight_bits": bits}}
    rows[ZERO] = {"qat": {"weight_bits": bits, "epochs": 0}}
    rows[QAT] = {"qat": {"weight_bits": bits, "epochs": QAT_EPOCHS, "lr": QAT_LR}}
    if bits == 4:
        rows[QAT_ACT] = {"qat": {"weight_bits": bits, "activation_bits": 8, "epochs": QAT_EPOCHS, "lr": QAT_LR}}
    return rows


def run(model: str, stages: list[dict]) -> tuple[Report, onnx.ModelProto]:
    spec = RunSpec.from_dict({"model": model, "measure": MEASURE, "stages": stages})
    with tempfile.TemporaryDirectory() as tmp:
        report = run_pipeline(spec, out_dir=tmp)
        return report, onnx.load(str(Path(tmp) / "model.onnx"))


def kernels(model: onnx.ModelProto) -> str:
    """The compute ops ONNX Runtime runs after its graph optimizations (and the per-call dequantizations)."""
    ops = ort_kernels(model)
    shown = {op: n for op, n in ops.items()
             if any(k in op for k in ("Conv", "Gemm", "MatMul")) or op == "DequantizeLinear"}
    return ", ".join(f"{n} {op}" for op, n in sorted(shown.items()))


def latency(out: dict, base: VariantResult, var: VariantResult) -> None:
    for s in var.measurement.latency:
        ref = base.measurement.latency_at(s.batch_size)
        out[f"ms @{s.batch_size}"] = s.median_ms
        out[f"speedup @{s.batch_size}"] = ref.median_ms / s.median_ms


def qat_row(model: str, bits: int, name: str, report: Report, final: onnx.ModelProto) -> dict:
    base, var = report.baseline, report.final
    b, v = base.measurement, var.measurement
    out = {"model": model, "bits": bits, "variant": name, "accuracy": v.metrics["accuracy"],
           "Δ acc (pt)": 100 * (v.metrics["accuracy"] - b.metrics["accuracy"]),
           "file KB": v.size.file_bytes / 1024, "file ×": b.size.file_bytes / v.size.file_bytes,
           "min storage ×": b.size.file_bytes / v.size.min_storage_bytes, "stored bits": v.size.bits_per_weight}
    latency(out, base, var)
    out["ORT kernels"] = kernels(final)
    return out


def _setting(setting: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items())


def lowrank_row(model: str, setting: dict, report: Report, final: onnx.ModelProto, base_macs: int | None) -> dict:
    base, factorized, tuned = report.baseline, report.variants[0], report.variants[1]
    b, f = base.measurement, factorized.measurement
    macs = summarize_onnx(final, "variant").total_macs
    macs_ratio = base_macs / macs if macs and base_macs else float("nan")
    out = {"model": model, "setting": _setting(setting),
           "ranks": " ".join(f"{r['rank']}/{r['full_rank']}" for r in factorized.history),
           "params": f.size.params, "params ×": b.size.params / f.size.params,
           "file ×": b.size.file_bytes / f.size.file_bytes, "MACs ×": macs_ratio}
    latency(out, base, factorized)
    out["Δ acc, no FT (pt)"] = 100 * (f.metrics["accuracy"] - b.metrics["accuracy"])
    out["Δ acc, FT (pt)"] = 100 * (tuned.measurement.metrics["accuracy"] - b.metrics["accuracy"])
    return out


def table(rows: list[dict]) -> list[str]:
    keys = list(max(rows, key=len))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(cell(k, r.get(k, "")) for k in keys) + " |" for r in rows]


def header(script_minutes: float, env: dict, load: tuple[float, float]) -> str:
    v = env["versions"]
    return (f"Generated by `python bench/qat_lowrank_benchmark.py` on {datetime.date.today()} "
            f"(whole script {script_minutes:.1f} min). CPU: {env['cpu_model']} ({env['logical_cores']} logical "
            f"cores; 1-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at the end: other jobs "
            "shared the machine, so latency ratios carry more noise than the CPU alone would give). "
            f"onnxruntime {v['onnxruntime']}, torch {v['torch']}; {MEASURE['threads']} thread; latency = "
            f"median of up to {MEASURE['repeats']} calls after {MEASURE['warmup']} warm-ups and at least "
            f"{MEASURE['min_time_s']} s of calls. Accuracy with ONNX Runtime on the 360-sample digits test split "
            "(one sample is 0.28 pt); every ratio is baseline ÷ variant against the baseline of the same run.")


def render_qat(rows: list[dict], head: str) -> str:
    lines = ["## Quantization-aware training vs post-training rounding (digits-mlp, digits-cnn)", "", head, "",
             f"QAT = the `qat` stage: {QAT_EPOCHS} epochs, Adam lr {QAT_LR} cosine, per-channel symmetric weights "
             "with clipping scales, straight-through estimator; `qat, 0 epochs` is the same rounding without "
             "training. PTQ fake-quant rounds per channel at max|w| and keeps float weights (simulated, the file "
             "does not shrink); weight-only MatMulNBits is a real 4/2-bit kernel (block 32). `stored bits` are the "
             "bits per weight in the file (INT4 holds 3- and 2-bit values); `min storage ×` is the estimate at "
             "those stored bits. `ORT kernels` are the compute ops of ONNX Runtime's optimized graph. The PTQ "
             "fake-quant rows run exactly the fp32 kernels: their speedups show this run's noise.", ""]
    for model in MODELS:
        lines += [f"### {model}", "", *table([r for r in rows if r["model"] == model]), ""]
    lines += ["### Findings (qat)", "", *qat_findings(rows), ""]
    return "\n".join(lines)


def _pick(rows: list[dict], model: str, bits: int, name: str) -> dict:
    return next(r for r in rows if r["model"] == model and r["bits"] == bits and r["variant"] == name)


def qat_findings(rows: list[dict]) -> list[str]:
    notes = []
    for model in MODELS:
        parts = []
        for bits in sorted({r["bits"] for r in rows}, reverse=True):
            ptq, zero, qat = (_pick(rows, model, bits, name) for name in (PTQ, ZERO, QAT))
            parts.append(f"{bits} bits: PTQ {ptq['Δ acc (pt)']:+.2f} pt, clipping scales alone "
                         f"{zero['Δ acc (pt)']:+.2f} pt, QAT {qat['Δ acc (pt)']:+.2f} pt")
        notes.append(f"- {model} accuracy change vs fp32: " + "; ".join(parts) + ".")
        gains = [(bits, _pick(rows, model, bits, QAT)["accuracy"] - _pick(rows, model, bits, PTQ)["accuracy"])
                 for bits in sorted({r["bits"] for r in rows}, reverse=True)]
        notes.append(f"- {model}: QAT minus PTQ fake-quant accuracy: " + "; ".join(
            f"{bits} bits {100 * gain:+.2f} pt" + (" (within two test samples)" if abs(gain) < 0.006 else "")
            for bits, gain in gains) + ".")
        qat4, act = _pick(rows, model, 4, QAT), _pick(rows, model, 4, QAT_ACT)
        notes.append(f"- {model} file and speed: 4-bit QAT (INT4 + DequantizeLinear) is {qat4['file ×']:.1f}x smaller "
                     f"and runs at {qat4['speedup @1']:.2f}x / {qat4['speedup @256']:.2f}x the fp32 speed (batch 1 / "
                     f"256) with {qat4['ORT kernels']}; with int8 activations it is {act['file ×']:.1f}x smaller "
                     f"(int8 containers) and runs at {act['speedup @1']:.2f}x / {act['speedup @256']:.2f}x with "
                     f"{act['ORT kernels']}.")
    notes.append("- Weight-only QDQ buys file size, not speed: ONNX Runtime dequantizes the INT4 weights on every "
                 "call before the float kernel (and a Conv fed by a DequantizeLinear loses the NCHWc layout that "
                 "needs constant weights). Integer kernels need int8 activations and int8 weights.")
    return notes


def render_lowrank(rows: list[dict], head: str) -> str:
    lines = ["## Low-rank factorization (truncated SVD) of Linear/Conv layers (digits-mlp, digits-cnn)", "", head, "",
             "Each row: `lowrank` (energy = share of squared singular values kept per layer, or a fixed rank; the "
             f"classifier kept whole) measured as is, then after a fine-tune ({TUNE['epochs']} epochs, Adam lr "
             f"{TUNE['lr']} cosine) in the same run. `ranks` are kept/full per factorized layer; `params` are the "
             "weights of the exported graph's Conv/Gemm/MatMul ops (biases excluded); MACs are its multiply-adds "
             "per sample; latency is of the factorized model (fine-tuning does not change it).",
             ""]
    for model in MODELS:
        lines += [f"### {model}", "", *table([r for r in rows if r["model"] == model]), ""]
    lines += ["### Findings (lowrank)", "", *lowrank_findings(rows), ""]
    return "\n".join(lines)


def lowrank_findings(rows: list[dict]) -> list[str]:
    notes = []
    rows = [r for r in rows if "params" in r]   # settings that factorized something
    for model in MODELS:
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            notes.append(f"- {model}: no setting factorized any layer.")
            continue
        good = [r for r in mine if r["Δ acc, FT (pt)"] >= -1.0]
        best = max(good, key=lambda r: r["params ×"]) if good else None
        tight = next((r for r in mine if r["setting"] == "energy 0.9"), None)
        text = (f"- {model}: the most compact setting within 1 pt after fine-tuning is {best['setting']} "
                f"({best['params ×']:.2f}x fewer params, file {best['file ×']:.2f}x, MACs {best['MACs ×']:.2f}x, "
                f"ORT {best['speedup @1']:.2f}x / {best['speedup @256']:.2f}x at batch 1 / 256, "
                f"{best['Δ acc, no FT (pt)']:+.2f} pt before and {best['Δ acc, FT (pt)']:+.2f} pt after the "
                "fine-tune)" if best else f"- {model}: no setting stays within 1 pt even after fine-tuning")
        if tight and "params" in tight:
            text += (f"; keeping 90% of the energy needs ranks {tight['ranks']}, i.e. "
                     f"{tight['params ×']:.2f}x fewer params")
        one, many = [r["speedup @1"] for r in mine], [r["speedup @256"] for r in mine]
        notes.append(text + f". Across its factorized settings ORT runs at {min(one):.2f}-{max(one):.2f}x the fp32 "
                     f"speed at batch 1 and {min(many):.2f}-{max(many):.2f}x at batch 256 (each factorized layer "
                     "is two ops: fewer multiply-adds, one more kernel call).")
    if not rows:
        return notes
    worst = min(rows, key=lambda r: r["Δ acc, no FT (pt)"])
    notes.append(f"- Without fine-tuning, truncation costs up to {-worst['Δ acc, no FT (pt)']:.1f} pt "
                 f"({worst['model']}, {worst['setting']}); after {TUNE['epochs']} epochs that row is at "
                 f"{worst['Δ acc, FT (pt)']:+.2f} pt.")
    return notes


def base_macs(model: str) -> int | None:
    from workbench.export import export_onnx
    from workbench.zoo import load_sample

    return summarize_onnx(export_onnx(load_sample(model), (torch.zeros(2, 1, 8, 8),)), model).total_macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 and 4 bits only, two lowrank settings per model")
    parser.add_argument("--out", type=Path, default=None, help="write into this file instead of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started, load = time.perf_counter(), os.getloadavg()[0]
    qat_rows, lowrank_rows = [], []
    for model in MODELS:
        for bits in BITS:
            if args.quick and bits == 3:
                continue
            for name, stage in qat_candidates(bits).items():
                print(f"{model}: {bits} bits, {name}", file=sys.stderr, flush=True)
                report, final = run(model, [stage])
                qat_rows.append(qat_row(model, bits, name, report, final))
        macs = base_macs(model)
        for setting in SWEEP[model][:2 if args.quick else None]:
            print(f"{model}: lowrank {setting}", file=sys.stderr, flush=True)
            try:
                report, final = run(model, [{"lowrank": setting}, {"finetune": TUNE}])
            except WorkbenchError as exc:  # e.g. no layer would save weights at this energy: kept as a row
                why = ("none: no layer saves weights at this setting" if "saves no weights" in str(exc)
                       else str(exc))
                lowrank_rows.append({"model": model, "setting": _setting(setting), "ranks": why})
                continue
            lowrank_rows.append(lowrank_row(model, setting, report, final, macs))
    head = header((time.perf_counter() - started) / 60, environment(MEASURE["threads"]), (load, os.getloadavg()[0]))
    for name, text in (("qat", render_qat(qat_rows, head)), ("lowrank", render_lowrank(lowrank_rows, head))):
        print(text)
        write_section(name, text, *([args.out] if args.out else []))
    print(f"wrote the qat and lowrank sections of {args.out or 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
