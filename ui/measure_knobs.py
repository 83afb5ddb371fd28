"""How runs measure: batch sizes, ONNX Runtime threads and torch-eager timing, chosen in one expander that
the Model page (its baseline) and the Compress page (the runs it launches) both show; the widgets share
their keys, are bound to the URL and kept across pages, so both pages measure the same way."""

from __future__ import annotations

import os

import streamlit as st

from ui import state
from workbench.measure_plan import default_batch_sizes, default_reason
from workbench.specs import MeasureSpec

SHARED = {"bind": "query-params", "persist_state": "session"}


def section(macs_per_sample: int | None, torch_model: bool) -> MeasureSpec:
    """The measurement widgets in an expander, then one line saying how runs measure; returns the spec.
    `torch_model`: the model is a torch model, which runs also time in torch eager (ONNX graphs: never)."""
    sizes = state.measure_spec(macs_per_sample).batch_sizes   # shown as the placeholder only while none is chosen
    with st.expander("Measurement settings: batch sizes, threads"):
        st.multiselect("Batch sizes", list(state.BATCH_CHOICES), key="batch", **SHARED,
                       placeholder=f"automatic: {', '.join(map(str, sizes))}",
                       help="Latency is timed at each batch size. Batch 1 is one request at a time (per-call "
                            "overhead weighs most); large batches show throughput (the arithmetic dominates). "
                            "Leave empty for the default: 1 and 256, fewer for large models.")
        cores = os.cpu_count() or 1
        st.selectbox("ONNX Runtime threads", list(range(1, cores + 1)), key="threads", **SHARED,
                     help=f"This machine has {cores} logical core(s). One thread gives the steadiest numbers and "
                          "the per-core cost; more threads show what a multi-core server sees (small layers and "
                          "int8 kernels often gain less from them).")
        if torch_model:
            st.toggle("Also time the model in torch (eager)", value=True, key="eager", **SHARED,
                      help="For reference beside ONNX Runtime, while a variant is still a torch model; off halves "
                           "the timing of each run.")
    spec = state.measure_spec(macs_per_sample)
    threads = f"{spec.threads} ONNX Runtime thread{'s' if spec.threads > 1 else ''}"
    eager = ", torch eager too" if spec.torch_eager and torch_model else ""
    defaulted = not st.session_state.get("batch") and spec.batch_sizes == default_batch_sizes(macs_per_sample)
    reason = default_reason(macs_per_sample) if defaulted else ""
    st.caption(f"Latency at batch {', '.join(map(str, spec.batch_sizes))} with {threads}{eager}, on this machine."
               + (f" ({reason[0].upper()}{reason[1:]}.)" if reason else ""))
    return spec
