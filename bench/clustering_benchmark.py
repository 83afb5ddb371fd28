"""digits-mlp: how small can pruning + weight sharing + entropy coding make it, at what accuracy cost?

Every candidate is one `run_pipeline` call: the fp32 baseline and the final variant are measured in the
same run (accuracy with ONNX Runtime on the fixed 360-sample test split); the size ratio is the fp32
ONNX file's bytes ÷ the bytes of `weights.packed` (all parameters, decodable back exactly to the model
that was measured). Every candidate is kept in the table. The recipe named BEST was fixed from earlier
exploration (several seeds), not picked from this table; it is re-run with more fine-tuning seeds,
because one test sample is 0.28 pt and the goal allows a 0.5 pt drop; so are the recipes that remove half the
neurons first (`recipes/mlp-thin-sparse-packed.yaml` and two variants). Then `bench/crossval.py` retrains the
dense model on 5 folds so every image is tested once: variants of the best recipe and the neurons-first recipes
are chosen on held-out validation images, and the reference, the chosen variant and a fine-tuning-only control
are scored on the folds.

    python bench/clustering_benchmark.py      # ~25 min on 2 vCPUs; rewrites its section of BENCHMARKS.md
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import crossval
from sections import write_section

from workbench.packing import encode, unpack
from workbench.pipeline import run_pipeline
from workbench.pruning import round_targets
from workbench.specs import (
    ClusterSpec,
    FinetuneSpec,
    MeasureSpec,
    ModelRef,
    PruneSpec,
    QuantSpec,
    RunSpec,
    load_recipe,
)

MODEL = "digits-mlp"
MEASURE = MeasureSpec(batch_sizes=(1,), warmup=2, repeats=10, min_time_s=0, torch_eager=False)
RECOVERY = FinetuneSpec(epochs=30, lr=0.01, label_smoothing=0.1)           # the engine benchmark's recovery
ROUND = FinetuneSpec(epochs=20, lr=0.003, label_smoothing=0.1)             # between iterative rounds
CENTROIDS = FinetuneSpec(epochs=30, lr=0.001, label_smoothing=0.1)         # centroid fine-tune
GOAL_RATIO, GOAL_DROP = 40.0, 0.5
SEEDS = 5


def cluster(k: int, finetune: FinetuneSpec | None = None, bias_clusters: int | None = None) -> ClusterSpec:
    return ClusterSpec(clusters=k, finetune=finetune, bias_clusters=bias_clusters)


def iterative(sparsity: float, seed: int = 0) -> PruneSpec:
    return PruneSpec(sparsity=sparsity, schedule="iterative", per_round=0.2,
                     finetune=dataclasses.replace(ROUND, seed=seed))


def tuned(seed: int) -> FinetuneSpec:
    return dataclasses.replace(CENTROIDS, seed=seed)


def best(seed: int) -> tuple:
    """The recipe fixed in advance: iterative 90% (20%/round, LR rewound each round) + k=8 shared values,
    biases sharing 32 values, centroid fine-tune."""
    return iterative(0.9, seed), cluster(8, tuned(seed), bias_clusters=32)


BEST = "iterative 90% · k=8 · bias k=32 · centroid FT"
DISTILL = ((0.2, 4.0), (0.5, 4.0), (0.9, 2.0))   # (finetune.distill, temperature) tried on the best recipe


def best_distilled(seed: int, alpha: float, temperature: float) -> tuple:
    """The best recipe with every fine-tuning (rounds and centroids) distilling from the dense model."""
    prune, clustered = best(seed)
    kd = {"distill": alpha, "temperature": temperature}
    return (dataclasses.replace(prune, finetune=dataclasses.replace(prune.finetune, **kd)),
            dataclasses.replace(clustered, finetune=dataclasses.replace(clustered.finetune, **kd)))


WANDA = (0.9, 0.88)    # the best recipe with every round ranked by Wanda, at these sparsities


def best_wanda(seed: int, sparsity: float) -> tuple:
    """The best recipe with each round's weights ranked by |w| times input RMS (`prune.method: wanda`)."""
    prune, clustered = best(seed)
    return dataclasses.replace(prune, method="wanda", sparsity=sparsity), clustered


