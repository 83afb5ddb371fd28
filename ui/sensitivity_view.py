"""The Compress page's per-layer sensitivity section: measure it on demand (workbench.sensitivity.analyze,
cached per model), show the heatmap, and turn it into the recipe: "allocate" writes per-layer sparsities
(`overrides`) for the sparsity slider's target; "allocate bits" writes per-layer weight bits for a size
target (workbench.sensitivity.allocate_bits), quantized with weight_only (MatMulNBits, real) when every
layer is a Linear at 8, 4 or 2 bits, else fake (simulated); exclusions are a knob (ui.knobs.layer_knobs).

Session keys: "sensitivity_for" (the model and data it was measured for), "allocation" (target, note),
"bits_allocation" (target_kb, note), and the widgets "bits_target_kb", "bits_real".
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from ui import cache, state, view
from workbench import charts
from workbench.errors import WorkbenchError
from workbench.presets import CompressSettings
from workbench.sensitivity import BITS, Sensitivity, allocate, allocate_bits, matmul_only
from workbench.specs import WEIGHT_ONLY_BITS, DataRef, ModelRef

MEASURED_KEY, ALLOCATION_KEY, BITS_ALLOCATION_KEY = "sensitivity_for", "allocation", "bits_allocation"
METHOD_TEXT = {"weight_only": "**weight_only**: MatMulNBits stores each layer at its bits (real, smaller file)",
               "fake": "**fake**: values rounded per layer but stored as float32 (simulated accuracy, storage "
                       "computed)"}


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
        sparsity, bits = st.columns(2, gap="large")
        with sparsity:
            _allocation(sens, settings)
        with bits:
            _bits_allocation(sens, matmul_only(cache.weights(ref)[0]))


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


def _bits_allocation(sens: Sensitivity, matmul: bool) -> None:
    dense_4bit_kb = round(sum(sens.params.values()) * 4 / 8 / 1024, 1)
    target_kb = st.number_input("Weights size target (KB)", 0.1, value=dense_4bit_kb, step=1.0, key="bits_target_kb",
                                help="dense weights x bits / 8 per layer, an estimate; the default is every layer "
                                     "at 4 bits")
    real = matmul and st.toggle("Only 8, 4 and 2 bits (MatMulNBits: real)", value=True, key="bits_real",
                                help="bit widths with an ONNX Runtime kernel, so the run stores each layer at its "
                                     "bits; off: also 6 and 3 bits, simulated (fake-quant)")
    if not matmul:
        st.caption("Convolutions have no MatMulNBits kernel: per-layer bits run as **fake** (simulated).")
    choices = WEIGHT_ONLY_BITS if real else BITS
    st.button(f"Allocate per-layer bits for {target_kb:g} KB", key="allocate_bits", on_click=_allocate_bits,
              args=(sens, target_kb, choices, matmul),
              help="rounds insensitive layers to fewer bits and sensitive ones to more (least KL per byte saved "
                   "first); the per-layer bits replace the bitwidth in the recipe")
    done = st.session_state.get(BITS_ALLOCATION_KEY)
    if done and "error" in done:
        st.error(done["error"])
    method, bits = state.layer_bits()
    if not bits:
        return
    if done and "target_kb" in done:
        if done["target_kb"] != target_kb:
            st.warning(f"These per-layer bits were allocated for {done['target_kb']:g} KB; the target says "
                       f"{target_kb:g} KB: allocate again.")
        else:
            st.caption(done["note"])
    st.markdown(f"The run quantizes with {METHOD_TEXT[method]}.")
    st.dataframe(pd.DataFrame({"layer": list(bits), "bits": list(bits.values())}), hide_index=True)
    st.button("Clear per-layer bits", key="clear_layer_bits", on_click=_clear_bits)


def _allocate_bits(sens: Sensitivity, target_kb: float, choices: tuple[int, ...], matmul: bool) -> None:
    try:
        result = allocate_bits(sens, target_kb * 1024, choices)
    except WorkbenchError as exc:
        st.session_state[BITS_ALLOCATION_KEY] = {"error": str(exc).splitlines()[0]}
        return
    state.set_layer_bits(result.quant_spec(matmul).method, result.to_overrides())
    st.session_state[BITS_ALLOCATION_KEY] = {
        "target_kb": target_kb, "note": f"allocated: {result.note}; predicted from the table: KL {result.kl:.4f}, "
                                        f"drop {result.drop:.2f} pt (sums of single-layer values)"}


def _clear_bits() -> None:
    method, _ = state.layer_bits()
    state.set_layer_bits(method, {})
    st.session_state.pop(BITS_ALLOCATION_KEY, None)
