"""Home: what the workbench does, a three-step quick start, recent runs, and what the badges mean."""

import streamlit as st

from ui import cache, state, uploads, view

st.title("Compression Workbench")
st.markdown(
    "Make a neural network smaller and faster, and see what each choice costs and buys, measured on this "
    "machine: accuracy, ONNX Runtime latency and file size for the original and for every compressed variant.  \n"
    "A 90%-pruned model is often no smaller on disk and no faster, and int8 can be slower than float, so every "
    "gain is labelled **real** or **simulated**, with the reason."
)

st.subheader("Quick start")
one, two, three = st.columns(3)
with one:
    st.markdown("**1 · Pick a model**  \nA sample digits model, or your own ONNX, torch.export, TorchScript or "
                "safetensors file; the built-in digits, or your own data (with a training file to fine-tune on). "
                "See its layers and its measured baseline.")
    st.page_link("views/model.py", label="Pick a model", icon="🧠")
with two:
    st.markdown("**2 · Drag the sliders**  \nSparsity and bitwidth. The preview updates at once: sizes, nonzeros, "
                "one-shot accuracy, and which gains would be real.")
    st.page_link("views/compress.py", label="Compress", icon="🗜️")
with three:
    st.markdown("**3 · Launch and compare**  \nLaunch a run or a sweep; it runs in the background. Compare the "
                "variants side by side, with the Pareto frontier.")
    st.page_link("views/compare.py", label="Compare", icon="📊")
st.caption(f"Current model: **{uploads.model_label(state.current_model())}** (the sidebar always shows it)")

st.subheader("Recent runs")
with view.guard():
    runs = cache.store().list(limit=8)
    if runs:
        st.dataframe(view.runs_frame(runs), hide_index=True, column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        })
        st.page_link("views/runs.py", label="All runs", icon="🏃")
    else:
        st.info("No runs yet. Pick a model, move a slider, press **Launch run**.")

st.subheader("Measured, not assumed")
st.markdown(
    f"- {view.badge('measured')} the number comes from running the model: accuracy on the test split, "
    "ONNX Runtime latency (median of many calls at a fixed thread count), the bytes of the exported file.\n"
    f"- {view.badge('computed')} counted exactly from the weights: parameters, nonzeros, bits per weight.\n"
    f"- {view.badge('estimate')} computed, not measured: e.g. the storage a purpose-built sparse format "
    "would need, or a preview's gzip size.\n"
    f"- {view.badge('real')} the gain exists in the artifact: a smaller file, a faster kernel.\n"
    f"- {view.badge('simulated')} the effect on accuracy is real but the gain is not: masked zeros stored "
    "densely, or fake-quantized weights kept in float32.\n"
    "- A latency change only counts when it is outside the run-to-run spread; an accuracy change only when more "
    "test samples changed between right and wrong than chance explains (exact McNemar test: *within noise* "
    "otherwise)."
)
