"""Per-layer sensitivity and search under an accuracy bar: how long the sensitivity tables take per sample,
whether the sensitivity-based allocation beats global and uniform magnitude pruning at equal overall
sparsity (one-shot, no fine-tuning), whether the per-layer bits allocation beats uniform bits at equal
estimated bytes, and what a budgeted search on digits-mlp keeps and recommends.
Writes the "sensitivity" section of BENCHMARKS.md.

    python bench/search_benchmark.py [--quick] [--out FILE]    # default: rewrites its BENCHMARKS.md section
    python bench/search_benchmark.py --only-bits [--out FILE]  # only the bits table, spliced into the section
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from sections import BENCHMARKS, write_section

from workbench.data import digits_splits
from workbench.evaluate import score, torch_predict
from workbench.models import load_model
from workbench.pruning import prune_torch, sparsity_of
from workbench.sensitivity import BITS, SPARSITIES, allocate, allocate_bits, analyze, layer_key
from workbench.specs import ModelRef, PruneSpec, QuantSpec, RunSpec

SAMPLES = ("digits-mlp", "digits-cnn", "digits-vit")
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
DETAIL_TARGET = 0.8
UNIFORM_BITS = (4, 3)   # the bits allocation gets each uniform setting's estimated bytes
BITS_HEADING = "### Per-layer bits vs uniform bits at equal estimated bytes"
SEARCH = {"max_drop": 1.0, "trials": 12, "minutes": 10.0}
# the search by weights.packed: iterative pruning (rounds as in the clustering benchmark) + k=8 with centroid FT,
# over sparsity x channels removed first; bits stay 32 (clustering)
PACKED_SEARCH = {"max_drop": 0.5, "minutes": 30.0, "space": {"sparsity": (0.5, 0.6, 0.7, 0.8, 0.9),
                                                            "ratio": (0.0, 0.25, 0.5)}}
ROUND = {"epochs": 20, "lr": 0.003, "label_smoothing": 0.1}
CENTROIDS = {"epochs": 30, "lr": 0.001, "label_smoothing": 0.1}
RECOVERY = {"epochs": 30, "lr": 0.01, "label_smoothing": 0.1}
MEASURE = {"batch_sizes": [1, 256], "threads": 1, "warmup": 10, "repeats": 100, "min_time_s": 0.25,
           "torch_eager": False}


def timings(splits, samples: tuple[str, ...]) -> list[dict]:
    """Sensitivity of each sample on the test split: first call, then a second (warm) call."""
    rows = []
    for name in samples:
        loaded = load_model(ModelRef(sample=name))
        first = analyze(loaded, splits.test)
        cpu = time.process_time()
        second = analyze(loaded, splits.test)
        cpu = time.process_time() - cpu
        evaluations = len(first.layers) * (len(SPARSITIES) + len(BITS)) + 1
        rows.append({"sample": name, "layers": len(first.layers), "weights": sum(first.params.values()),
                     "evaluations": evaluations, "s (first call)": first.seconds, "s (again)": second.seconds,
                     "CPU s (again)": cpu, "ms / evaluation": 1000 * second.seconds / evaluations})
    return rows


def accuracy(module, spec: PruneSpec, test) -> tuple[float, float, dict[str, float]]:
    pruned = copy.deepcopy(module)
    masks = prune_torch(pruned, spec)
    layers = {layer_key(n): 1 - float(m.mean()) for n, m in masks.items()}
    return score(torch_predict(pruned, test), test.labels)["accuracy"], sparsity_of(masks), layers


def allocation_rows(name: str, splits) -> tuple[list[dict], dict]:
    """Allocated vs global vs uniform magnitude at each target; the allocation sees only the calib split."""
    loaded = load_model(ModelRef(sample=name))
    sens = analyze(loaded, splits.calib)
    base = score(torch_predict(loaded.module, splits.test), splits.test.labels)["accuracy"]
    rows, detail = [], {}
    for target in TARGETS:
        allocated = accuracy(loaded.module, allocate(sens, target).prune_spec(), splits.test)
        global_ = accuracy(loaded.module, PruneSpec(sparsity=target), splits.test)
        uniform = accuracy(loaded.module, PruneSpec(sparsity=target, scope="layer"), splits.test)
        rows.append({"model": name, "target": target, "reached": allocated[1], "baseline": base,
                     "allocated": allocated[0], "global": global_[0], "uniform": uniform[0],
                     "vs global (pt)": 100 * (allocated[0] - global_[0]),
                     "vs uniform (pt)": 100 * (allocated[0] - uniform[0])})
        if target == DETAIL_TARGET:
            detail = {"allocated": allocated[2], "global": global_[2], "uniform": uniform[2],
                      "spec": allocate(sens, target).prune_spec()}
    return rows, detail


def bits_rows(name: str, splits) -> list[dict]:
    """Uniform fake-quant bits vs `allocate_bits` at the same estimated bytes, one run each: the sensitivity
    from the calib split, accuracy with ONNX Runtime on the exported, quantized model on the test split."""
    from workbench.evaluate import make_session, predict
    from workbench.export import export_onnx
    from workbench.quantization import quantize

    loaded = load_model(ModelRef(sample=name))
    sens = analyze(loaded, splits.calib)
    graph = export_onnx(loaded.module, (torch.from_numpy(splits.test.inputs[0][:2]),))
    params = sum(sens.params.values())

    def accuracy(spec: QuantSpec | None) -> float:
        model = graph if spec is None else quantize(graph, spec, splits.calib).model
        return score(predict(make_session(model, 1), splits.test), splits.test.labels)["accuracy"]

    base = accuracy(None)
    rows = [{"model": name, "setting": "float32", "bits per layer": "32", "est. KB": params * 4 / 1024,
             "predicted KL": 0.0, "accuracy": base, "vs uniform (pt)": ""}]
    for bits in UNIFORM_BITS:
        target = params * bits / 8
        allocation = allocate_bits(sens, target)
        uniform = accuracy(QuantSpec("fake", weight_bits=bits, per_channel=True))
        allocated = accuracy(allocation.quant_spec())
        rows += [{"model": name, "setting": f"uniform {bits}-bit", "bits per layer": f"{bits} each",
                  "est. KB": target / 1024, "predicted KL": sum(sens.bits[n][bits].kl for n in sens.layers),
                  "accuracy": uniform, "vs uniform (pt)": ""},
                 {"model": name, "setting": f"allocated at the {bits}-bit bytes",
                  "bits per layer": " ".join(map(str, allocation.bits.values())),
                  "est. KB": allocation.estimated_bytes / 1024, "predicted KL": allocation.kl, "accuracy": allocated,
                  "vs uniform (pt)": 100 * (allocated - uniform)}]
    return rows


def bits_block(splits, standalone: bool) -> list[str]:
    """The bits subsection; `standalone` (--only-bits) says when and how it was generated, apart from the rest."""
    started = time.perf_counter()
    rows = [r for name in ("digits-mlp", "digits-cnn") for r in bits_rows(name, splits)]
    origin = (f"Generated by `python bench/search_benchmark.py --only-bits` on {datetime.date.today()} (load "
              f"average {os.getloadavg()[1]:.1f} over the last 5 min at the end); " if standalone else "")
    return [
        BITS_HEADING,
        "",
        f"{origin}{time.perf_counter() - started:.0f} s for both models. `allocate_bits(sensitivity, target_bytes)` "
        "(greedy: the cut with the least KL per byte saved first, among 8, 6, 4, 3, 2 bits) from sensitivity "
        "tables on the 180-sample calibration split, at the estimated bytes of uniform 4 and 3 bits (dense "
        "weights x bits / 8, an estimate); `bits per layer` in the model's layer order. Every row is "
        "`quantize(method: fake, per_channel: true)` on the exported ONNX model (the allocation through its "
        "`quant_spec()`: per-layer `overrides`), accuracy measured with ONNX Runtime on the 360-sample test "
        "split (one sample = 0.28 pt), one run each (rounding is deterministic). Simulated: the files stay "
        "float32; the storage is computed. `predicted KL` = sum over layers of the single-layer KL in the table.",
        "",
        *table(rows, {"est. KB": ".1f", "predicted KL": ".4f", "accuracy": ".4f", "vs uniform (pt)": "+.2f"}),
        "",
    ]


def splice_bits(section: str, block: list[str]) -> str:
    """The section with its bits subsection replaced by `block` (inserted before the search if missing)."""
    text = "\n".join(block)
    pattern = re.compile(rf"{re.escape(BITS_HEADING)}.*?(?=\n### |\Z)", re.S)
    if pattern.search(section):
        return pattern.sub(lambda _: text.rstrip(), section)
    marker = section.find("### A search on")
    return section.rstrip() + "\n\n" + text if marker < 0 else section[:marker] + text + "\n" + section[marker:]


def only_bits(splits, path: Path) -> None:
    block = bits_block(splits, standalone=True)
    print("\n".join(block))
    current = path.read_text() if path.exists() else ""
    found = re.search(r"<!-- sensitivity:start -->\n(.*?)\n<!-- sensitivity:end -->", current, re.S)
    write_section("sensitivity", splice_bits(found.group(1) if found else "", block), path)


def confirm_with_a_run(spec: PruneSpec) -> float:
    """The allocated recipe as a real run: accuracy measured by ONNX Runtime on the exported model."""
    from workbench.pipeline import run_pipeline
    from workbench.specs import stage_dict

    recipe = RunSpec.from_dict({"model": "digits-mlp", "stages": [stage_dict(spec)],
                                "measure": {"batch_sizes": [1], "warmup": 1, "repeats": 5, "min_time_s": 0,
                                            "torch_eager": False}})
    return run_pipeline(recipe).final.measurement.metrics["accuracy"]


def run_search(trials: int):
    """A search on digits-mlp (prune + recovery fine-tune as the base) by gzip size."""
    base = RunSpec.from_dict({"name": "mlp", "model": "digits-mlp", "measure": MEASURE,
                              "stages": [{"prune": {"sparsity": 0.9, "finetune": RECOVERY}}]})
    return searched(base, SEARCH["max_drop"], trials, SEARCH["minutes"])


def run_packed_search():
    """A search on digits-mlp by weights.packed: iterative pruning and k=8 clustering as the base, every
    candidate of sparsity x channels removed first."""
    base = RunSpec.from_dict({"name": "mlp packed", "model": "digits-mlp", "measure": MEASURE, "stages": [
        {"prune": {"sparsity": 0.9, "schedule": "iterative", "per_round": 0.2, "finetune": ROUND}},
        {"cluster": {"clusters": 8, "bias_clusters": 32, "finetune": CENTROIDS}}]})
    space = PACKED_SEARCH["space"]
    trials = len(space["sparsity"]) * len(space["ratio"])
    return searched(base, PACKED_SEARCH["max_drop"], trials, PACKED_SEARCH["minutes"], space, "packed")


def searched(base: RunSpec, max_drop: float, trials: int, minutes: float, space: dict | None = None,
             objective: str = "size"):
    """`search` executed here one candidate at a time, claimed from the store, so the deadline applies
    exactly as it does for a worker: (summary, candidates planned, seconds)."""
    from workbench.jobs import execute
    from workbench.search import search, search_summary
    from workbench.store import Store

    with tempfile.TemporaryDirectory() as home:
        store = Store(home)
        started = time.perf_counter()
        sweep_id, runs = search(store, base, max_drop, trials, minutes, space, objective)
        while (run := store.claim("benchmark")) is not None:
            print(f"search candidate {run.id}: {run.name}", file=sys.stderr, flush=True)
            execute(store, run.id)
        summary = search_summary(store, sweep_id)
        planned = store.get_sweep(sweep_id).settings["planned"]
        return summary, planned, time.perf_counter() - started


def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict], formats: dict[str, str] | None = None) -> list[str]:
    formats = formats or {}
    keys = list(rows[0])

    def cell(key: str, value) -> str:
        if key in formats and isinstance(value, int | float) and not isinstance(value, bool):
            return format(value, formats[key])
        return fmt(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(cell(k, r[k]) for k in keys) + " |" for r in rows]


def render(times: list[dict], alloc: list[dict], details: dict, run_check: tuple[float, float] | None,
           bits: list[str], search_result, env: dict, seconds: float) -> str:
    v = env["versions"]
    lines = [
        "## Per-layer sensitivity, sensitivity-based allocation, and search under an accuracy bar",
        "",
        f"Generated by `python bench/search_benchmark.py` on {datetime.date.today()} in {seconds / 60:.1f} min. "
        f"CPU: {env['cpu_model']} ({env['logical_cores']} logical cores, shared with other jobs while this ran: "
        f"load average {os.getloadavg()[1]:.1f} over the last 5 min at the end). onnxruntime {v['onnxruntime']}, "
        f"torch {v['torch']}; 1 thread.",
        "",
        "### Sensitivity tables: time per sample",
        "",
        f"Each prunable layer alone is magnitude-pruned to {', '.join(f'{s:.0%}' for s in SPARSITIES)} and "
        f"rounded (symmetric, per channel) to {', '.join(map(str, BITS))} bits, the other layers untouched; "
        "each cell is one torch pass over the 360-sample test split (plus one unchanged pass). Wall time of "
        "`workbench.sensitivity.analyze`, first call and a second call in the same process, and the CPU time "
        "of the second call: it runs on one thread, so its CPU time is about what it takes on an idle core, "
        "while the wall time includes waiting for the shared cores.",
        "",
        *table(times, {"s (first call)": ".2f", "s (again)": ".2f", "CPU s (again)": ".2f", "ms / evaluation": ".1f"}),
        "",
        "### Allocation vs global and uniform magnitude at equal overall sparsity (one-shot, no fine-tuning)",
        "",
        "`allocate(sensitivity, target)` (greedy: the move with the least KL divergence per pruned weight "
        "first) from sensitivity tables computed on the 180-sample *calibration* split, so the allocation never "
        "saw the test set; accuracy on the 360-sample test split (one sample = 0.28 pt), torch, with the masks "
        "a run applies (`prune_torch`). `global` = one magnitude threshold over all layers (the default), "
        "`uniform` = every layer at the target (`scope: layer`). `reached` = the overall sparsity the "
        "allocated masks really have.",
        "",
        *table(alloc, {"target": ".2f", "reached": ".4f", "baseline": ".4f", "allocated": ".4f", "global": ".4f",
                       "uniform": ".4f", "vs global (pt)": "+.2f", "vs uniform (pt)": "+.2f"}),
        "",
    ]
    for name, detail in details.items():
        layers = [{"layer": k, "allocated": detail["allocated"][k], "global": detail["global"][k],
                   "uniform": detail["uniform"][k]} for k in detail["allocated"]]
        lines += [f"Per-layer sparsity at {DETAIL_TARGET:.0%} overall, {name}:", "",
                  *table(layers, {"allocated": ".3f", "global": ".3f", "uniform": ".3f"}), ""]
    if run_check is not None:
        lines += [f"Check with a full run: the allocated digits-mlp recipe at {DETAIL_TARGET:.0%} measures "
                  f"{run_check[1]:.4f} with ONNX Runtime on the exported model (torch above: {run_check[0]:.4f}).", ""]
    wins = [r for r in alloc if r["vs global (pt)"] > 0]
    losses = [r for r in alloc if r["vs global (pt)"] < 0]
    lines += [
        "### Acceptance checks (sensitivity)",
        "",
        *[f"- {r['sample']}: sensitivity tables in {r['s (again)']:.2f} s wall, {r['CPU s (again)']:.2f} s CPU "
          f"({r['s (first call)']:.2f} s wall on the first call); goal: a few seconds for digits-mlp/cnn."
          for r in times],
        f"- Allocation beats global magnitude in {len(wins)} of {len(alloc)} (model, target) pairs, loses in "
        f"{len(losses)}" + (": " + ", ".join(f"{r['model']} {r['target']:.0%} ({r['vs global (pt)']:+.2f} pt)"
                                              for r in losses) if losses else "") + "; it beats uniform in "
        f"{sum(r['vs uniform (pt)'] > 0 for r in alloc)} of {len(alloc)}.",
        f"- Every allocation reached its target within ±0.5%: "
        f"{all(abs(r['reached'] - r['target']) <= 0.005 for r in alloc)}.",
        "",
        *bits,
    ]
    if search_result is not None:
        lines += search_section(*search_result[0]) + packed_section(*search_result[1])
    return "\n".join(lines) + "\n"


def candidates_lines(summary, keys: list[str], formats: dict[str, str]) -> list[str]:
    """A search's candidates table (columns `keys`), its Pareto set and its recommendation."""
    frame = summary.frame
    rows = [{k: row[k] for k in keys} for row in frame.to_dict(orient="records")]
    return [*table(rows, formats), "", f"Pareto set: {', '.join(frame.loc[frame['pareto'], 'label'])}.", "",
            summary.message, ""]