def candidates() -> dict[str, tuple]:
    return {
        "one-shot 50% (no recovery) · k=16 · centroid FT": (PruneSpec(sparsity=0.5), cluster(16, tuned(0))),
        "one-shot 60% (no recovery) · k=8 · centroid FT": (PruneSpec(sparsity=0.6), cluster(8, tuned(0))),
        "one-shot 90% + recovery · k=16": (PruneSpec(sparsity=0.9), RECOVERY, cluster(16)),
        "one-shot 95% + recovery · k=16": (PruneSpec(sparsity=0.95), RECOVERY, cluster(16)),
        "iterative 90% · k=16": (iterative(0.9), cluster(16)),
        "iterative 90% · k=8": (iterative(0.9), cluster(8)),
        "iterative 90% · k=8 · centroid FT": (iterative(0.9), cluster(8, tuned(0))),
        "iterative 90% · k=4 · bias k=16 · centroid FT": (iterative(0.9), cluster(4, tuned(0), bias_clusters=16)),
        BEST: best(0),
        "iterative 92% · k=8 · centroid FT": (iterative(0.92), cluster(8, tuned(0))),
        "iterative 92% · k=8 · bias k=32 · centroid FT": (iterative(0.92), cluster(8, tuned(0), bias_clusters=32)),
        "iterative 95% · k=8 · bias k=32 · centroid FT": (iterative(0.95), cluster(8, tuned(0), bias_clusters=32)),
    }


def measure(name: str, stages: tuple) -> dict:
    spec = RunSpec(model=ModelRef(sample=MODEL), stages=stages, measure=MEASURE, name=name)
    with tempfile.TemporaryDirectory() as tmp:
        report = run_pipeline(spec, out_dir=tmp)
        blob = (Path(tmp) / "weights.packed").read_bytes() if report.final.facts.packed_bytes else None
    base, final = report.baseline.measurement, report.final.measurement
    row = {"candidate": name, "sparsity": final.size.sparsity}
    row["accuracy"] = final.metrics["accuracy"]
    row["Δ acc (pt)"] = 100 * (final.metrics["accuracy"] - base.metrics["accuracy"])
    paired = report.final.measurement.paired   # the engine's sample-by-sample count against the baseline
    row["wrong / right"] = f"{paired.worse} / {paired.better}"
    row["McNemar p"] = paired.p_value
    row["before last stage"] = report.variants[-2].measurement.metrics["accuracy"] if len(report.variants) > 1 else None
    row["packed B"] = len(blob) if blob else None
    row["packed ×"] = base.size.file_bytes / len(blob) if blob else None
    row["gzip ONNX ×"] = base.size.file_bytes / final.size.gzip_bytes
    sections = encode(unpack(blob)).sections if blob else {}
    for key, label in (("positions", "pos B"), ("indices", "idx B"), ("value tables", "tables B"),
                       ("raw values", "fp16 B")):
        row[label] = sections.get(key, 0) if blob else None
    row["_base"] = (base.metrics["accuracy"], base.size.file_bytes)
    row["_file ×"] = base.size.file_bytes / final.size.file_bytes   # the ONNX file itself (real)
    row["_nonzero"] = final.size.nonzero
    return row


OBS = "+ OBS every round"
VALIDATION_SEEDS = 3


RECIPES = Path(__file__).resolve().parent.parent / "recipes"
OBS_RECIPE = RECIPES / "mlp-40x-packed.yaml"
THIN_RECIPE = RECIPES / "mlp-thin-sparse-packed.yaml"


def best_obs(seed: int) -> tuple:
    """The best recipe with the kept weights solved by Optimal Brain Surgeon after every round: the shipped
    recipe file, with `seed` ordering its fine-tuning batches as in `best`."""
    prune, clustered = load_recipe(OBS_RECIPE).stages
    return (dataclasses.replace(prune, finetune=dataclasses.replace(prune.finetune, seed=seed)),
            dataclasses.replace(clustered, finetune=tuned(seed)))


def thin(seed: int, sparsity: float, reconstruct: str) -> tuple:
    """Half the hidden neurons removed first, then the remaining weights pruned and shared: the shipped recipe
    file, with `seed` ordering every fine-tuning's batches and `sparsity` / `reconstruct` set on its iterative
    stage."""
    structured, recovery, prune, clustered = load_recipe(THIN_RECIPE).stages
    return (structured, dataclasses.replace(recovery, seed=seed),
            dataclasses.replace(prune, sparsity=sparsity, reconstruct=reconstruct,
                                finetune=dataclasses.replace(prune.finetune, seed=seed)),
            dataclasses.replace(clustered, finetune=tuned(seed)))


