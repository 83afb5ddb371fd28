"""Global magnitude vs LAMP (`prune.method: lamp`) vs Wanda (`prune.method: wanda`), one shot.

For each sample and sparsity, the same global prune ranked by |w|, by LAMP's per-layer rescaled score (Lee et
al. 2021) and by Wanda's |w| times input RMS (Sun et al. 2024): the mask alone, the mask with OBS
reconstruction (`reconstruct: obs`, no labels), and the mask with 5 epochs of labelled recovery. digits-cnn
again as its ONNX export, where BatchNorm is folded into the convolution weights: the case where a global |w|
ranking meets layers of different scale. Every cell is one `run_pipeline` call: accuracy with ONNX Runtime on
the 360-sample test split, against the baseline measured in the same run; `emptiest` is the largest share of
one layer's weights the mask takes.

    python bench/lamp_benchmark.py      # ~14 min on 2 vCPUs; rewrites its section of BENCHMARKS.md
"""

from __future__ import annotations

import datetime
import logging
import tempfile
import time
from pathlib import Path

import onnx
import torch
from reconstruct_benchmark import measure as accuracy
from sections import progress_logging, write_section

from workbench import zoo
from workbench.activations import onnx_input_rms, torch_input_rms
from workbench.data import digits_splits
from workbench.environment import environment
from workbench.export import export_onnx
from workbench.pruning import compute_masks, onnx_weights, torch_weights
from workbench.specs import FinetuneSpec, ModelRef, PruneSpec

GRID = {"digits-mlp": (0.8, 0.9, 0.95), "digits-cnn": (0.8, 0.9, 0.95), "digits-vit": (0.7, 0.8, 0.9)}
ONNX_MODEL = "digits-cnn"
METHODS = ("magnitude", "lamp", "wanda")
RECOVERY = FinetuneSpec(epochs=5, lr=0.01, label_smoothing=0.1)


def emptiest(weights: dict, prune: PruneSpec, rms: dict) -> tuple[float, str]:
    masks = compute_masks(weights, prune, rms=rms)
    return max((1 - float(m.mean()), n.removesuffix(".weight")) for n, m in masks.items())


def row(model: str, ref: ModelRef, weights: dict, rms: dict, sparsity: float, recovery: bool) -> dict:
    out: dict = {"model": model, "sparsity": sparsity}
    for method in METHODS:
        prune = PruneSpec(sparsity=sparsity, method=method)
        out["baseline"], out[method] = accuracy(ref, (prune,))
        out[f"{method} obs"] = accuracy(ref, (PruneSpec(sparsity=sparsity, method=method, reconstruct="obs"),))[1]
        out[f"{method} rec"] = accuracy(ref, (prune, RECOVERY))[1] if recovery else None
        out[f"{method} emptiest"] = emptiest(weights, prune, rms)
        logging.info("%s %.0f%% %s: %.4f, obs %.4f", model, 100 * sparsity, method, out[method], out[f"{method} obs"])
    return out


LOCAL = tuple(f"{method}/{scope}" for scope in ("layer", "unit") for method in ("magnitude", "wanda"))


def layer_row(model: str, sparsity: float) -> dict:
    """Magnitude vs Wanda with every layer (`scope: layer`) or every output unit (`scope: unit`) pruned to the
    same sparsity, mask alone and + obs."""
    ref, out = ModelRef(sample=model), {"model": model, "sparsity": sparsity}
    for key in LOCAL:
        method, scope = key.split("/")
        out[key] = accuracy(ref, (PruneSpec(sparsity=sparsity, method=method, scope=scope),))[1]
        out[f"{key} obs"] = accuracy(ref, (PruneSpec(sparsity=sparsity, method=method, scope=scope,
                                                     reconstruct="obs"),))[1]
        logging.info("%s %.0f%% %s: %.4f, obs %.4f", model, 100 * sparsity, key, out[key], out[f"{key} obs"])
    return out


