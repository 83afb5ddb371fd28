"""App benchmarks: preview latency per sample model and per method, and page load times with 50 runs in the store.

1. Preview (slider change -> numbers ready): `workbench.preview.preview` exactly as the Compress page calls
   it (cached weights and test split; one-shot accuracy measured with torch), over a sweep of slider
   values -- every sparsity from 0 to 99 % in steps of 3 at 32 bits, then every bitwidth at 90 %.
   Goal: p95 <= 250 ms.
2. Page load: every page run inside app.py with Streamlit's AppTest against a data dir holding 50 finished runs
   (one real run, cloned with varied settings and numbers: report.json, model.onnx and recipe.yaml each),
   after one priming pass so Python imports are not counted. "first" = median of 3 new sessions with empty
   Streamlit caches; "repeat" = median of 3 new sessions with warm caches (what a second visitor sees).

    python bench/app_benchmarks.py [--models digits-mlp ...] [--repeats 3]

Prints a markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sections import write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGES = ["home", "model", "compress", "runs", "compare", "learn"]
ONNX_MODEL = "digits-cnn"   # also previewed as an ONNX upload (one-shot accuracy through ONNX Runtime)
FAST = {"batch_sizes": [1, 256], "warmup": 2, "repeats": 20, "threads": 1, "min_time_s": 0}


# --- preview -----------------------------------------------------------------------------------

def slider_values() -> list[tuple[float, int]]:
    return [(s / 100, 32) for s in range(0, 100, 3)] + [(0.9, b) for b in (32, 16, 8, 7, 6, 5, 4, 3, 2)]


def preview_latency(model: str, path: Path | None = None) -> dict:
    """Slider moves on `model` (a sample), or on the ONNX file at `path` (accuracy through ONNX Runtime)."""
    from workbench.models import load_model
    from workbench.pipeline import load_splits
    from workbench.preview import make_subject, model_weights, preview
    from workbench.specs import ModelRef, PruneSpec, RunSpec

    ref = ModelRef(path=str(path)) if path else ModelRef(sample=model)
    loaded = load_model(ref)
    weights, other = model_weights(loaded)
    test = load_splits(RunSpec(model=ref), loaded).test
    runnable = make_subject(loaded, test).runnable
    preview(weights, other, 0.5, 8, module=runnable, test=test)  # warm-up (first torch call)
    times = []
    for sparsity, bits in slider_values():
        start = time.perf_counter()
        preview(weights, other, sparsity, bits, spec=PruneSpec(sparsity=sparsity), module=runnable, test=test,
                baseline_file_bytes=loaded.file_bytes)
        times.append((time.perf_counter() - start) * 1000)
    params = sum(w.size for w in weights.values())
    return {"model": model, "weights": params, "calls": len(times), "p50": float(np.percentile(times, 50)),
            "p95": float(np.percentile(times, 95)), "max": max(times)}


def method_settings() -> list[tuple[str, dict]]:
    """One Compress setting per method (what a user drags), each previewed after a slider move."""
    return [("2:4 N:M", {"technique": "nm"}), ("structured 50%", {"technique": "structured", "ratio": 0.5}),
            ("student 0.5x", {"technique": "distill", "width": 0.5}),
            ("low-rank 80%", {"technique": "lowrank", "energy": 0.8}),
            ("90% + k=16", {"technique": "unstructured", "sparsity": 0.9, "clusters": 16}),
            ("90% + QAT 4-bit", {"technique": "unstructured", "sparsity": 0.9, "bits": 4, "qat": True}),
            ("80% wanda", {"technique": "unstructured", "sparsity": 0.8, "method": "wanda"}),
            ("channels 50% first + 65% + k=8", {"technique": "unstructured", "thin": 0.5, "sparsity": 0.65,
                                                "clusters": 8})]


def method_preview_latency(model: str, repeats: int = 10, path: Path | None = None) -> list[dict]:
    """`preview_settings` per method as ui.cache.preview_for calls it (subject, singular values, wanda's input
    RMS and, for an ONNX upload `path`, its conversion to torch modules cached)."""
    import dataclasses

    from workbench.activations import input_rms
    from workbench.models import load_model
    from workbench.onnx_torch import convert_loaded
    from workbench.pipeline import load_splits
    from workbench.presets import CompressSettings
    from workbench.preview import ACCURACY_PARAM_LIMIT, make_subject, preview_settings, svd_factors, with_layers
    from workbench.specs import ModelRef, RunSpec

    ref = ModelRef(sample=model) if path is None else ModelRef(path=str(path))
    loaded = load_model(ref)
    splits = load_splits(RunSpec(model=ref), loaded)
    subject = make_subject(loaded, splits.test)
    params = sum(w.size for w in subject.weights.values())
    factors = svd_factors(subject.weights, vectors=params <= ACCURACY_PARAM_LIMIT)
    factored = dataclasses.replace(subject, factors=factors)
    seeing = dataclasses.replace(subject, rms=input_rms(subject.runnable, splits.solving)[0])
    layered = subject
    if path is not None:   # structured and distill previews count on the conversion, as the app does
        conversion, typed, _ = convert_loaded(loaded, splits)
        layered = with_layers(subject, conversion.module, typed.test)
    rows = []
    for name, knobs in method_settings():
        settings = CompressSettings(**knobs)
        reshapes = knobs["technique"] in ("structured", "distill") or settings.thins_first
        target = factored if settings.technique == "lowrank" else layered if reshapes else \
            seeing if settings.method == "wanda" else subject
        preview_settings(settings, target)   # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            preview_settings(settings, target)
            times.append((time.perf_counter() - start) * 1000)
        rows.append({"model": model if path is None else f"{model} (its ONNX export, as an upload)", "method": name,
                     "p50": float(np.percentile(times, 50)),
                     "p95": float(np.percentile(times, 95))})
    return rows


def onnx_export(folder: Path) -> Path:
    """`ONNX_MODEL` exported to a file, as a user would upload it."""
    import onnx
    import torch

    from workbench.data import digits_splits
    from workbench.export import export_onnx
    from workbench.zoo import load_sample

    path = folder / f"{ONNX_MODEL}.onnx"
    example = (torch.from_numpy(digits_splits().test.inputs[0][:2]),)
    onnx.save(export_onnx(load_sample(ONNX_MODEL), example), str(path))
    return path


# --- 50 runs in a store ------------------------------------------------------------------------

def seed_run(home: Path) -> int:
    """One real, quickly measured run (digits-mlp, 50 % + static int8) to clone from."""
    from workbench import jobs
    from workbench.specs import RunSpec
    from workbench.store import Store

    store = Store(home)
    spec = RunSpec.from_dict({"name": "seed", "model": "digits-mlp", "measure": FAST,
                              "stages": [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "static"}}]})
    run = jobs.submit(store, spec)
    store.claim("bench")
    if jobs.execute(store, run.id) != "succeeded":
        raise SystemExit(f"the seed run failed: {store.get(run.id).error}")
    return run.id


def clone_runs(home: Path, seed: int, count: int = 50) -> None:
    """`count` finished runs made from the seed: five sweeps of 8 settings and 10 single runs."""
    from workbench.store import Store

    store = Store(home)
    seed_dir, seed_run_ = store.run_dir(seed), store.get(seed)
    report = json.loads((seed_dir / "report.json").read_text())
    rng = np.random.default_rng(0)
    settings = [(s, b) for s in (0.3, 0.5, 0.7, 0.9) for b in (8, 32)]
    made = 1
    while made < count:
        in_sweep = made <= 40
        sweep = f"sweep{made // 8}" if in_sweep else None
        sparsity, bits = settings[(made - 1) % len(settings)]
        spec = copy.deepcopy(seed_run_.spec)
        spec["stages"] = [{"prune": {**spec["stages"][0]["prune"], "sparsity": sparsity}}] + (
            [spec["stages"][1]] if bits == 8 else [])
        run = store.submit(spec, name=f"digits-mlp [sparsity={sparsity} bits={bits}]", sweep_id=sweep)
        store.claim("bench")
        fake = copy.deepcopy(report)
        fake["spec"] = spec
        final = fake["variants"][-1]["measurement"]
        final["metrics"]["accuracy"] = float(min(1.0, final["metrics"]["accuracy"] * (1 - sparsity / 3)
                                                 + rng.normal(0, 0.01)))
        final["size"]["gzip_bytes"] = int(final["size"]["gzip_bytes"] * (1.3 - sparsity))
        out = store.run_dir(run.id)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(fake))
        for name in ("model.onnx", "recipe.yaml", "log.txt"):
            shutil.copyfile(seed_dir / name, out / name)
        rows = copy.deepcopy(seed_run_.metrics["rows"])
        rows[-1]["accuracy"] = round(final["metrics"]["accuracy"], 4)
        store.finish(run.id, "succeeded", {"rows": rows, "final": rows[-1]})
        made += 1


# --- page loads --------------------------------------------------------------------------------

def load_time(page: str, query: dict | None = None) -> float:
    """Seconds for one script run of `page` inside the app (app.py: navigation, sidebar, the page), in a
    new session. Other pages are reached as a user does: the app opens on Home, then switches."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    if page != "home":
        at.run()
        at.switch_page(f"views/{page}.py")
    at.query_params.update(query or {})
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"page {page} raised: {at.exception[0].message}")
    if query and page == "compare":
        assert len(at.multiselect(key="compare_runs").value) == len(query["runs"].split(","))
    return elapsed


