"""Learn: four short explainers for workshops, each on real weights or real measurements."""

import numpy as np
import pandas as pd
import streamlit as st

from ui import cache, state, view
from ui import runs_view as rv
from workbench import charts, compare
from workbench.environment import FLAGS, environment
from workbench.preview import fake_quantize
from workbench.specs import ModelRef
from workbench.zoo import sample_names

st.title("Learn")
st.caption("Four ideas behind the numbers on Compare, small enough to show in a workshop.")
current = state.current_model().sample
sample = st.selectbox("Weights from the sample model", sample_names(), key="learn_sample",
                      index=sample_names().index(current) if current in sample_names() else 0)
view.model_or_stop(ModelRef(sample=sample))  # one error line and stop if it cannot load
weights, _ = cache.weights(ModelRef(sample=sample))
names = [n for n, w in weights.items() if w.size >= 64]

st.subheader("1 · Magnitude pruning")
st.markdown("Pruning sets the weights with the **smallest absolute value** to zero. Below: the top-left 8×8 "
            "corner of a real layer. Move the slider and watch which cells go grey.")
with view.guard():
    layer = st.selectbox("Layer", names, key="learn_prune_layer")
    corner = weights[layer].reshape(weights[layer].shape[0], -1)[:8, :8]
    sparsity = st.slider("Sparsity (% of the cells set to zero)", 0, 95, 50, 5, key="learn_sparsity") / 100
    cells = charts.magnitude_mask_frame(corner, sparsity)
    left, right = st.columns([1, 1])
    left.altair_chart(charts.weight_matrix(cells), width="content")
    kept = cells[cells.kept]
    right.metric("cells zeroed", f"{(~cells.kept).sum()} of {len(cells)}")
    right.metric("smallest |weight| kept", f"{kept.weight.abs().min():.3f}" if len(kept) else "—")
    right.markdown("The matrix is still 8×8: the zeros are stored and multiplied like any other value. "
                   "That is why pruning alone changes neither the file size nor the latency (section 3).")

st.subheader("2 · Quantization levels")
st.markdown("Quantizing to *b* bits keeps only 2^b evenly spaced values (orange lines); every weight moves to "
            "the nearest one. Fewer bits: fewer, coarser levels, bigger rounding error.")
with view.guard():
    layer = st.selectbox("Layer", names, key="learn_quant_layer", index=min(1, len(names) - 1))
    bits = st.slider("Bits per weight", 2, 8, 4, key="learn_bits")
    w = weights[layer].ravel()
    left, right = st.columns([3, 1])
    left.altair_chart(charts.levels_histogram(w, bits), width="stretch")
    q = fake_quantize(w, bits)
    right.metric("levels", f"{2 ** bits}")
    right.metric("distinct values used", f"{len(np.unique(q)):,}")
    right.metric("mean rounding error", f"{np.abs(w - q).mean() / np.abs(w).mean():.1%}", help="of the mean |weight|")
    right.metric("storage vs float32", f"{32 / bits:.0f}× smaller", help="only with a kernel/format for these bits")

st.subheader("3 · Why sparse is not fast")
st.markdown("A dense matrix multiply does every multiply-add, zero or not: the same work, the same time. "
            "Speed needs a sparse kernel (ONNX Runtime's CPU provider has none for this) or smaller shapes.")
with view.guard():
    timings = rv.matmul_timings((0.0, 0.5, 0.9, 0.99))
    left, right = st.columns([3, 2])
    left.altair_chart(charts.timing_bars(timings), width="stretch")
    right.dataframe(timings.assign(sparsity=timings.sparsity.map("{:.0%}".format)), hide_index=True,
                    column_config={"median_ms": st.column_config.NumberColumn("median ms", format="%.3f")})
    runs = rv.get_store().list(status="succeeded", limit=200)
    pruned = compare.pruned_latency_frame(rv.compare_frame(rv.get_store(), runs)) if runs else pd.DataFrame()
    if not pruned.empty:
        st.markdown("**Your own pruned runs** (ONNX Runtime, batch 1; speedup vs the run's baseline):")
        st.dataframe(pruned, hide_index=True)

st.subheader("4 · What int8 needs from the CPU")
env = environment(threads=1)
st.markdown(f"This machine: **{env['cpu_model'] or 'unknown CPU'}**, {env['logical_cores']} logical cores.  \n"
            f"{env['int8_note']}.")
flags = [{"flag": f, "present": env["cpu_flags"].get(f), "what it gives": rv.FLAG_MEANING.get(f, "")} for f in FLAGS]
st.dataframe(pd.DataFrame(flags), hide_index=True, width="stretch")
st.caption("Without VNNI or AMX, int8 dot products take several instructions each, and int8 may be no faster than "
           "float. Small models at batch 1 are slower in int8 anyway: quantize/dequantize overhead dominates.")
