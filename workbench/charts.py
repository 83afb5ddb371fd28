"""Altair chart builders over the DataFrames of workbench.compare (and small numpy arrays for Learn).

Every builder takes plain data and returns an `alt.Chart` / `alt.LayerChart`; nothing here renders,
reads files or imports streamlit, so tests can assert the Vega-Lite spec (`chart.to_dict()`).
Colour carries meaning the same way everywhere: the Pareto frontier is orange, baselines are grey.

Non-goals: choosing which runs to show (workbench.compare), layout (the pages).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

FRONTIER = "#f58518"
BASELINE = "#7f7f7f"
HEIGHT = 260
SIZE_COLUMNS = {"file_kb": "file", "gzip_kb": "gzip", "packed_kb": "weights.packed", "min_storage_kb": "min (estimate)"}
# each size keeps its colour whichever are shown; the estimate is orange, as estimate badges are
SIZE_COLORS = ["#1f4e9a", "#7fb2e5", "#2e9e5b", "#f2a541"]


def _order(df: pd.DataFrame, key: str = "label") -> list[str]:
    return list(dict.fromkeys(df[key].astype(str)))


def _baseline_layer(df: pd.DataFrame, baseline: str, x: str, y_title: str) -> alt.Chart:
    """A dashed rule when every run shares one baseline value, else a grey tick on each run's bar."""
    values = df[baseline].dropna()
    if values.nunique() <= 1:
        ref = pd.DataFrame({"baseline": [float(values.iloc[0]) if len(values) else np.nan]})
        return alt.Chart(ref).mark_rule(color=BASELINE, strokeDash=[6, 4], size=2).encode(
            y=alt.Y("baseline:Q", title=y_title), tooltip=[alt.Tooltip("baseline:Q", format=".4g")])
    return alt.Chart(df).mark_tick(color=BASELINE, thickness=3, size=30).encode(
        x=alt.X(f"{x}:N", sort=_order(df, x)), y=alt.Y(f"{baseline}:Q", title=y_title),
        tooltip=[alt.Tooltip(f"{baseline}:Q", title="baseline", format=".4g")])


def metric_bars(df: pd.DataFrame, value: str, title: str, baseline: str | None = None, fmt: str = ".3g",
                x: str = "label", y_title: str | None = None, labels: bool = False) -> alt.LayerChart:
    """One bar per run for `value` (with its value written over it when `labels`); the baseline (column
    `baseline`) as a rule or ticks."""
    y_title = y_title or title
    bars = alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:N", sort=_order(df, x), title=None, axis=alt.Axis(labelAngle=-40, labelOverlap=False)),
        y=alt.Y(f"{value}:Q", title=y_title),
        color=alt.Color("model:N", legend=None) if "model" in df else alt.value("#4c78a8"),
        tooltip=[alt.Tooltip(f"{x}:N", title="run"), alt.Tooltip(f"{value}:Q", title=title, format=fmt),
                 *([alt.Tooltip("method:N")] if "method" in df else [])],
    )
    layers = [bars]
    if labels:   # the value over each bar: bars start at zero, so 0.972 and 0.994 look alike without it
        layers.append(alt.Chart(df).mark_text(dy=-6, fontSize=10).encode(
            x=alt.X(f"{x}:N", sort=_order(df, x)), y=f"{value}:Q", text=alt.Text(f"{value}:Q", format=fmt)))
    if baseline and baseline in df and df[baseline].notna().any():
        layers.append(_baseline_layer(df, baseline, x, y_title))
    return alt.layer(*layers).properties(title=title, height=HEIGHT)


def accuracy_bars(df: pd.DataFrame, metric: str = "accuracy") -> alt.LayerChart:
    return metric_bars(df, metric, metric, baseline=f"base_{metric}", fmt=".3f", labels=True)


def latency_bars(df: pd.DataFrame, batch: int) -> alt.LayerChart:
    return metric_bars(df, f"ort_ms@{batch}", f"ORT latency @ batch {batch} (ms)", baseline=f"base_ort_ms@{batch}",
                       y_title="median ms")


