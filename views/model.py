"""Model: pick a sample or upload a model, pick the evaluation data, then see the layers, the measured
baseline and the weight histogram."""

import dataclasses

import pandas as pd
import streamlit as st

from ui import cache, measure_knobs, state, uploads, view
from workbench import charts
from workbench.errors import WorkbenchError
from workbench.models import TRACED, traced_kind
from workbench.significance import smallest_detectable, wilson_interval
from workbench.specs import MODEL_SUFFIXES, DataRef, ModelRef
from workbench.zoo import sample_card, sample_names

st.title("Model")
current, data = state.current_model(), state.current_data()
SOURCES = ["Sample model", "Upload a model file"]
DATA_SOURCES = ["Built-in digits", "Upload .npz / .csv"]
st.session_state.setdefault("model_source", SOURCES[current.sample is None])
st.session_state.setdefault("data_source", DATA_SOURCES[data.builtin is None])

pick_model, pick_data = st.columns(2, gap="large")
with pick_model:
    st.subheader("Model")
    source = st.radio("Source", SOURCES, key="model_source", horizontal=True, persist_state="session")
    if source == SOURCES[0]:
        names = sample_names()
        name = st.selectbox("Sample model", names, index=names.index(current.sample) if current.sample in names else 0)
        if name != current.sample:
            state.set_model(ModelRef(sample=name))
        with view.guard():
            card = sample_card(name)
            st.caption(f"{card['architecture']} · {card['parameters']:,} parameters · "
                       f"trained to {card['test_accuracy']:.4f} test accuracy (seeded; see sample_models/)")
    else:
        upload = st.file_uploader("ONNX, torch.export (.pt2), TorchScript (.pt/.ts) or safetensors",
                                  type=[s.lstrip(".") for s in MODEL_SUFFIXES], key="model_upload")
        arch = st.selectbox("Architecture (safetensors only)", sample_names(), key="model_arch")
        if upload is not None:
            with view.guard():
                ref = uploads.accept_model(upload.getvalue(), upload.name, state.uploads_dir(), arch)
                if ref != current:
                    state.set_model(ref)
                st.success(f"{upload.name}: loaded. Nothing leaves this machine; pickles are never loaded.")
                if kind := traced_kind(cache.model(ref).loaded.module):
                    st.caption(f"This is {kind}: {TRACED[kind][1]} work on it as it is. Structured pruning, "
                               "distillation, low-rank, QAT and transfer need nn.Linear/Conv modules: a run "
                               "converts it to them through its ONNX export where that converts (see under "
                               "Layers).")
        elif current.path:
            st.caption(f"Current model: **{uploads.model_label(current)}** (uploaded earlier)")
with pick_data:
    st.subheader("Evaluation data")
    data_source = st.radio("Data", DATA_SOURCES, key="data_source", horizontal=True, persist_state="session")
    if data_source == DATA_SOURCES[0]:
        if data.builtin is None:
            state.set_data(DataRef())
        st.caption("scikit-learn digits, 8×8: 1257 train / 180 calibration / 360 test, stratified, seed 0.")
    else:
        upload = st.file_uploader("`.npz` with x (and y), or one array per model input named like it; `.csv` with "
                                  "numeric columns", type=["npz", "csv"], key="data_upload")
        label = st.text_input("Label column (CSV)", key="data_label", placeholder="auto: label, y, target or class")
        try:   # a .npz may name one array per model input
            inputs = tuple(cache.model(state.current_model()).loaded.input_names() or ())
        except WorkbenchError:
            inputs = ()   # the model column says what is wrong with the model
        if upload is not None:
            with view.guard():
                ref = uploads.accept_data(upload.getvalue(), upload.name, state.uploads_dir(), label, inputs)
                if ref.path != data.path or ref.label_column != data.label_column:
                    state.set_data(dataclasses.replace(ref, train_path=data.train_path if data.path else None))
                st.caption("Without labels, runs report fidelity to this model instead of accuracy.")
        evaluation = state.current_data()
        if evaluation.path:
            training = st.file_uploader(
                "Training data (optional): labelled, shaped like the evaluation data", type=["npz", "csv"],
                key="train_upload", help="lets runs train: recovery fine-tuning, distillation, quantization-aware "
                                         "training and re-training the head for your classes; static int8 then "
                                         "calibrates on it instead of on the evaluation data")
            if training is not None:
                with view.guard():
                    ref = uploads.accept_training_data(training.getvalue(), training.name, state.uploads_dir(),
                                                       evaluation, inputs)
                    if ref != evaluation:
                        state.set_data(ref)
            elif evaluation.train_path and st.button("Stop training on it", key="drop_train",
                                                     help="runs then only score the evaluation data"):
                state.set_data(dataclasses.replace(evaluation, train_path=None))
            if train_path := state.current_data().train_path:
                st.caption(f"Training on **{uploads.display_name(train_path)}**; the evaluation data is only scored.")
            else:
                st.caption("Without training data, runs cannot fine-tune: one-shot pruning, quantization and "
                           "low-rank still work.")