THIN = "neurons 50% first · iterative 65% + OBS"          # the recipe file as it ships
THIN_VARIANTS = {THIN: (0.65, "obs"), "neurons 50% first · iterative 60%": (0.6, "none"),
                 "neurons 50% first · iterative 70%": (0.7, "none")}


def thin_arms() -> dict:
    return {arm: (lambda seed, p=p, r=r: thin(seed, p, r)) for arm, (p, r) in THIN_VARIANTS.items()}


def variants() -> dict:
    """The recipe variants the cross-validation chooses among on its validation images (the reference first)."""
    return {BEST: best, OBS: best_obs, "+ distill 0.2, T 4": lambda seed: best_distilled(seed, 0.2, 4.0),
            **thin_arms()}


def cross_validate() -> crossval.CrossValidation:
    return crossval.cross_validate(
        MODEL, variants(), {CONTROL: lambda seed: control("one round's fine-tuning", seed)}, MEASURE, SEEDS,
        VALIDATION_SEEDS, GOAL_RATIO)


def drops_cell(runs: list[dict]) -> str:
    drops = [r["drop"] for r in runs]
    return f"{' / '.join(f'{d:.2f}' for d in drops)} ({statistics.mean(drops):.2f})"


def crossval_lines(cv: crossval.CrossValidation) -> list[str]:
    folds, arms = cv.folds, [a for a in cv.test if a != CONTROL]
    lines = [f"### Cross-validated: {len(folds)} folds, every image a test image once", "",
             crossval.__doc__.split("\n\n")[1].replace("\n", " ").strip(), "",
             f"Validation ({VALIDATION_SEEDS} seeds per fold, {len(folds) * 180} held-out images per seed): "
             f"the variant with the lowest pooled drop among those ≥{GOAL_RATIO:.0f}× smaller in every run is "
             "scored on the test folds beside the reference.", "",
             "| variant | drop (pt, pooled) | wrong / right | packed × (mean, min) | chosen |", "|---|---|---|---|---|"]
    for arm, runs in cv.validation.items():
        worse, better, _, drop = crossval.pooled(runs)
        ratios = [r["ratio"] for r in runs]
        lines.append(f"| {arm} | {drop:.2f} | {worse} / {better} | {statistics.mean(ratios):.1f}, {min(ratios):.1f} | "
                     f"{'yes' if arm == cv.chosen else ''} |")
    lines += ["", "Test folds, drop per seed (pt) with the fold's mean in brackets:", "",
              "| fold | test samples | dense accuracy | " + " | ".join(f"{a}: drop per seed" for a in arms)
              + " | " + " | ".join(f"{a}: packed × (min)" for a in arms) + f" | {CONTROL}: mean drop (pt) |",
              "|---" * (3 + 2 * len(arms) + 1) + "|"]
    for fold in folds:
        cells = [drops_cell(cv.test[a][fold.index]) for a in arms]
        cells += [f"{min(r['ratio'] for r in cv.test[a][fold.index]):.1f}" for a in arms]
        cells.append(f"{statistics.mean(r['drop'] for r in cv.test[CONTROL][fold.index]):.2f}")
        lines.append(f"| {fold.index} | {fold.test_samples} | {fold.dense_accuracy:.4f} | " + " | ".join(cells) + " |")
    lines.append("")
    for arm in cv.test:
        worse, better, samples, drop = crossval.pooled([r for runs in cv.test[arm].values() for r in runs])
        ratios = [r["ratio"] for runs in cv.test[arm].values() for r in runs if r["ratio"]]
        size = f", at least {min(ratios):.1f}× smaller in every run" if ratios else ""
        per_fold = [statistics.mean(r["drop"] for r in runs) for runs in cv.test[arm].values()]
        verdict_ = "" if arm == CONTROL else (", within the budget" if drop <= GOAL_DROP and ratios and
                                              min(ratios) >= GOAL_RATIO else ", goal not met")
        lines.append(f"- {arm}: pooled over {len(folds)} folds × {SEEDS} seeds ({samples:,} scored samples), {worse} "
                     f"samples wrong that the fold's dense model got right and {better} the reverse: **{drop:.2f} pt**"
                     f"{verdict_} (per-fold means {min(per_fold):.2f} to {max(per_fold):.2f}){size}.")
    return lines


def reference_int8() -> dict:
    """The engine's best plain-format artifact for comparison: 90% + recovery + static int8, gzipped."""
    stages = (PruneSpec(sparsity=0.9), RECOVERY, QuantSpec(method="static"))
    return measure("one-shot 90% + recovery + static int8 (gzip of ONNX, no packing)", stages)


def fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key in ("accuracy", "before last stage"):
        return f"{value:.4f}"
    if key.startswith("Δ"):
        return f"{value:+.2f}"
    if key == "McNemar p":
        return f"{value:.2f}" if value >= 0.01 else "<0.01"
    if key == "sparsity":
        return f"{100 * value:.1f}%"
    if key.endswith("×"):
        return f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict]) -> list[str]:
    keys = [k for k in rows[0] if not k.startswith("_")]
    lines = ["| " + " | ".join(keys) + " | goal met |", "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        met = r["packed ×"] is not None and r["packed ×"] >= GOAL_RATIO and -r["Δ acc (pt)"] <= GOAL_DROP + 1e-9
        lines.append("| " + " | ".join(fmt(k, r[k]) for k in keys) + f" | {'yes' if met else 'no'} |")
    return lines


def render(rows: list[dict], seeds: list[dict], env: dict, seconds: float, distilled: dict,
           controls: dict, ranked: dict, solved: list[dict], thinned: dict, cv: crossval.CrossValidation) -> str:
    base_acc, base_bytes = rows[0]["_base"]
    drops = [-r["Δ acc (pt)"] for r in seeds]
    ratios = [r["packed ×"] for r in seeds]
    passed = sum(1 for d, x in zip(drops, ratios, strict=True) if d <= GOAL_DROP + 1e-9 and x >= GOAL_RATIO)
    v = env["versions"]
    lines = [
        "## Weight clustering + entropy-coded packing (digits-mlp)",
        "",
        f"Generated by `python bench/clustering_benchmark.py` on {datetime.date.today()} in {seconds / 60:.1f} min. "
        f"CPU: {env['cpu_model']} ({env['logical_cores']} logical cores); onnxruntime {v['onnxruntime']}, "
        f"torch {v['torch']}.",
        "",
        f"Baseline: fp32 ONNX {base_bytes:,} bytes, accuracy {base_acc:.4f} (ONNX Runtime, 360 test samples; "
        f"one sample = 0.28 pt). Goal: ≥{GOAL_RATIO:.0f}× smaller with ≤{GOAL_DROP} pt drop.",
        "`packed ×` = fp32 ONNX bytes ÷ `weights.packed` bytes: every parameter, decoded back exactly to the "
        "measured model by `workbench.packing.unpack` (a real size, but not a file ONNX Runtime loads). "
        "`pos/idx/tables/fp16 B` split the packed bytes into entropy-coded positions of the nonzeros, "
        "entropy-coded cluster indices, the float16 value tables, and parameters stored as float16; the "
        "remainder is names/shapes. `gzip ONNX ×` is the same variant's ONNX file gzipped, for comparison. "
        "`wrong / right`: test samples the baseline got right and the variant wrong, and the reverse; `McNemar p`: "
        "the exact McNemar test on those counts (below 0.05: a change beyond test-set noise; "
        "`workbench.significance`).",
        f"Iterative = global magnitude, 20% of the survivors per round, {ROUND.epochs} epochs (Adam, lr "
        f"{ROUND.lr} cosine, label smoothing {ROUND.label_smoothing}) after each round. Recovery = {RECOVERY.epochs} "
        f"epochs at lr {RECOVERY.lr}. Centroid FT = {CENTROIDS.epochs} epochs at lr {CENTROIDS.lr} on the shared "
        "values (indices fixed) and biases. `bias k` = biases share k values per tensor (else float16).",
        "",
        *table(rows),
        "",
        f"### Best recipe ({BEST}) over fine-tuning seeds",
        "",
        *table(seeds),
        "",
        f"Seeds 0..{len(seeds) - 1}: drop {statistics.mean(drops):.2f} ± {statistics.stdev(drops):.2f} pt, "
        f"size {statistics.mean(ratios):.1f}× (min {min(ratios):.1f}×); both goals met in {passed} of "
        f"{len(seeds)} seeds. " + noise_line(seeds),
        "",
        *distilled_lines(distilled),
        "",
        *wanda_lines(ranked),
        "",
        *obs_lines(solved),
        "",
        *thin_lines(thinned),
        "",
        *control_lines(controls),
        "",
        *crossval_lines(cv),
        "",
        *verdict(rows, seeds, drops, passed, controls, {OBS: solved, **thinned}, cv),
    ]
    return "\n".join(lines)


def noise_line(runs: list[dict]) -> str:
    """Whether the seeds' accuracy changes are beyond test-set noise, by the engine's paired counts."""
    beyond = [r for r in runs if r["McNemar p"] < 0.05]
    return (f"By the sample-by-sample counts, {len(beyond)} of {len(runs)} seeds' changes are beyond test-set noise "
            f"(exact McNemar p from {min(r['McNemar p'] for r in runs):.2f} to "
            f"{max(r['McNemar p'] for r in runs):.2f}).")


def drop_cells(runs: list[dict]) -> str:
    """'drop per seed | mean ± std' table cells (pt) for runs of one setting over seeds."""
    drops = [-r["Δ acc (pt)"] for r in runs]
    return f"{' / '.join(f'{d:.2f}' for d in drops)} | {statistics.mean(drops):.2f} ± {statistics.stdev(drops):.2f}"


def distilled_lines(distilled: dict) -> list[str]:
    """The best recipe again with knowledge distillation from the dense model in every fine-tuning."""
    lines = ["### The same recipe, recovering with distillation from the dense model (`finetune.distill`)", "",
             "| distill, temperature | drop per seed (pt) | mean ± std (pt) | packed × (min) | ≤0.5 pt and ≥40× |",
             "|---|---|---|---|---|"]
    for (alpha, temperature), runs in distilled.items():
        met = sum(1 for r in runs if -r["Δ acc (pt)"] <= GOAL_DROP + 1e-9 and r["packed ×"] >= GOAL_RATIO)
        lines.append(f"| {alpha:g}, {temperature:g} | {drop_cells(runs)} | "
                     f"{min(r['packed ×'] for r in runs):.1f} | {met} of {len(runs)} |")
    return lines


def wanda_lines(ranked: dict) -> list[str]:
    """The best recipe again with Wanda's ranking in every round."""
    lines = ["### The same recipe, ranking every round by Wanda (`prune.method: wanda`)", "",
             "Each round ranks by |w| times the RMS of the weight's input on the training images (Sun et al. 2024), "
             "so the weights on pixels that are blank in every image go first (magnitude keeps many of them: "
             "without a signal they get no gradient and keep their initial size).", "",
             "| sparsity | drop per seed (pt) | mean ± std (pt) | packed × (mean, min) | ≤0.5 pt and ≥40× |",
             "|---|---|---|---|---|"]
    for sparsity, runs in ranked.items():
        met = sum(1 for r in runs if -r["Δ acc (pt)"] <= GOAL_DROP + 1e-9 and r["packed ×"] >= GOAL_RATIO)
        ratios = [r["packed ×"] for r in runs]
        lines.append(f"| {sparsity:.0%} | {drop_cells(runs)} | {statistics.mean(ratios):.1f}, {min(ratios):.1f} | "
                     f"{met} of {len(runs)} |")
    return lines


def obs_lines(runs: list[dict]) -> list[str]:
    """The best recipe again with OBS solving the kept weights after every round."""
    ratios = [r["packed ×"] for r in runs]
    met = sum(1 for r in runs if -r["Δ acc (pt)"] <= GOAL_DROP + 1e-9 and r["packed ×"] >= GOAL_RATIO)
    return ["### The same recipe, solving the kept weights by OBS after every round (`prune.reconstruct: obs`)", "",
            "Before each round's fine-tuning, Optimal Brain Surgeon picks which weights of each unit go (as many as "
            "the magnitude mask takes) and re-solves the others to reproduce the dense model's layer outputs on the "
            "training images (the reconstruction section), so fine-tuning starts from a repaired model. The recipe "
            "ships as `recipes/mlp-40x-packed.yaml` (`workbench run recipes/mlp-40x-packed.yaml --out DIR`).", "",
            "| drop per seed (pt) | mean ± std (pt) | packed × (mean, min) | ≤0.5 pt and ≥40× |", "|---|---|---|---|",
            f"| {drop_cells(runs)} | {statistics.mean(ratios):.1f}, {min(ratios):.1f} | {met} of {len(runs)} |"]


def thin_lines(thinned: dict[str, list[dict]]) -> list[str]:
    """The neurons-first recipes over seeds on this split."""
    structured, recovery, prune, _ = load_recipe(THIN_RECIPE).stages
    rounds = len(round_targets(prune))
    lines = ["### Removing neurons first: structured 50% + recovery, then the iterative rounds and clustering", "",
             f"`structured` (Torch-Pruning, {structured.importance} importance) removes {structured.ratio:.0%} of the "
             f"hidden neurons of fc1 and fc2 (64-300-100-10 -> 64-{300 - round(300 * structured.ratio)}-"
             f"{100 - round(100 * structured.ratio)}-10; inputs and outputs kept), "
             f"{recovery.epochs} epochs of recovery at lr {recovery.lr}, then iterative global magnitude pruning of "
             f"the remaining weights (20% of the survivors per round, {prune.finetune.epochs} epochs at lr "
             f"{prune.finetune.lr} after each; {rounds} rounds to {prune.sparsity:.0%}), then k=8 (bias k=32) with "
             "centroid FT. A thinner network at lower sparsity can keep more weights for the same bytes, since the "
             "positions of a denser mask cost fewer bits per kept weight (measured in the last paragraph). The ONNX "
             "file itself is smaller too (`ONNX file ×`, real: the layers are narrower), where 90% sparsity of the "
             f"full network leaves it the baseline's size. The recipe ships as `recipes/{THIN_RECIPE.name}` "
             f"(`workbench run recipes/{THIN_RECIPE.name} --out DIR`, or queued from the Runs page).", "",
             "| variant | drop per seed (pt) | mean ± std (pt) | packed × (mean, min) | ONNX file × | pos B (mean) "
             "| ≤0.5 pt and ≥40× |", "|---|---|---|---|---|---|---|"]
    for arm, runs in thinned.items():
        met = sum(1 for r in runs if -r["Δ acc (pt)"] <= GOAL_DROP + 1e-9 and r["packed ×"] >= GOAL_RATIO)
        ratios = [r["packed ×"] for r in runs]
        lines.append(f"| {arm} | {drop_cells(runs)} | {statistics.mean(ratios):.1f}, {min(ratios):.1f} | "
                     f"{statistics.mean(r['_file ×'] for r in runs):.2f} | "
                     f"{statistics.mean(r['pos B'] for r in runs):,.0f} | {met} of {len(runs)} |")
    return lines


CONTROLS = {"one round's fine-tuning": ROUND, "the recovery fine-tuning": RECOVERY}
CONTROL = "control: one round's fine-tuning, nothing compressed"


def control(name: str, seed: int) -> tuple:
    """A control: the dense model fine-tuned like the recipe, with nothing pruned, clustered or quantized."""
    return (dataclasses.replace(CONTROLS[name], seed=seed),)


def control_lines(controls: dict) -> list[str]:
    lines = ["### Control: the same fine-tuning with nothing compressed", "",
             "What retraining alone costs: the dense model fine-tuned with the recipe's settings, no weight "
             "pruned, clustered or quantized (same seeds, same code path).", "",
             "| fine-tuning of the dense model | drop per seed (pt) | mean ± std (pt) |", "|---|---|---|"]
    for name, runs in controls.items():
        spec = CONTROLS[name]
        lines.append(f"| {name} ({spec.epochs} epochs, lr {spec.lr}) | {drop_cells(runs)} |")
    return lines


def retraining_text(cost: list[float], drops: list[float], lost: tuple[int, int], recipe: float,
                    tuned: float) -> str:
    """Whether retraining alone or the compression costs the accuracy, from the controls on this split and
    over the folds."""
    here = (f"On this split the control table shows the dense model, with nothing compressed, losing {cost[0]:.2f} pt "
            f"after one round's fine-tuning and {cost[1]:.2f} pt after the recovery fine-tuning (means over "
            f"{SEEDS} seeds), against the best recipe's {statistics.mean(drops):.2f} pt after "
            f"{len(round_targets(iterative(0.9)))} rounds plus clustering: the shipped checkpoint sits {lost[0]}-"
            f"{lost[1]} test samples above where retraining on these 1,257 images lands.")
    if tuned > GOAL_DROP / 2:
        return here + (f" Cross-validation confirms it (one round's fine-tuning alone: {tuned:.2f} pt over all 1,797 "
                       "images), so any recipe that retrains spends much of the 0.5 pt budget before compressing "
                       "anything.")
    return here + (f" Cross-validation says that is this split's luck, not a cost of retraining: over all 1,797 "
                   f"images one round's fine-tuning of each fold's dense model moves accuracy by {-tuned:+.2f} pt "
                   f"while the best recipe drops {recipe:.2f} pt"
                   + (", so the cost is the compression's." if recipe > GOAL_DROP else ", within the budget."))


def verdict(rows: list[dict], best_rows: list[dict], drops: list[float], passed: int,
            controls: dict, split_runs: dict[str, list[dict]], cv: crossval.CrossValidation) -> list[str]:
    """What the tables say about the goal, in words (generated, so it cannot drift from the numbers).
    `split_runs`: variant -> its runs over seeds on this split (OBS and the neurons-first recipes)."""
    seeds = len(best_rows)
    share = {k: statistics.mean(r[k] / r["packed B"] for r in best_rows) for k in ("pos B", "idx B", "tables B")}
    ok = [r for r in rows if r["packed ×"] and -r["Δ acc (pt)"] <= GOAL_DROP + 1e-9]
    cost = [statistics.mean(-r["Δ acc (pt)"] for r in runs) for runs in controls.values()]
    samples = [round(-r["Δ acc (pt)"] * 3.6) for runs in controls.values() for r in runs]   # 1 sample = 1/3.6 pt
    lost = (min(samples), max(samples))
    widest = max(ok, key=lambda r: r["packed ×"], default=None)
    reached = passed == seeds
    recipe, tuned, chosen = (crossval.pooled([r for runs in cv.test[arm].values() for r in runs])[3]
                             for arm in (BEST, CONTROL, cv.chosen))
    least_chosen = min(r["ratio"] for runs in cv.test[cv.chosen].values() for r in runs)
    chosen_drops = [-r["Δ acc (pt)"] for r in split_runs.get(cv.chosen, [])]
    small, least = sum(r["packed ×"] >= GOAL_RATIO for r in best_rows), min(r["packed ×"] for r in best_rows)
    size = (f"{GOAL_RATIO:.0f}×+ smaller in every seed" if small == seeds else
            f"{GOAL_RATIO:.0f}×+ smaller in {small} of {seeds} seeds (min {least:.1f}×)")
    cv_text = f" Over all 1,797 images (cross-validated) the best recipe drops {recipe:.2f} pt" + (
        f" and the variant chosen on the validation images ({cv.chosen}) {chosen:.2f} pt" if cv.chosen != BEST
        else "; no variant did better on the validation images")
    if chosen <= GOAL_DROP and least_chosen >= GOAL_RATIO:
        cv_text += (f". The {'chosen variant' if cv.chosen != BEST else 'recipe'} is within the budget there and at "
                    f"least {least_chosen:.1f}× smaller in every run: the goal holds on the cross-validated estimate")
        if chosen_drops and statistics.mean(chosen_drops) > GOAL_DROP:
            cv_text += (f", though not on this split alone ({statistics.mean(chosen_drops):.2f} ± "
                        f"{statistics.stdev(chosen_drops):.2f} pt over {len(chosen_drops)} seeds, tables above)")
    cv_text += "."
    lines = [
        f"**Goal {'reached' if reached else 'not reliably reached'}.** The best recipe is {size}, and its mean "
        f"accuracy drop is {statistics.mean(drops):.2f} pt against a {GOAL_DROP} pt budget (≤{GOAL_DROP} pt in "
        f"{passed} of {seeds} seeds)."
        + (f" In the single-seed candidate table, the largest reduction within the accuracy budget is "
           f"{widest['packed ×']:.1f}× ({widest['candidate']}); the seed table shows how much one seed can "
           "flatter a recipe." if widest else "")
        + thin_text(split_runs[THIN])
        + cv_text,
        "",
        f"Where the bytes go in the best recipe: positions {share['pos B']:.0%}, indices {share['idx B']:.0%}, "
        f"value tables {share['tables B']:.0%} (the coder is ~3% below the i.i.d. entropy of the mask thanks to "
        "per-column density contexts, and within ~1.5% of the order-0 entropy of the indices), so at full width "
        f"a 40× file needs ≥90% sparsity with ≤8 shared values. Its positions cost {position_bits(best_rows):.1f} "
        f"bits per kept weight; with half the neurons removed first ({THIN}) {position_bits(split_runs[THIN]):.1f}, "
        f"so that recipe keeps {statistics.mean(r['_nonzero'] for r in split_runs[THIN]):,.0f} weights in "
        f"{statistics.mean(r['packed B'] for r in split_runs[THIN]):,.0f} packed bytes where the best recipe keeps "
        f"{statistics.mean(r['_nonzero'] for r in best_rows):,.0f} in "
        f"{statistics.mean(r['packed B'] for r in best_rows):,.0f} (means over seeds). "
        + retraining_text(cost, drops, lost, recipe, tuned) +
        " On this split, distillation from the dense model (table above) does not remove the drop, nor did lower "
        "learning rates, "
        "bigger batches, more rounds, shift augmentation, averaging the weights of each fine-tuning's second half "
        "(SWA) or keeping the epoch with the lowest calibration-split loss, in exploration outside this script. "
        "Clustering to 8 values with centroid fine-tuning costs about 0-1 sample more. Training numerics "
        "alone (1 vs 2 torch threads) moved one seed by 3 samples, so on this 360-sample test set the 0.5 pt "
        "(1-sample) budget sits inside the run-to-run noise; the cross-validated drops above do not.",
    ]
    return lines


def position_bits(runs: list[dict]) -> float:
    """Mean bits of entropy-coded position per kept weight."""
    return statistics.mean(8 * r["pos B"] / r["_nonzero"] for r in runs)


def thin_text(runs: list[dict]) -> str:
    """The shipped neurons-first recipe on this split, in one sentence."""
    drops, ratios = [-r["Δ acc (pt)"] for r in runs], [r["packed ×"] for r in runs]
    met = sum(1 for d, x in zip(drops, ratios, strict=True) if d <= GOAL_DROP + 1e-9 and x >= GOAL_RATIO)
    return (f" Removing half the neurons first ({THIN}, `recipes/{THIN_RECIPE.name}`) gives {min(ratios):.1f}×+ in "
            f"every seed (mean {statistics.mean(ratios):.1f}×) at {statistics.mean(drops):.2f} ± "
            f"{statistics.stdev(drops):.2f} pt on this split (both goals in {met} of {len(runs)} seeds), with an ONNX "
            f"file {statistics.mean(r['_file ×'] for r in runs):.1f}× smaller for real.")


def main() -> None:
    import torch

    # one training thread: the result then does not depend on the machine's core count (with 2 threads the
    # same seed-0 recipe lands 1-3 test samples elsewhere; see the section's last paragraph)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    from workbench.environment import environment

    rows = []
    for name, stages in candidates().items():
        print(f"{MODEL}: {name}", file=sys.stderr, flush=True)
        rows.append(measure(name, stages))
    rows.append(reference_int8())
    seeds = [next(r for r in rows if r["candidate"] == BEST)]
    for seed in range(1, SEEDS):
        print(f"{MODEL}: {BEST}, seed {seed}", file=sys.stderr, flush=True)
        seeds.append(measure(f"{BEST}, seed {seed}", best(seed)))
    seeds[0] = {**seeds[0], "candidate": f"{BEST}, seed 0"}
    distilled = {}
    for alpha, temperature in DISTILL:
        print(f"{MODEL}: {BEST} + distill {alpha}, T {temperature}", file=sys.stderr, flush=True)
        distilled[alpha, temperature] = [measure(f"{BEST} + distill {alpha}, seed {seed}",
                                                 best_distilled(seed, alpha, temperature)) for seed in range(SEEDS)]
    ranked = {}
    for sparsity in WANDA:
        print(f"{MODEL}: {BEST}, wanda {sparsity:.0%}", file=sys.stderr, flush=True)
        ranked[sparsity] = [measure(f"{BEST}, wanda {sparsity:.0%}, seed {seed}", best_wanda(seed, sparsity))
                            for seed in range(SEEDS)]
    print(f"{MODEL}: {BEST} {OBS}", file=sys.stderr, flush=True)
    solved = [measure(f"{BEST} {OBS}, seed {seed}", best_obs(seed)) for seed in range(SEEDS)]
    thinned = {}
    for arm, stages in thin_arms().items():
        print(f"{MODEL}: {arm}", file=sys.stderr, flush=True)
        thinned[arm] = [measure(f"{arm}, seed {seed}", stages(seed)) for seed in range(SEEDS)]
    controls = {}
    for name in CONTROLS:
        print(f"{MODEL}: control, {name}", file=sys.stderr, flush=True)
        controls[name] = [measure(f"control: {name}, seed {seed}", control(name, seed)) for seed in range(SEEDS)]
    cv = cross_validate()
    text = render(rows, seeds, environment(1), time.perf_counter() - started, distilled, controls, ranked, solved,
                  thinned, cv)
    print(text)
    write_section("clustering", text)


if __name__ == "__main__":
    main()
