"""Compare: finished runs side by side — cards with deltas (and the packed size of clustered runs), charts, the
Pareto frontier, accuracy per pruning round, searches under an accuracy bar, why a run is not faster, every
number, downloads."""

import streamlit as st

from ui import runs_view as rv
from ui import view
from workbench import charts, compare

SIZE_HELP = ("gzip: the exported ONNX file compressed (what masked zeros shrink); raw file: the ONNX file as "
             "written; stored (with a clustered run): the smaller of its ONNX file and its weights.packed plus "
             "the network it needs (graph.onnx, gzipped), the bytes the run really keeps (the baseline: its file); "
             "minimum storage: an estimate of what a sparse, "
             "bit-packed format would need")

st.title("Compare")
store = rv.get_store()
done = store.list(status="succeeded", limit=500)
if not done:
    st.info("No finished runs yet. Launch a run or a sweep on **Compress**; it appears here when it succeeds.")
    st.stop()

by_id = {r.id: r for r in done}
ids = st.multiselect("Runs to compare", list(by_id), default=rv.selected_ids(list(by_id), rv.default_ids(store)),
                     format_func=lambda i: f"#{i} {by_id[i].name}", key="compare_runs",
                     help="Opens with the latest sweep, else the last runs of the current model.")
rv.remember_selection(ids)
if not ids:
    st.info("Pick one or more runs.")
    st.stop()

runs = [by_id[i] for i in sorted(ids)]
reports = rv.reports(store, runs)
df = rv.compare_frame(store, runs)
if len(groups := compare.data_groups(df)) > 1:
    st.warning(f"These runs were scored on {len(groups)} different data ({', '.join(groups)}): accuracies compare "
               "only within the same data, so each has its own baseline and Pareto frontier. Deltas are against "
               "each run's own baseline.")
if len(timed := compare.timing_groups(df)) > 1:
    st.warning(f"These runs were timed under {len(timed)} different conditions ({'; '.join(timed)}): absolute "
               "latencies compare only within the same conditions. Each run's speedups are against its own "
               "baseline, timed in that run.")
metric = compare.quality_metric(df)
batches = compare.batch_sizes(df) or [1]
batch = st.radio("Latency at batch size", batches, horizontal=True, key="compare_batch")
claims = {i: compare.claims_frame(r).to_dict("records") for i, r in reports.items()}

with view.guard():
    rv.metric_cards(df, claims, batch)
st.caption("Deltas are against each run's own baseline, measured in the same run under the same conditions. An "
           "accuracy delta marked *within noise* could be chance: too few test samples changed between right and "
           "wrong (exact McNemar test; `acc_change` in the table). "
           "Badges: :green-badge[REAL] a gain measured on this machine · :red-badge[REAL (worse)] a measured loss · "
           ":orange-badge[SIMULATED] fake-quant or masked zeros · :gray-badge[NONE] no change beyond noise "
           "(the reasons are under Claims and downloads).")

st.subheader("Accuracy, size and latency")
left, middle, right = st.columns(3)
with view.guard():
    left.altair_chart(charts.accuracy_bars(df, metric), width="stretch")
    middle.altair_chart(charts.size_bars(df), width="stretch")
    right.altair_chart(charts.latency_bars(df, batch), width="stretch")

st.subheader("Trade-offs")
packed = "packed_kb" in df and df["packed_kb"].notna().any()   # a clustered run wrote weights.packed
size_col = st.radio("Size measure", ["gzip_kb", "file_kb", *(["stored_kb"] if packed else []), "min_storage_kb"],
                    horizontal=True, key="compare_size", help=SIZE_HELP,
                    format_func=lambda c: {"gzip_kb": "gzip", "file_kb": "raw file", "stored_kb": "stored",
                                           "min_storage_kb": "minimum storage (estimate)"}[c])
left, right, lat = *st.columns(2), f"ort_ms@{batch}"
with view.guard():
    left.altair_chart(charts.tradeoff_scatter(compare.tradeoff_frame(df, size_col, metric), size_col, metric,
                                              x_title=f"{size_col.removesuffix('_kb')} size (KB)"), width="stretch")
    right.altair_chart(charts.tradeoff_scatter(compare.tradeoff_frame(df, lat, metric), lat, metric,
                                               x_title=f"ORT latency @ batch {batch} (ms)"), width="stretch")
st.caption("Orange: the Pareto frontier — no other run (or the baseline) is both smaller/faster and more accurate. "
           "Latency differences inside the run-to-run spread are noise: check the claims below.")

with view.guard():
    by_class = compare.class_frame(df, reports)
if not by_class.empty:
    st.subheader("Which classes pay")
    st.altair_chart(charts.class_heatmap(by_class), width="stretch")
    st.caption("An average hides where accuracy went: compressed models often lose some classes far more than "
               "others (Hooker et al., 2019). Each cell counts the test samples of that class the run got right "
               "against its own baseline. A class holds few samples (about 36 in the digits split), so one sample "
               f"is several points of it. At most {compare.CLASS_LIMIT} classes: those whose answers moved most.")