def size_bars(df: pd.DataFrame) -> alt.LayerChart:
    """File, gzip, weights.packed (clustered runs) and minimum-storage KB side by side per run; the baseline
    file size as a rule. A measure no run has (no clustered run: no packed size) is left out."""
    columns = [c for c in SIZE_COLUMNS if c in df and df[c].notna().any()]
    long = df.melt(id_vars=["label"], value_vars=columns, var_name="measure", value_name="kb").dropna(subset=["kb"])
    long["measure"] = long["measure"].map(SIZE_COLUMNS)
    bars = alt.Chart(long).mark_bar().encode(
        x=alt.X("label:N", sort=_order(df), title=None, axis=alt.Axis(labelAngle=-40, labelOverlap=False)),
        xOffset=alt.XOffset("measure:N", sort=list(SIZE_COLUMNS.values())),
        y=alt.Y("kb:Q", title="size (KB)"),
        color=alt.Color("measure:N", scale=alt.Scale(domain=list(SIZE_COLUMNS.values()), range=SIZE_COLORS),
                        legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["label:N", "measure:N", alt.Tooltip("kb:Q", format=".1f")],
    )
    layers = [bars]
    if "base_file_bytes" in df:
        layers.append(_baseline_layer(df.assign(base_file_kb=df["base_file_bytes"] / 1024), "base_file_kb",
                                      "label", "size (KB)"))
    return alt.layer(*layers).properties(title="size (KB); dashed: baseline file", height=HEIGHT)


def tradeoff_scatter(frame: pd.DataFrame, x: str, y: str = "accuracy", x_title: str | None = None,
                     y_title: str | None = None) -> alt.LayerChart:
    """Runs (circles) and baselines (grey squares); the Pareto frontier (`pareto` column) as an orange
    line through larger points. `frame` comes from workbench.compare.tradeoff_frame."""
    x_enc = alt.X(f"{x}:Q", title=x_title or x, scale=alt.Scale(zero=False))
    y_enc = alt.Y(f"{y}:Q", title=y_title or y, scale=alt.Scale(zero=False))
    tooltip = ["label:N", alt.Tooltip(f"{x}:Q", format=".4g"), alt.Tooltip(f"{y}:Q", format=".4f"), "pareto:N"]
    points = alt.Chart(frame).mark_point(filled=True, size=70, opacity=0.8).encode(
        x=x_enc, y=y_enc, tooltip=tooltip,
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=["run", "baseline"], range=["circle", "square"])),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["run", "baseline"], range=["#4c78a8", BASELINE]),
                        legend=alt.Legend(orient="bottom", title=None)),
    )
    front = frame[frame["pareto"]].sort_values(x)
    line = alt.Chart(front).mark_line(color=FRONTIER, strokeWidth=2).encode(
        x=x_enc, y=y_enc, order=f"{x}:Q", **({"detail": "data:N"} if "data" in front else {}))   # one per data
    best = alt.Chart(front).mark_point(color=FRONTIER, filled=True, size=220, opacity=0.9).encode(
        x=x_enc, y=y_enc, tooltip=tooltip)
    labels = alt.Chart(frame).mark_text(align="left", dx=8, dy=-6, fontSize=10).encode(x=x_enc, y=y_enc, text="label:N")
    title = alt.TitleParams(f"{y_title or y} vs {x_title or x}", subtitle="orange: the Pareto frontier")
    return alt.layer(line, points, best, labels).properties(title=title, height=HEIGHT)


def layer_sparsity_bars(layers: pd.DataFrame) -> alt.Chart:
    """Per-layer sparsity, one bar per run inside each layer group."""
    return alt.Chart(layers).mark_bar().encode(
        x=alt.X("layer:N", sort=_order(layers, "layer"), title=None, axis=alt.Axis(labelAngle=-40, labelOverlap=False)),
        xOffset="run:N",
        y=alt.Y("sparsity:Q", title="sparsity", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["run:N", "layer:N", "op:N", "params:Q", alt.Tooltip("sparsity:Q", format=".1%")],
    ).properties(title="per-layer sparsity of the exported model", height=HEIGHT)


def sweep_heatmap(frame: pd.DataFrame, value: str = "accuracy") -> alt.LayerChart:
    """Sweep cells (sparsity × bits) coloured and labelled by `value`; frame from compare.sweep_frame."""
    frame = frame.sort_values("setting_sparsity").assign(
        sparsity=lambda f: f["setting_sparsity"].map(lambda v: f"{v:.0%}"))
    base = alt.Chart(frame).encode(
        x=alt.X("sparsity:O", title="sparsity", sort=_order(frame, "sparsity"), axis=alt.Axis(labelAngle=0)),
        y=alt.Y("setting_bits:O", title="bits", sort="descending"),
    )
    cells = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="viridis"), title=value),
                                    tooltip=["sparsity:O", "setting_bits:O",
                                             alt.Tooltip(f"{value}:Q", format=".3f")])
    mid = float(frame[value].mean()) if len(frame) else 0.0
    text = base.mark_text(fontSize=13, fontWeight="bold").encode(
        text=alt.Text(f"{value}:Q", format=".3f"),
        color=alt.condition(f"datum['{value}'] < {mid}", alt.value("white"), alt.value("black")))
    return alt.layer(cells, text).properties(title=f"sweep: {value} by sparsity × bits", height=HEIGHT)