def statuses(summary) -> str:
    return ", ".join(f"{n} {s}" for s, n in summary.frame["status"].value_counts().to_dict().items())


def search_section(summary, planned: int, seconds: float) -> list[str]:
    keys = ["id", "label", "status", "accuracy", "drop", "gzip_kb", "gzip_x", "latency_ms", "meets_bar", "pareto"]
    return [
        "### A search on digits-mlp",
        "",
        f"`search(store, base, max_drop={SEARCH['max_drop']}, trials={SEARCH['trials']}, "
        f"minutes={SEARCH['minutes']:g})` over sparsity (0, 50, 70, 80, 90, 95%) × bits (32, 8, 4): "
        f"{planned} candidates planned, the first {len(summary.frame)} queued in coarse-to-fine order (farthest-point "
        "over the grid, from its centre). Base recipe: one-shot global magnitude pruning with recovery "
        f"fine-tuning ({RECOVERY['epochs']} epochs, lr {RECOVERY['lr']}, label smoothing "
        f"{RECOVERY['label_smoothing']}); 8 bits = static int8 (QDQ), 4 bits = MatMulNBits weight-only. Every "
        "candidate is a run in the store; drop = accuracy drop vs that run's own baseline (pt); gzip = gzip of "
        "the exported ONNX file (measured); latency = ORT median at batch 1; Pareto = not beaten on both gzip "
        f"size and accuracy. Executed one at a time in {seconds / 60:.1f} min; statuses: {statuses(summary)}.",
        "",
        *candidates_lines(summary, keys, {"accuracy": ".4f", "drop": "+.2f", "gzip_kb": ".1f", "gzip_x": ".1f",
                                          "latency_ms": ".4f"}),
    ]