if (state.current_model(), state.current_data()) != (current, data):
    st.rerun()   # the sidebar, drawn before this page, names the model and the data: draw it again

ref, data = state.current_model(), state.current_data()
label = uploads.model_label(ref)
st.divider()
st.subheader(f"Layers of {label}")
with view.guard():
    summary = cache.summary(ref)
    table = pd.DataFrame(summary.table())
    if table.empty:
        st.info("No Conv, Gemm or MatMul layer with its weights in the model: pruning, clustering, low-rank and the "
                "per-layer views have nothing to act on.")
    else:
        table["weight_shape"] = table["weight_shape"].map(lambda shape: " × ".join(map(str, shape)))
        st.dataframe(table, hide_index=True, column_config={
            "share": st.column_config.NumberColumn("share", format="percent", help="of all parameters"),
            "macs": st.column_config.NumberColumn("MACs", format="localized", help="multiply-accumulates per sample"),
            "params": st.column_config.NumberColumn("params", format="localized"),
            "sparsity": st.column_config.NumberColumn("zeros", format="percent"),
        })
    macs = f"{summary.total_macs:,} MACs per sample" if summary.total_macs else "MACs unknown (input shape unknown)"
    st.caption(f"{summary.total_params:,} parameters, {summary.weight_params:,} of them in the layers above "
               f"(what pruning acts on) · {macs}")
    held = cache.model(ref)
    traced = traced_kind(held.loaded.module)
    if held.loaded.kind == "onnx" or traced:
        converted, why = cache.conversion(ref, data)
        if converted is not None:
            st.caption(f"{view.badge('measured')} Converts to torch modules for training and removing channels "
                       f"({converted.fidelity()} on the test samples): runs of those methods use the conversion, "
                       "and measure this model as their baseline.")
        elif traced:
            st.caption(f"Does not convert to torch modules, so structured pruning, distillation, low-rank, QAT and "
                       f"transfer are unavailable for it: {why}. {TRACED[traced][1].capitalize()} work on it as it "
                       "is.")
        else:
            st.caption(f"Does not convert to torch modules, so fine-tuning, structured pruning, QAT, distillation "
                       f"and transfer are unavailable for it: {why}. Pruning, quantization, clustering and "
                       "low-rank work on it as it is.")

st.subheader("Baseline")
with view.guard():
    measure = measure_knobs.section(cache.summary(ref).total_macs, cache.model(ref).loaded.module is not None)
    with st.spinner("Exporting to ONNX and measuring with ONNX Runtime…"):
        m = cache.baseline(ref, data, measure)
    st.markdown(f"{view.badge('measured')} ONNX Runtime (CPU) on {m.eval_samples} test samples, "
                f"{m.latency[0].threads} thread(s); the same way every run launched now measures its baseline.")
    cols = st.columns(2 + len(m.latency) + 1)
    if "accuracy" in m.metrics:
        low, high = wilson_interval(m.metrics["accuracy"], m.eval_samples)
        cols[0].metric("accuracy", f"{m.metrics['accuracy']:.4f}", help=f"95% interval {low:.4f}–{high:.4f} "
                       f"(Wilson) on {m.eval_samples:,} samples")
    else:
        cols[0].metric("accuracy", "no labels", help="runs report fidelity (agreement with this model)")
    for col, stats in zip(cols[1:], m.latency, strict=False):
        eager = m.latency_at(stats.batch_size, "torch-eager")
        col.metric(f"latency @ batch {stats.batch_size}", f"{stats.median_ms:.3f} ms",
                   help=f"ORT median of {stats.repeats} calls; p90 {stats.p90_ms:.3f} ms" +
                   (f"; torch eager {eager.median_ms:.3f} ms" if eager else ""))
    cols[-2].metric("file size (ONNX)", view.kb(m.size.file_bytes))
    cols[-1].metric("gzipped", view.kb(m.size.gzip_bytes))
    if "accuracy" in m.metrics:
        few = smallest_detectable()
        st.caption(f"One test sample is {100 / m.eval_samples:.2f} pt of accuracy. Runs count the samples that went "
                   f"from right to wrong, and back, against this baseline: a change of fewer than {few} samples "
                   f"({100 * few / m.eval_samples:.2f} pt here) can never be told from chance (exact McNemar test).")
    if m.torch_latency:
        st.caption("torch eager, for reference: " + ", ".join(
            f"{s.median_ms:.3f} ms @ batch {s.batch_size}" for s in m.torch_latency))

st.subheader("Weights")
with view.guard():
    weights, _ = cache.weights(ref)
    st.altair_chart(charts.weight_histogram(weights), width="stretch")
    st.caption("Magnitude pruning removes the values nearest zero first; quantization maps this range to "
               "2^bits levels. Try both on the Compress page.")
st.page_link("views/compress.py", label="Next: compress it", icon="🗜️")
