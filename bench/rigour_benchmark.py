"""Reporting rigour on digits-mlp and digits-cnn: magnitude vs random global pruning at 50/80/90% with a
short recovery fine-tune, over seeds 0, 1, 2 — mean ± std accuracy, the magnitude advantage, requested vs
achieved sparsity — plus the "why isn't it faster?" diagnosis of three representative variants. Writes
the "rigour" section of BENCHMARKS.md.

The grid runs through the job queue (a throwaway WORKBENCH_HOME) and is read back with
workbench.compare (`runs_frame`, `seed_summary`, `random_baseline_frame`), so the tables are what the
Compare page computes. Each run measures its own baseline; ratios are taken inside one run.

    python bench/rigour_benchmark.py [--quick] [--out FILE]    # ~12 min on 2 busy vCPUs; --quick: one model, 2 seeds
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

import numpy as np
import pandas as pd
import torch
from sections import write_section

MODELS = ("digits-mlp", "digits-cnn")
SPARSITIES = (0.5, 0.8, 0.9)
SEEDS = (0, 1, 2)
RECOVERY = {"epochs": 5, "lr": 0.01, "label_smoothing": 0.1}   # short on purpose: the gap it leaves is the point
MEASURE = {"batch_sizes": [1, 256], "threads": 1, "warmup": 5, "repeats": 50, "min_time_s": 0.1,
           "torch_eager": False}
DIAG_MEASURE = {"batch_sizes": [1, 256], "threads": 1, "warmup": 20, "repeats": 300, "min_time_s": 0.5,
                "torch_eager": False}
DIAGNOSED = {   # name -> (model, stages): the three representative variants
    "digits-mlp, 90% global magnitude + recovery, fp32": (
        "digits-mlp", [{"prune": {"sparsity": 0.9}}, {"finetune": RECOVERY}]),
    "digits-cnn, static int8": ("digits-cnn", [{"quantize": {"method": "static"}}]),
    "digits-mlp, 4-bit weight-only (MatMulNBits)": (
        "digits-mlp", [{"quantize": {"method": "weight_only", "weight_bits": 4}}]),
}


def seeded(model: str, seed: int) -> dict:
    """The base recipe with every seed set (run, prune, fine-tune), until a `seed` sweep axis does it."""
    return {"name": f"{model} seed {seed}", "model": model, "seed": seed, "measure": MEASURE, "stages": [
        {"prune": {"sparsity": 0.5, "scope": "global", "seed": seed}}, {"finetune": {**RECOVERY, "seed": seed}}]}


def run_grid(models: tuple[str, ...], seeds: tuple[int, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model x seed x {magnitude, random} x sparsity through the queue; returns (runs frame after
    recovery, the same rows with the one-shot accuracy before recovery in `accuracy`)."""
    from workbench import compare, jobs
    from workbench.specs import RunSpec
    from workbench.store import Store

    store = Store(Path(os.environ["WORKBENCH_HOME"]))
    for model in models:
        for seed in seeds:
            jobs.submit_sweep(store, RunSpec.from_dict(seeded(model, seed)),
                              {"prune.method": ["magnitude", "random"], "sparsity": list(SPARSITIES)})
    started = time.perf_counter()
    while (run := store.claim("rigour")) is not None:
        status = jobs.execute(store, run.id)
        print(f"  run {run.id}: {run.name} {status} ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)
    runs = store.list(status="succeeded", limit=10_000)
    df = compare.runs_frame(store, runs)
    oneshot = df.assign(accuracy=[compare.load_report(store, i)["variants"][0]["measurement"]["metrics"]["accuracy"]
                                  for i in df["id"]])
    return df, oneshot


def diagnose_variants() -> dict[str, str]:
    """name -> the diagnosis text of its final variant, measured with DIAG_MEASURE."""
    from workbench.diagnosis import diagnose, render_text
    from workbench.pipeline import run_pipeline
    from workbench.specs import RunSpec

    out = {}
    for name, (model, stages) in DIAGNOSED.items():
        print(f"diagnosis: {name}", file=sys.stderr, flush=True)
        spec = RunSpec.from_dict({"model": model, "measure": DIAG_MEASURE, "stages": stages})
        with tempfile.TemporaryDirectory() as tmp:
            report = run_pipeline(spec, out_dir=tmp).to_dict()
            out[name] = render_text(diagnose(report, model_path=Path(tmp) / "model.onnx"), width=110)
    return out


# --- rendering ---------------------------------------------------------------------------------

def pm(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    return f"{mean * scale:.{digits}f}" + ("" if np.isnan(std) else f" ± {std * scale:.{digits}f}")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def seed_table(df: pd.DataFrame) -> list[str]:
    from workbench.compare import seed_summary

    s = seed_summary(df).sort_values(["model", "requested_sparsity", "prune_method"])
    rows = [[r["model"], f"{r['requested_sparsity']:.0%}", r["prune_method"], f"{r['n']} ({r['seeds']})",
             pm(r["accuracy_mean"], r["accuracy_std"], digits=4), pm(r["d_accuracy_mean"], r["d_accuracy_std"], 100),
             f"{r['requested_sparsity']:.2%} → {r['sparsity_mean']:.4%}", f"{r['gzip_x_mean']:.2f}",
             f"{r['min_storage_x_mean']:.2f}", pm(r["speedup@1_mean"], r["speedup@1_std"]),
             pm(r["speedup@256_mean"], r["speedup@256_std"])] for _, r in s.iterrows()]
    return table(["model", "sparsity", "method", "n (seeds)", "accuracy", "Δ acc (pt)", "asked → got",
                  "gzip ×", "min-storage ×", "speedup @1", "speedup @256"], rows)


def advantage_table(df: pd.DataFrame, oneshot: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    from workbench.compare import random_baseline_frame

    after, before = random_baseline_frame(df), random_baseline_frame(oneshot)
    both = after.merge(before, on=["model", "requested_sparsity"], suffixes=("", "_oneshot"))
    both = both.sort_values(["model", "requested_sparsity"])
    rows = [[r["model"], f"{r['requested_sparsity']:.0%}", str(r["n"]),
             pm(r["accuracy_ranked_mean_oneshot"], r["accuracy_ranked_std_oneshot"], 100, 1),
             pm(r["accuracy_random_mean_oneshot"], r["accuracy_random_std_oneshot"], 100, 1),
             pm(r["advantage_mean_oneshot"], r["advantage_std_oneshot"], 100, 1),
             pm(r["accuracy_ranked_mean"], r["accuracy_ranked_std"], 100),
             pm(r["accuracy_random_mean"], r["accuracy_random_std"], 100),
             pm(r["advantage_mean"], r["advantage_std"], 100)] for _, r in both.iterrows()]
    header = ["model", "sparsity", "pairs", "one-shot magnitude (%)", "one-shot random (%)", "advantage (pt)",
              "recovered magnitude (%)", "recovered random (%)", "advantage (pt)"]
    return table(header, rows), both


def readings(df: pd.DataFrame, both: pd.DataFrame) -> list[str]:
    """The plain reading of the tables, written from the numbers."""
    lines = []
    for _, r in both.iterrows():
        gap, spread = r["advantage_mean"], r["advantage_std"]
        clear = abs(gap) > spread if not np.isnan(spread) else abs(gap) > 0
        lines.append(f"- {r['model']} {r['requested_sparsity']:.0%}: one-shot, magnitude keeps "
                     f"{100 * r['advantage_mean_oneshot']:+.1f} pt over random; after {RECOVERY['epochs']} recovery "
                     f"epochs the advantage is {100 * gap:+.2f} ± {100 * spread:.2f} pt over {r['n']} seed pairs "
                     f"({'larger than' if clear else 'within'} its seed-to-seed spread).")
    off = (df["sparsity"] - df["requested_sparsity"]).abs()
    worst = df.loc[off.idxmax()]
    lines.append(f"- Requested vs achieved sparsity: largest gap {100 * off.max():.4f} pt (asked "
                 f"{worst['requested_sparsity']:.0%}, got {worst['sparsity']:.4%} on {worst['model']}): a global "
                 "threshold zeroes round(sparsity × weights) values, counted over the exported model's weights.")
    return lines


def render(df: pd.DataFrame, oneshot: pd.DataFrame, diagnoses: dict[str, str], env: dict, seconds: float) -> str:
    v = env["versions"]
    base = df.groupby("model")["base_accuracy"].first()
    adv, both = advantage_table(df, oneshot)
    lines = [
        "## Rigour: seeds, a random-pruning baseline, requested vs achieved (digits-mlp, digits-cnn)",
        "",
        f"Generated by `python bench/rigour_benchmark.py` on {datetime.date.today()} in {seconds / 60:.1f} min. "
        f"CPU: {env['cpu_model']} ({env['logical_cores']} logical cores, shared with other work). onnxruntime "
        f"{v['onnxruntime']}, torch {v['torch']}; {MEASURE['threads']} thread.",
        "",
        f"Each run: global unstructured pruning (magnitude or random scores) to the sparsity, then recovery "
        f"fine-tuning ({RECOVERY['epochs']} epochs, Adam lr {RECOVERY['lr']} cosine, label smoothing "
        f"{RECOVERY['label_smoothing']}); seeds {', '.join(map(str, sorted(df['seed'].unique())))} set the "
        "random scores and the fine-tuning shuffle (RunSpec, prune and fine-tune seeds alike). Baseline accuracy "
        + ", ".join(f"{m} {a:.4f}" for m, a in base.items()) + " on the 360 test samples (one sample = 0.28 pt). "
        "± is the sample standard deviation over seeds (n − 1). `asked → got` is the requested sparsity and the "
        "measured zero fraction of the exported weights (mean over seeds); size ratios are against the baseline "
        "file; speedups are ONNX Runtime medians (short timing: batch 1 and 256, ≥ 0.1 s each) — pruned weights "
        "are stored densely, so ~1.0 is the expected reading.",
        "",
        *seed_table(df),
        "",
        "### Magnitude vs random (same recipe, same seed)",
        "",
        "Accuracy in %, advantage = magnitude − random in points, mean ± std over the seed pairs. One-shot = the "
        "pruned model before recovery (the first variant of the same run).",
        "",
        *adv,
        "",
        *readings(df, both),
        "",
        "### Why isn't it faster? Diagnosis of three representative variants",
        "",
        "Printed by `workbench.diagnosis.render_text(diagnose(report, model_path=...))` for runs measured with "
        f"batch sizes {DIAG_MEASURE['batch_sizes']}, ≥ {DIAG_MEASURE['min_time_s']} s of calls per batch size.",
        "",
    ]
    for name, text in diagnoses.items():
        lines += [f"**{name}**", "", "```text", text, "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits-mlp only, seeds 0 and 1")
    parser.add_argument("--out", type=Path, default=None, help="write the section here instead of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    from workbench.environment import environment

    with tempfile.TemporaryDirectory() as home:
        os.environ["WORKBENCH_HOME"] = home
        df, oneshot = run_grid(MODELS[:1] if args.quick else MODELS, SEEDS[:2] if args.quick else SEEDS)
        diagnoses = diagnose_variants()
    text = render(df, oneshot, diagnoses, environment(MEASURE["threads"]), time.perf_counter() - started)
    print(text)
    write_section("rigour", text, *([args.out] if args.out else []))
    print(f"wrote the rigour section of {args.out or 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