def packed_section(summary, planned: int, seconds: float) -> list[str]:
    keys = ["id", "label", "ratio", "status", "accuracy", "drop", "packed_kb", "packed_x", "gzip_x", "latency_ms",
            "meets_bar", "pareto"]
    return [
        "### A search by weights.packed on digits-mlp",
        "",
        f"`search(..., objective=\"packed\")` with a {PACKED_SEARCH['max_drop']} pt bar over sparsity "
        f"({', '.join(f'{s:.0%}' for s in PACKED_SEARCH['space']['sparsity'])}) × channels removed first "
        f"({', '.join(f'{r:.0%}' for r in PACKED_SEARCH['space']['ratio'])}; structured, round_to 8): all "
        f"{planned} candidates. Base recipe: iterative global magnitude pruning (20% of the survivors per round, "
        f"{ROUND['epochs']} epochs at lr {ROUND['lr']} after each), 8 shared values per layer (32 per bias) with "
        f"{CENTROIDS['epochs']} epochs of centroid fine-tuning; bits stay 32 (clustering). packed = weights.packed "
        "(every parameter, decoded back exactly; not a file ONNX Runtime loads); Pareto = not beaten on both "
        f"packed size and accuracy. One 360-sample split and one seed: a drop under ~1.4 pt is within test-set "
        f"noise (the clustering section has seeds and cross-validation). Executed one at a time in "
        f"{seconds / 60:.1f} min; statuses: {statuses(summary)}.",
        "",
        *candidates_lines(summary, keys, {"ratio": ".2f", "accuracy": ".4f", "drop": "+.2f", "packed_kb": ".2f",
                                          "packed_x": ".1f", "gzip_x": ".1f", "latency_ms": ".4f"}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the ViT timing and the search")
    parser.add_argument("--only-bits", action="store_true",
                        help="only the per-layer bits table, spliced into the existing section")
    parser.add_argument("--out", type=Path, default=None, help="write the section into this file instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)   # jobs.execute turns workbench INFO logs on
    torch.set_num_threads(1)
    started = time.perf_counter()
    from workbench.environment import environment

    splits = digits_splits()
    if args.only_bits:
        only_bits(splits, args.out or BENCHMARKS)
        print(f"wrote the bits table into the sensitivity section of {args.out or 'BENCHMARKS.md'}", file=sys.stderr)
        return
    times = timings(splits, SAMPLES[:2] if args.quick else SAMPLES)
    alloc, details = [], {}
    for name in ("digits-mlp", "digits-cnn"):
        print(f"allocation: {name}", file=sys.stderr, flush=True)
        rows, details[name] = allocation_rows(name, splits)
        alloc += rows
    mlp_row = next(r for r in alloc if r["model"] == "digits-mlp" and r["target"] == DETAIL_TARGET)
    run_check = (mlp_row["allocated"], confirm_with_a_run(details["digits-mlp"]["spec"]))
    bits = bits_block(splits, standalone=False)
    search_result = None if args.quick else (run_search(SEARCH["trials"]), run_packed_search())
    text = render(times, alloc, details, run_check, bits, search_result, environment(1), time.perf_counter() - started)
    print(text)
    write_section("sensitivity", text, *([args.out] if args.out else []))
    print(f"wrote the sensitivity section of {args.out or 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