def rounds_line(history: pd.DataFrame) -> alt.Chart:
    """Accuracy after each pruning round against the sparsity reached (iterative pruning history)."""
    return alt.Chart(history).mark_line(point=True).encode(
        x=alt.X("sparsity:Q", axis=alt.Axis(format="%"), title="sparsity after the round"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="accuracy (torch, test split)"),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["run:N", "round:Q", alt.Tooltip("sparsity:Q", format=".1%"), alt.Tooltip("accuracy:Q", format=".3f")],
    ).properties(title="accuracy per pruning round", height=HEIGHT)


# --- Learn page explainers ---------------------------------------------------------------------

def magnitude_mask_frame(w: np.ndarray, sparsity: float) -> pd.DataFrame:
    """Cells of a small matrix and whether magnitude pruning to `sparsity` keeps them (smallest |w| go)."""
    k = int(round(sparsity * w.size))
    order = np.argsort(np.abs(w), axis=None, kind="stable")
    kept = np.ones(w.size, dtype=bool)
    kept[order[:k]] = False
    rows, cols = np.indices(w.shape)
    return pd.DataFrame({"row": rows.ravel(), "col": cols.ravel(), "weight": w.ravel(), "kept": kept})


def weight_matrix(frame: pd.DataFrame) -> alt.LayerChart:
    """The matrix as a heatmap: kept cells coloured by value, pruned cells grey with a cross."""
    limit = float(frame["weight"].abs().max() or 1.0)
    base = alt.Chart(frame).encode(x=alt.X("col:O", title=None, axis=None), y=alt.Y("row:O", title=None, axis=None))
    color = alt.Color("weight:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit]), legend=None)
    cells = base.mark_rect(stroke="white").encode(
        color=alt.condition("datum.kept", color, alt.value("#e6e6e6")),
        tooltip=["row:O", "col:O", alt.Tooltip("weight:Q", format=".3f"), "kept:N"])
    text = base.mark_text(fontSize=10).encode(
        text=alt.condition("datum.kept", alt.Text("weight:Q", format=".2f"), alt.value("0")),
        color=alt.condition("datum.kept", alt.value("black"), alt.value("#9a9a9a")))
    return alt.layer(cells, text).properties(height=320, width=320)


def image_grid(grid: np.ndarray, title: str, fmt: str = ".0f", scheme: str = "greens") -> alt.LayerChart:
    """A 2-D array drawn as its image (one cell per pixel, the value written in it): per-pixel statistics of
    an image model's input."""
    rows, cols = np.indices(grid.shape)
    frame = pd.DataFrame({"row": rows.ravel(), "col": cols.ravel(), "value": grid.ravel().astype(float)})
    base = alt.Chart(frame).encode(x=alt.X("col:O", title=None, axis=None), y=alt.Y("row:O", title=None, axis=None))
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color("value:Q", scale=alt.Scale(scheme=scheme), legend=None),
        tooltip=["row:O", "col:O", alt.Tooltip("value:Q", format=fmt)])
    dark = float(np.nanmax(grid)) * 0.6 if grid.size else 0.0
    text = base.mark_text(fontSize=9).encode(
        text=alt.Text("value:Q", format=fmt),
        color=alt.condition(f"datum.value > {dark}", alt.value("white"), alt.value("black")))
    return alt.layer(cells, text).properties(height=220, width=220, title=title)


def quant_levels(w: np.ndarray, bits: int) -> np.ndarray:
    """The values symmetric per-tensor `bits` quantization can represent (as workbench.preview.fake_quantize)."""
    scale = float(np.abs(w).max()) / (2 ** (bits - 1) - 1) or 1.0
    return np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) * scale