def _cold(page: str, query: dict | None) -> float:
    """One load of `page` with every Streamlit cache emptied first."""
    from ui import cache

    cache.clear()
    return load_time(page, query)


def page_loads(home: Path, repeats: int) -> list[dict]:

    os.environ["WORKBENCH_HOME"] = str(home)
    for page in PAGES:  # priming pass: imports and first-call costs of the libraries, not of the page
        load_time(page)
    every = {"runs": ",".join(str(i) for i in range(1, 51))}
    rows = []
    for page, query in [(p, None) for p in PAGES] + [("compare", every)]:
        first = statistics.median(_cold(page, query) for _ in range(repeats))   # one cold load alone is noisy
        repeat = statistics.median(load_time(page, query) for _ in range(repeats))
        rows.append({"page": page + (" (all 50 runs selected)" if query else ""), "first": first, "repeat": repeat})
    return rows


# --- report ------------------------------------------------------------------------------------

def markdown(previews: list[dict], methods: list[dict], pages: list[dict]) -> str:
    from workbench.environment import environment

    env = environment(1)
    lines = ["## App: preview latency and page loads", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu_model']} ({env['logical_cores']} logical cores), "
             f"Python {platform.python_version()}, `python bench/app_benchmarks.py`.", "",
             "**Preview** (slider change → numbers ready; `workbench.preview.preview` as the Compress page calls it, "
             f"one-shot accuracy included; {len(slider_values())} slider positions). Goal: p95 ≤ 250 ms.", "",
             "| model | weights | p50 ms | p95 ms | max ms | goal |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {p['model']} | {p['weights']:,} | {p['p50']:.1f} | {p['p95']:.1f} | {p['max']:.1f} | "
              f"{'met' if p['p95'] <= 250 else 'MISSED'} |" for p in previews]
    lines += ["", "**Preview per method** (`workbench.preview.preview_settings`, as the Compress page calls it; "
              "singular values and wanda's input RMS on the training split cached per model as in the app; 10 calls "
              "after a warm-up):", "",
              "| model | method | p50 ms | p95 ms | goal |", "|---|---|---:|---:|---|"]
    lines += [f"| {m['model']} | {m['method']} | {m['p50']:.1f} | {m['p95']:.1f} | "
              f"{'met' if m['p95'] <= 250 else 'MISSED'} |" for m in methods]
    lines += ["", "**Page load** with 50 finished runs in the store (AppTest, one script run; imports primed). "
              "first: median of new sessions with empty caches; repeat: median of new sessions with warm caches.", "",
              "| page | first (s) | repeat (s) |", "|---|---:|---:|"]
    lines += [f"| {p['page']} | {p['first']:.2f} | {p['repeat']:.2f} |" for p in pages]
    return "\n".join(lines)


def main() -> None:
    from workbench.zoo import sample_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=sample_names())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    previews = [preview_latency(m) for m in args.models]
    methods = [row for m in args.models for row in method_preview_latency(m)]
    with tempfile.TemporaryDirectory() as tmp:
        upload = onnx_export(Path(tmp))
        previews.append(preview_latency(f"{ONNX_MODEL} (its ONNX export, as an upload)", upload))
        methods += method_preview_latency(ONNX_MODEL, path=upload)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["WORKBENCH_HOME"] = str(home)
        os.environ.setdefault("WORKBENCH_AUTO_WORKER", "0")
        clone_runs(home, seed_run(home))
        pages = page_loads(home, args.repeats)
    text = markdown(previews, methods, pages)
    print(text)
    write_section("app", text)


if __name__ == "__main__":
    main()