for sweep_id in rv.searches(store, df):
    st.subheader("Search under an accuracy bar")
    with view.guard():
        rv.search_panel(store, sweep_id)

with view.guard():
    layers, history, sweep = rv.layers(store, df), rv.history(df, reports), compare.sweep_rows(df)
    extra = [charts.layer_sparsity_bars(layers)] if not layers.empty else []
    extra += [charts.sweep_heatmap(compare.sweep_frame(sweep, metric), metric)] if not sweep.empty else []
    extra += [charts.rounds_line(history)] if not history.empty else []
    if extra:
        st.subheader("Per layer, per sweep setting, per pruning round")
        for col, chart in zip(st.columns(len(extra)), extra, strict=True):
            col.altair_chart(chart, width="stretch")

st.subheader("Every number")
shown, config = rv.table(df)
st.dataframe(shown, column_config=config, hide_index=True, width="stretch")
st.download_button("Download table (CSV)", df.to_csv(index=False), "comparison.csv", "text/csv",
                   on_click="ignore", key="compare_csv")

repeats, pairs = compare.seed_summary(df), compare.random_baseline_frame(df)
repeats = repeats[repeats["n"] > 1] if "n" in repeats else repeats
if not repeats.empty:
    st.subheader("Over seeds: mean ± std")
    st.dataframe(repeats.drop(columns="config"), hide_index=True, width="stretch")
    st.caption("Runs whose recipes differ only by their seed, folded together: n runs, sample std. A gap smaller "
               "than the std is not a difference (one test sample of the digits split is 0.28 points).")
if not pairs.empty:
    st.subheader("Ranked vs random pruning")
    st.dataframe(pairs.drop(columns="pair", errors="ignore"), hide_index=True, width="stretch")
    st.caption("The same recipe with random pruning instead of its `ranking` (magnitude, lamp or wanda): "
               "`advantage` is what choosing the weights buys over chance at that sparsity (ShrinkBench's sanity "
               "check).")

if len(df) > 1:
    st.subheader("Run against run, sample by sample")
    labels = dict(zip(df["id"], df["label"], strict=True))
    reference = st.selectbox("Against", list(labels), format_func=labels.get, key="compare_versus",
                             help="The other runs are set against this one on the same test samples.")
    with view.guard():
        st.dataframe(compare.versus_frame(df, reports, reference), hide_index=True, width="stretch",
                     column_config={"vs reference (pt)": st.column_config.NumberColumn(format="%+.2f"),
                                    "p_value": st.column_config.NumberColumn("McNemar p", format="%.3f")})
    st.caption("`went_wrong`: test samples this run got wrong and the reference right; `went_right`: the reverse. "
               "If both runs were equally good each of these would be a coin toss; the exact McNemar test says how "
               "likely a split this lopsided is (below 0.05: beyond noise). Seeds and a larger test set settle "
               "what one split cannot.")

st.subheader("Why isn't it faster?")
st.caption("Plain-words findings per run from its report and its model: the measured verdict, then the causes, "
           "what works and what to try. Open one to read it (the first time takes a moment).")
for row in df.to_dict("records"):
    why = st.expander(f"{row['label']} — {row['method']}", key=f"why_{row['id']}", on_change="rerun")
    if why.open:
        with why, view.guard():
            rv.why_not_faster(store, row["id"])

st.subheader("Claims and downloads")
for row in df.to_dict("records"):
    with st.expander(f"{row['label']} — {row['method']}"):
        st.markdown(rv.badges(claims.get(row["id"], [])))
        for claim in claims.get(row["id"], []):
            st.markdown(f"- **{claim['aspect']}** ({claim['kind']}): {claim['reason']}")
        if notes := compare.stage_notes(reports.get(row["id"])):
            st.markdown("**What each stage did**\n" + "\n".join(f"- *{stage}*: {note}" for stage, note in notes))
        model_col, torch_col, recipe_col, script_col, packed_col, graph_col = st.columns(6)
        rv.download(model_col, store, row["id"], "model", "Compressed model (model.onnx)", f"run-{row['id']}.onnx")
        if rv.has_artifact(store, row["id"], "torch"):
            rv.download(torch_col, store, row["id"], "torch", "PyTorch model (model.pt2)", f"run-{row['id']}.pt2",
                        help="torch.export archive: torch.export.load(path).module() runs it without the "
                             "model's code; the workbench loads it as an upload too")
        rv.download(recipe_col, store, row["id"], "recipe", "Recipe (recipe.yaml)", f"run-{row['id']}.yaml")
        rv.script_download(script_col, store, row["id"])
        if rv.has_artifact(store, row["id"], "packed"):
            rv.download(packed_col, store, row["id"], "packed", "Packed weights (weights.packed)",
                        f"run-{row['id']}.packed")
        if rv.has_artifact(store, row["id"], "graph"):
            rv.download(graph_col, store, row["id"], "graph", "Network without them (graph.onnx)",
                        f"run-{row['id']}-graph.onnx",
                        help=f"`workbench unpack run-{row['id']}-graph.onnx run-{row['id']}.packed -o model.onnx` "
                             "restores the compressed model from the two files")