def levels_histogram(w: np.ndarray, bits: int, bins: int = 80) -> alt.LayerChart:
    """Histogram of real weights with the representable levels at `bits` drawn as vertical rules."""
    counts, edges = np.histogram(w.ravel(), bins=bins)
    hist = pd.DataFrame({"start": edges[:-1], "end": edges[1:], "count": counts})
    # x/x2 make a ranged bar; without y2 Vega-Lite would draw each as a thin tick at its height
    bars = alt.Chart(hist).mark_bar(color="#4c78a8").encode(
        x=alt.X("start:Q", title="weight value"), x2="end:Q", y=alt.Y("count:Q", title="weights"), y2=alt.datum(0),
        tooltip=[alt.Tooltip("start:Q", format=".3f"), "count:Q"])
    levels = quant_levels(w, bits)
    lo, hi = float(w.min()), float(w.max())
    shown = pd.DataFrame({"level": levels[(levels >= lo) & (levels <= hi)]})
    rules = alt.Chart(shown).mark_rule(color=FRONTIER, opacity=0.7 if bits <= 5 else 0.35).encode(
        x="level:Q", tooltip=[alt.Tooltip("level:Q", format=".4f")])
    return alt.layer(bars, rules).properties(title=f"{2 ** bits} levels at {bits} bits (orange)", height=HEIGHT)


def timing_bars(frame: pd.DataFrame) -> alt.Chart:
    """Median ms of the same dense multiply at different sparsities (compare.dense_matmul_ms rows)."""
    frame = frame.assign(zeros=frame["sparsity"].map(lambda v: f"{v:.0%}"))
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("zeros:O", sort=list(frame["zeros"]), axis=alt.Axis(labelAngle=0), title="zeros in the weight matrix"),
        y=alt.Y("median_ms:Q", title="median time (ms)"),
        tooltip=["zeros:O", alt.Tooltip("median_ms:Q", format=".3f"),
                 alt.Tooltip("mult_adds:Q", format=","), alt.Tooltip("useful_mult_adds:Q", format=",")],
    ).properties(title="dense matmul time vs zeros", height=HEIGHT)


def weight_histogram(weights: dict[str, np.ndarray], bins: int = 80) -> alt.Chart:
    """Histogram of all prunable weight values (log count, so the tails and a spike at zero both show)."""
    values = np.concatenate([w.ravel() for w in weights.values()]) if weights else np.zeros(1)
    limit = float(np.abs(values).max()) or 1.0
    counts, edges = np.histogram(values, bins=bins, range=(-limit, limit))
    frame = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "weights": counts})
    frame = frame[frame.weights > 0]
    return (
        alt.Chart(frame, title="Weight values (all Linear/Conv layers)")
        .mark_bar()
        .encode(
            x=alt.X("from:Q", title="weight value"),
            x2="to:Q",
            y=alt.Y("weights:Q", title="count (log)", scale=alt.Scale(type="log")),
            y2=alt.datum(0.5),  # without a y2, bars with x/x2 draw as thin ticks; 0 is not on a log axis
            tooltip=[alt.Tooltip("from:Q", format=".4f"), alt.Tooltip("to:Q", format=".4f"), "weights:Q"],
        )
        .properties(height=220)
    )