def run(folder: Path) -> list[dict]:
    rows, train = [], digits_splits().train     # wanda reads the training inputs, as the prune stage does
    for model, sparsities in GRID.items():
        module = zoo.load_sample(model)
        weights = {n: p.detach().numpy() for n, p in torch_weights(module).items()}
        rms, _ = torch_input_rms(module, weights, train.inputs)
        rows += [row(model, ModelRef(sample=model), weights, rms, s, True) for s in sparsities]
    module = zoo.load_sample(ONNX_MODEL)
    exported = export_onnx(module, (torch.from_numpy(digits_splits().test.inputs[0][:2]),))
    path = folder / f"{ONNX_MODEL}.onnx"
    onnx.save(exported, path)
    rms, _ = onnx_input_rms(exported, onnx_weights(exported), train)
    rows += [row(f"{ONNX_MODEL} (ONNX, BatchNorm folded)", ModelRef(path=str(path)), onnx_weights(exported), rms, s,
                 False) for s in GRID[ONNX_MODEL]]
    return rows


def cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def table_row(r: dict) -> str:
    cells = [r["model"], f"{r['sparsity']:.0%}", f"{r['baseline']:.4f}"]
    for suffix in ("", " obs", " rec"):
        cells += [cell(r[f"{m}{suffix}"]) for m in METHODS]
    cells += [f"{r[f'{m} emptiest'][0]:.1%} ({r[f'{m} emptiest'][1]})" for m in METHODS]
    return "| " + " | ".join(cells) + " |"


def findings(rows: list[dict]) -> list[str]:
    """Plain-words reading of the table, computed from it."""
    out = []
    readings = (("", "the mask alone"), (" obs", "with OBS reconstruction"), (" rec", "with 5 epochs of recovery"))
    for method, label in (("lamp", "LAMP"), ("wanda", "Wanda")):
        for suffix, what in readings:
            pairs = [(r[f"magnitude{suffix}"], r[f"{method}{suffix}"]) for r in rows
                     if r[f"{method}{suffix}"] is not None]
            wins = sum(other > mag for mag, other in pairs)
            losses = sum(other < mag for mag, other in pairs)
            mean = sum(other - mag for mag, other in pairs) / len(pairs)
            out.append(f"- {label} vs magnitude, {what}: ahead in {wins}, behind in {losses} of {len(pairs)} settings "
                       f"(mean {100 * mean:+.2f} pt).")
    folded = [r for r in rows if "ONNX" in r["model"]]
    if folded:
        r = folded[0]
        out.append(f"- {r['model']} at {r['sparsity']:.0%}: magnitude takes {r['magnitude emptiest'][0]:.1%} of "
                   f"{r['magnitude emptiest'][1]} and the mask scores {r['magnitude']:.4f}; LAMP's emptiest layer "
                   f"loses {r['lamp emptiest'][0]:.1%} and the mask scores {r['lamp']:.4f}. The folded BatchNorm "
                   "rescales each convolution, and a global |w| ranking then reads scale as importance; LAMP "
                   "compares weights within their layer first.")
    torch_rows = [r for r in rows if "ONNX" not in r["model"]]
    ahead = sum(r["lamp"] > r["magnitude"] for r in torch_rows)
    behind = sum(r["lamp"] < r["magnitude"] for r in torch_rows)
    if ahead and behind:
        out.append("- On the torch models, whose layers share a scale, neither ranking wins everywhere (LAMP ahead "
                   f"in {ahead}, behind in {behind} of {len(torch_rows)} masks): LAMP spreads the cut differently "
                   "over the layers (the emptiest columns), which helps some settings and hurts others. It is the "
                   "ranking for layers of different scale (folded BatchNorm, mixed architectures) or where the "
                   "emptied-layer warning names a layer.")
    else:
        out.append(f"- On the torch models LAMP's mask is {'ahead' if ahead else 'never ahead'} in {ahead} of "
                   f"{len(torch_rows)} settings and behind in {behind}.")
    return out + wanda_findings(rows)


