"""The Compress page's per-layer sensitivity section: measure it on demand (workbench.sensitivity.analyze,
cached per model), show the heatmap, and turn it into the recipe: "allocate" writes per-layer sparsities
(`overrides`) for the sparsity slider's target; exclusions are a knob (ui.knobs.layer_knobs).

Session keys: "sensitivity_for" (the model and data it was measured for), "allocation" (target, note).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from ui import cache, state, view
from workbench import charts
from workbench.errors import WorkbenchError
from workbench.presets import CompressSettings
from workbench.sensitivity import Sensitivity, allocate
from workbench.specs import DataRef, ModelRef

MEASURED_KEY, ALLOCATION_KEY = "sensitivity_for", "allocation"


def section(ref: ModelRef, data: DataRef, settings: CompressSettings) -> None:
    st.caption("Each layer alone is pruned (or rounded) while the others stay untouched: a cell is the accuracy "
               "drop in points on the test split, measured (torch, or ONNX Runtime for ONNX models). Layers "
               "interact, so a run measures the combination. Spare a sensitive layer under **Leave layers "
               "dense** (left).")
    which = f"{ref}|{data}"
    if st.session_state.get(MEASURED_KEY) != which:
        st.button("Measure per-layer sensitivity", key="measure_sensitivity", on_click=st.session_state.update,
                  kwargs={MEASURED_KEY: which}, help="a few seconds for the sample models; kept for this model "
                                                     "while the app runs")
        return
    with view.guard():
        sens = cache.sensitivity(ref, data)
        kind = st.radio("Each layer alone", ["sparsity", "bits"], key="sensitivity_kind", horizontal=True,
                        format_func={"sparsity": "pruned", "bits": "rounded"}.get)
        # a step per layer: Streamlit's fit-to-container shrinks a small fixed height under a title to nothing
        heatmap = charts.sensitivity_heatmap(sens.frame(kind), kind).properties(height=alt.Step(28))
        st.altair_chart(heatmap, width="stretch")
        samples = len(cache.splits(ref, data).test.inputs[0])
        st.caption(f"{sens.metric} of the unchanged model: {sens.baseline:.4f} on {samples} test samples (one "
                   f"sample is {100 / samples:.2f} points); measured in {sens.seconds:.1f} s.")
        _allocation(sens, settings)


def _allocation(sens: Sensitivity, settings: CompressSettings) -> None:
    target = settings.sparsity
    usable = settings.technique == "unstructured" and target > 0
    st.button(f"Allocate per-layer sparsities for {target:.0%} overall", key="allocate", disabled=not usable,
              on_click=_allocate, args=(sens, target, settings.exclude),
              help="prunes insensitive layers more and sensitive ones less, at the same overall sparsity; "
                   "writes per-layer overrides into the recipe (unstructured pruning, sparsity above 0)")
    done = st.session_state.get(ALLOCATION_KEY)
    if done and "error" in done:
        st.error(done["error"])
    overrides = state.overrides()
    if not overrides:
        return
    if done and done.get("target") != target:
        st.warning(f"These per-layer sparsities were allocated for {done['target']:.0%}; the slider says "
                   f"{target:.0%}: allocate again.")
    elif done:
        st.caption(done["note"])
    st.dataframe(pd.DataFrame({"layer": list(overrides), "sparsity": list(overrides.values())}), hide_index=True,
                 column_config={"sparsity": st.column_config.NumberColumn(format="percent")})
    st.button("Clear per-layer sparsities", key="clear_overrides", on_click=_clear)


def _allocate(sens: Sensitivity, target: float, exclude: tuple[str, ...]) -> None:
    try:
        result = allocate(sens, target, exclude)
    except WorkbenchError as exc:
        st.session_state[ALLOCATION_KEY] = {"error": str(exc).splitlines()[0]}
        return
    state.set_overrides(result.overrides)
    st.session_state[ALLOCATION_KEY] = {
        "target": target, "note": result.note or f"allocated: {result.achieved:.1%} of the prunable weights "
                                                  "overall (computed); the per-layer values go into the recipe"}


def _clear() -> None:
    state.set_overrides({})
    st.session_state.pop(ALLOCATION_KEY, None)