def preview_layer_sparsity(layers: list[dict] | tuple[dict, ...]) -> alt.Chart:
    """Horizontal bars: the fraction of zeros per layer, in model order, with each layer's size."""
    frame = pd.DataFrame(list(layers), columns=["layer", "params", "sparsity"])
    order = list(frame.layer)
    return (
        alt.Chart(frame, title="Sparsity per layer")
        .mark_bar()
        .encode(
            y=alt.Y("layer:N", sort=order, title=None),
            x=alt.X("sparsity:Q", title="zeros", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("params:Q", title="weights", scale=alt.Scale(scheme="blues")),
            tooltip=["layer:N", alt.Tooltip("sparsity:Q", format=".1%"), alt.Tooltip("params:Q", format=",")],
        )
        .properties(height=max(80, 28 * len(order)))
    )


def preview_layer_params(layers: list[dict] | tuple[dict, ...], kind: str = "estimate") -> alt.Chart:
    """Horizontal bars per layer, in model order: its weights now (grey) and after the change (blue; `kind`
    says how that was found: estimate or computed), for methods that change shapes (structured channels,
    students, low-rank factors)."""
    frame = pd.DataFrame(list(layers), columns=["layer", "params", "after"])
    order = list(frame.layer)
    after = f"after ({kind})"
    long = frame.melt(id_vars=["layer"], value_vars=["params", "after"], var_name="when", value_name="weights")
    long["when"] = long["when"].map({"params": "now", "after": after})
    return (
        alt.Chart(long, title=f"Weights per layer: now and {after}")
        .mark_bar()
        .encode(
            y=alt.Y("layer:N", sort=order, title=None),
            yOffset=alt.YOffset("when:N", sort=["now", after]),
            x=alt.X("weights:Q", title="weights"),
            color=alt.Color("when:N", sort=["now", after], scale=alt.Scale(range=[BASELINE, "#4c78a8"]),
                            legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["layer:N", "when:N", alt.Tooltip("weights:Q", format=",")],
        )
        .properties(height=alt.Step(14))   # per bar: a fixed height collapses under the title in Streamlit
    )


# --- per-layer sensitivity ---------------------------------------------------------------------

def sensitivity_heatmap(frame: pd.DataFrame, kind: str = "sparsity", value: str = "drop") -> alt.LayerChart:
    """Layers (rows, model order) × levels (sparsity or bits) coloured and labelled by `value`, the accuracy
    drop in points when that layer alone is changed; frame from `workbench.sensitivity.Sensitivity.frame`."""
    frame = frame.assign(setting=frame["level"].map(lambda v: f"{v:.0%}" if kind == "sparsity" else f"{v}-bit"))
    levels = sorted(frame["level"].unique(), reverse=kind != "sparsity")   # left to right: milder to harsher
    order = [f"{v:.0%}" if kind == "sparsity" else f"{v}-bit" for v in levels]
    base = alt.Chart(frame).encode(
        x=alt.X("setting:O", sort=order, title="sparsity of that layer" if kind == "sparsity" else "weight bits",
                axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:N", sort=_order(frame, "layer"), title=None),
    )
    limit = max(1.0, float(frame[value].max())) if len(frame) else 1.0
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="orangered", domain=[0, limit], clamp=True),
                        title="drop (pt)" if value == "drop" else value),
        tooltip=["layer:N", "params:Q", "setting:O", alt.Tooltip(f"{value}:Q", format=".2f"),
                 *[alt.Tooltip(f"{c}:Q", format=".4f") for c in ("accuracy", "top1_agreement", "kl") if c in frame]])
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text(f"{value}:Q", format=".1f"),
        color=alt.condition(f"datum['{value}'] > {limit / 2}", alt.value("white"), alt.value("black")))
    what = "pruned" if kind == "sparsity" else "rounded"
    return alt.layer(cells, text).properties(
        title=alt.TitleParams(f"accuracy drop when one layer alone is {what}",
                              subtitle="points vs the unchanged model; the other layers untouched"),
        height=max(80, 28 * frame["layer"].nunique()))


def class_heatmap(frame: pd.DataFrame) -> alt.LayerChart:
    """Runs (rows) × classes: each run's accuracy change on that class against its own baseline, in points of
    the class (colour, red = lost) and in samples (text); frame from compare.class_frame."""
    # at least ±10 pt, so one sample of a ~36-sample class (2.8 pt) reads pale, not alarming
    limit = max(10.0, float(frame["change_pt"].abs().max())) if len(frame) else 10.0
    base = alt.Chart(frame).encode(
        x=alt.X("class:O", title="class", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("label:N", sort=_order(frame), title=None))
    cells = base.mark_rect().encode(
        color=alt.Color("change_pt:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit]),
                        title="change (pt of the class)"),
        tooltip=["label:N", "class:O", "samples:Q", alt.Tooltip("baseline_right:Q", title="right before"),
                 alt.Tooltip("right:Q", title="right now"), alt.Tooltip("change_pt:Q", format="+.1f")])
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("change:Q", format="+d"),
        color=alt.condition(f"abs(datum.change_pt) > {limit / 2}", alt.value("white"), alt.value("black")))
    return alt.layer(cells, text).properties(
        title=alt.TitleParams("accuracy change per class", subtitle="vs each run's baseline; text: samples"),
        height=alt.Step(28))   # per run: a fixed height collapsed the rows under the title in Streamlit