def wanda_findings(rows: list[dict]) -> list[str]:
    """Where Wanda's mask is ahead of magnitude's, model by model, and what its emptiest layer says."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        gaps = ", ".join(f"{r['sparsity']:.0%} {100 * (r['wanda'] - r['magnitude']):+.1f} pt" for r in mine)
        worst = max(mine, key=lambda r: r["wanda emptiest"][0])
        out.append(f"- Wanda's mask vs magnitude's on {model}: {gaps}; its emptiest layer "
                   f"({worst['wanda emptiest'][1]}, {worst['wanda emptiest'][0]:.1%} at {worst['sparsity']:.0%}).")
    emptied = [r for r in rows if r["wanda emptiest"][0] >= 1.0]
    if emptied:
        where = ", ".join(f"{r['model']} {r['wanda emptiest'][1]} at {r['sparsity']:.0%}" for r in emptied)
        out.append(f"- A global Wanda cut removes every weight of a layer in {len(emptied)} of {len(rows)} settings "
                   f"({where}): |w| times input RMS also compares the input scales of different layers, and a layer "
                   "whose inputs are small against the others' loses everything; reconstruction and recovery cannot "
                   "bring an empty layer back (the run's emptied-layer warning names it). Within each layer "
                   "(below) that cannot happen.")
    return out


def layer_lines(rows: list[dict]) -> list[str]:
    """The layer-scope table and its reading."""
    keys = [*LOCAL, *(f"{k} obs" for k in LOCAL)]
    lines = ["### Within each layer (`scope: layer`) or each output unit (`scope: unit`)", "",
             "Every layer, or every output unit (a neuron, a channel: the comparison group of the Wanda paper), "
             "pruned to the same sparsity, so no ranking compares weights of different layers.", "",
             "| model | sparsity | " + " | ".join(k.replace(" obs", " + obs") for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    lines += [f"| {r['model']} | {r['sparsity']:.0%} | " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    lines.append("")
    for scope in ("layer", "unit"):
        for suffix, what in (("", "the mask alone"), (" obs", "with OBS reconstruction")):
            gaps = [r[f"wanda/{scope}{suffix}"] - r[f"magnitude/{scope}{suffix}"] for r in rows]
            lines.append(f"- Wanda vs magnitude, scope {scope}, {what}: ahead in {sum(g > 0 for g in gaps)}, behind "
                         f"in {sum(g < 0 for g in gaps)} of {len(gaps)} settings (mean "
                         f"{100 * sum(gaps) / len(gaps):+.2f} pt).")
    same = all(r["wanda/unit obs"] == r["magnitude/unit obs"] for r in rows)
    if same:
        lines.append("- With scope unit both rankings give every unit the same count, and OBS chooses which weights "
                     "go itself: the two reconstructed masks score the same in every setting.")
    best = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    top = max(best, key=best.get)
    lines.append(f"- Highest mean accuracy over these settings: {top.replace(' obs', ' + obs')} "
                 f"({best[top]:.4f}); the masks alone average {', '.join(f'{k} {best[k]:.4f}' for k in LOCAL)}.")
    return lines


def render(rows: list[dict], env: dict, minutes: float, layer_rows: list[dict]) -> str:
    v = env["versions"]
    head = " | ".join(f"{m}{s}" for s in ("", " + obs", " + 5 ep") for m in METHODS)
    return "\n".join([
        "## Global ranking: magnitude vs LAMP vs Wanda (one-shot, layers of different scale)",
        "",
        f"Generated by `python bench/lamp_benchmark.py` on {datetime.date.today()} in {minutes:.1f} min. "
        f"CPU: {env['cpu_model']} ({env['logical_cores']} logical cores); onnxruntime {v['onnxruntime']}, "
        f"torch {v['torch']}.",
        "",
        "Global one-shot pruning ranked by |w| (`method: magnitude`), by LAMP (`method: lamp`: w² over the sum of "
        "w² of the weights of its layer at least as large, Lee et al. 2021) or by Wanda (`method: wanda`: |w| times "
        "the RMS of the input it multiplies on the 1,257 training images, no labels; Sun et al. 2024). `+ obs`: the "
        "same mask with each unit's weights chosen and solved by Optimal Brain Surgeon on the training inputs (no "
        "labels). `+ 5 ep`: "
        f"the mask then 5 epochs of recovery with labels (Adam lr {RECOVERY.lr}, label smoothing "
        f"{RECOVERY.label_smoothing}; torch models only). Accuracy with ONNX Runtime on 360 test samples (one sample "
        "= 0.28 pt). `emptiest`: the largest share of one layer's weights the mask takes.",
        "",
        f"| model | sparsity | baseline | {head} | " + " | ".join(f"emptiest, {m}" for m in METHODS) + " |",
        "|---|---|---|" + "---|" * (4 * len(METHODS)),
        *(table_row(r) for r in rows),
        "",
        *findings(rows),
        "",
        *layer_lines(layer_rows),
    ])


def main() -> None:
    progress_logging()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        rows = run(Path(folder))
    layer_rows = [layer_row(model, s) for model, sparsities in GRID.items() for s in sparsities]
    write_section("lamp", render(rows, environment(1), (time.perf_counter() - started) / 60, layer_rows))


if __name__ == "__main__":
    main()
