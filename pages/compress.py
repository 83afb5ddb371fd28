"""Compress: presets, sliders and pickers, a preview that follows every move, and the launch buttons.
Every knob lives in the URL (?sparsity=90&bits=8&...) and survives page switches."""

import dataclasses

import streamlit as st

from ui import cache, launch, state, uploads, view
from workbench.codegen import python_script
from workbench.presets import BITWIDTHS, INT8_KINDS, MAX_RECOVERY_EPOCHS, PRESETS
from workbench.specs import CALIBRATIONS, PRUNE_METHODS, PRUNE_SCHEDULES, PRUNE_SCOPES, dump_recipe

SHARED = {"bind": "query-params", "persist_state": "session"}   # in the URL, kept across pages
SWEEP_SPARSITY = [0, 30, 50, 70, 80, 90, 95, 99]

st.title("Compress")
ref, data = state.current_model(), state.current_data()
label = uploads.model_label(ref)
held = view.model_or_stop(ref)
state.init_compress_state()
st.caption(f"Model **{label}** · data **{uploads.data_label(data)}** · change them on the Model page.")

st.markdown("**Presets**")
for column, (name, preset) in zip(st.columns(len(PRESETS)), PRESETS.items(), strict=True):
    column.button(name, help=preset.blurb, on_click=state.apply_settings, args=(preset.settings,), width="stretch")

knobs, panel = st.columns([2, 3], gap="large")
with knobs:
    st.slider("Sparsity: % of weights set to zero", 0, 99, key="sparsity", **SHARED)
    st.select_slider("Bitwidth of the weights", list(reversed(BITWIDTHS)), key="bits", **SHARED,
                     help="32 float · 16 fp16 · 8 int8 (ORT) · 4 and 2 MatMulNBits (ORT) · 7, 6, 5, 3 simulated")
    with st.expander("Method", expanded=True):
        st.radio("Pruning", PRUNE_METHODS, key="method", horizontal=True, **SHARED)
        st.radio("Scope", PRUNE_SCOPES, key="scope", horizontal=True, **SHARED,
                 help="global: rank all weights together; layer: prune every layer to the same sparsity")
        st.radio("Schedule", PRUNE_SCHEDULES, key="schedule", horizontal=True, **SHARED,
                 help="iterative: remove 20% of the surviving weights per round, fine-tuning between rounds")
        st.radio("int8 kind (at 8 bits)", INT8_KINDS, key="int8", horizontal=True, **SHARED,
                 help="static: calibrated QDQ, fast for convs; dynamic: MatMul/Gemm only (dynamic Conv is slow)")
        st.radio("Calibration", CALIBRATIONS, key="calibration", horizontal=True, **SHARED)
        st.slider("Recovery fine-tuning epochs", 0, MAX_RECOVERY_EPOCHS, key="epochs", **SHARED,
                  help="masked fine-tuning after pruning (per round when iterative); torch models only")
settings = state.compress_settings()

with panel:
    st.subheader("Preview")
    with view.guard():
        view.preview_panel(cache.preview_for(ref, data, settings), cache.dense_preview(ref, data))
    st.caption("Instant and one-shot: no fine-tuning, no export. A run measures latency with ONNX Runtime, "
               "the real file size and the accuracy after every stage.")

st.subheader("Run it")
problems = settings.problems(held.loaded.kind, has_train_data=data.builtin is not None)
for problem in problems:
    st.warning(problem)
spec = settings.to_spec(ref, data, state.measure_spec(), name=f"{label} · {settings.describe()}")
single, sweep = st.columns(2, gap="large")
with single:
    st.markdown(f"**This setting:** {settings.describe()}")
    if st.button("Launch run", type="primary", key="launch_run", disabled=bool(problems)):
        with view.guard():
            run = launch.launch_run(spec)
            st.success(f"Run #{run.id} queued: it runs in the background.")
    st.download_button("Download recipe", dump_recipe(spec), file_name=f"{view.slug(spec.name)}.yaml",
                       mime="text/yaml", on_click="ignore")
with sweep:
    chosen = st.multiselect("Sweep sparsity (%)", SWEEP_SPARSITY, default=[50, 80, 90], key="sweep_sparsity",
                            persist_state="session")
    widths = st.multiselect("Sweep bitwidths", list(reversed(BITWIDTHS)), default=[8], key="sweep_bits",
                            persist_state="session")
    count = len(chosen) * len(widths)
    if st.button(f"Launch sweep ({count} runs)", key="launch_sweep", disabled=not count or bool(problems)):
        with view.guard():
            base = dataclasses.replace(settings, bits=8).to_spec(ref, data, state.measure_spec(),
                                                                  name=f"{label} sweep", always_prune=True)
            grid = {"sparsity": [v / 100 for v in sorted(chosen)], "bits": sorted(widths, reverse=True)}
            sweep_id, runs = launch.launch_sweep(base, grid)
            st.success(f"Sweep {sweep_id}: {len(runs)} runs queued.")
with st.expander("Copy as Python"):
    st.code(python_script(spec), language="python")

launched = st.session_state.get(state.LAST_RUNS_KEY, [])
if launched:
    st.subheader("Launched from here")
    active = any(not run.done for run in view.runs_by_id(launched[-10:]))

    @st.fragment(run_every=2 if active else None)
    def launched_runs() -> None:
        view.run_lines(launched[-10:])
        st.page_link("pages/runs.py", label="Open Runs (progress, logs, cancel)", icon="🏃")
        st.page_link("pages/compare.py", label="Compare the results", icon="📊")

    launched_runs()
