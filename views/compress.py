"""Compress: presets, a method picker with its knobs, a preview that follows every move, and the launch buttons.
Every knob lives in the URL (?technique=structured&ratio=50&bits=8&...) and survives page switches."""

import streamlit as st

from ui import cache, knobs, launch, measure_knobs, sensitivity_view, state, uploads, view
from workbench.codegen import python_script
from workbench.errors import WorkbenchError
from workbench.models import traced_kind
from workbench.presets import BITWIDTHS, PRESETS, QAT_BITS
from workbench.preview import Number
from workbench.search import OBJECTIVES, SPACE, candidates
from workbench.sensitivity import layer_key
from workbench.significance import smallest_detectable
from workbench.specs import dump_recipe

PRESETS_PER_ROW = 3
# per method: the sweep widget's key, label, options and default selection (percent); N:M has nothing to vary
SWEEPS = {"unstructured": ("sweep_sparsity", "Sweep sparsity (%)", [0, 30, 50, 70, 80, 90, 95, 99], [50, 80, 90]),
          "structured": ("sweep_ratio", "Sweep channels removed (%)", [25, 40, 50, 60, 70], [25, 50, 70]),
          "distill": ("sweep_width", "Sweep student width (%)", [25, 50, 75], [25, 50, 75]),
          "lowrank": ("sweep_energy", "Sweep energy kept (%)", [70, 80, 90, 95, 99], [80, 90, 95])}
SEARCH_RATIOS = (0.0, 0.25, 0.5)   # "also remove channels": structured ratios the search adds as an axis

st.title("Compress")
ref, data = state.current_model(), state.current_data()
label = uploads.model_label(ref)
held = view.model_or_stop(ref)
state.init_compress_state()
st.caption(f"Model **{label}** · data **{uploads.data_label(data)}** · change them on the Model page.")
view.opened_recipe_note(st.session_state.pop(state.OPENED_KEY, None))

st.markdown("**Presets**")
items = list(PRESETS.items())
for start in range(0, len(items), PRESETS_PER_ROW):
    for column, (name, preset) in zip(st.columns(PRESETS_PER_ROW), items[start:start + PRESETS_PER_ROW], strict=False):
        column.button(name, help=preset.blurb, on_click=state.apply_settings, args=(preset.settings,), width="stretch")

left, panel = st.columns([2, 3], gap="large")
with left:
    technique = knobs.method_knobs()
    knobs.bits_knobs()
    knobs.cluster_knobs()
    knobs.transfer_knobs(ref, data)
    knobs.layer_knobs([layer_key(n) for n in cache.weights(ref)[0]])
settings = state.compress_settings()

with panel:
    st.subheader("Preview")
    recipe = settings.to_spec(ref, data)
    prune = next((stage for stage in recipe.stages if stage.kind == "prune"), None)
    solved = ()
    if prune is not None and prune.reconstruct != "none":
        st.caption(f"**one-shot accuracy** is the mask before solving; the run then solves the kept weights "
                   f"({prune.reconstruct}) on the training inputs.")
        if st.toggle("Solve in the preview too (seconds per change)", key="solve_preview", persist_state="session",
                     help="runs the prune stage once, one shot, on a copy of the model and measures the test "
                          "accuracy: what the run's prune stage gives before any training"):
            with view.guard():
                repaired = cache.repair(ref, data, recipe)
                solved = (Number("one-shot accuracy, solved", repaired.accuracy, "", "measured",
                                 f"measured on the test split after {prune.reconstruct} ({repaired.seconds:.1f} s); "
                                 + " ".join(repaired.notes)),)
    cannot = None   # structured and distill previews make the run's own Torch-Pruning call: its refusal is the run's
    with view.guard():
        try:
            shown = cache.preview_for(ref, data, settings)
        except WorkbenchError as exc:
            cannot = str(exc).splitlines()[0] if technique in ("structured", "distill") else None
            raise
        view.preview_panel(shown, cache.dense_preview(ref, data), extra=solved)
    st.caption("Instant and one-shot: no training, no export. A run measures latency with ONNX Runtime, "
               "the real file size and the accuracy after every stage.")
    if settings.layer_bits and not settings.uses_qat:
        st.info(f"Bits are per layer ({settings.layer_bits_method}: "
                + ", ".join(f"{layer} {bits}" for layer, bits in settings.layer_bits)
                + "): the run quantizes each layer at its bits, and this preview counts each layer at its bits.")

layers = st.expander("Per-layer sensitivity: which layers to spare, per-layer sparsities", key="sensitivity_open",
                     on_change="rerun")
if layers.open:
    with layers:
        sensitivity_view.section(ref, data, settings)

st.subheader("Run it")
traced = traced_kind(held.loaded.module)
converts = settings.converts(held.loaded.kind, traced)   # the run needs layer modules the model lacks
problems = settings.problems(held.loaded.kind, has_train_data=data.builtin is not None or data.train_path is not None,
                             has_rewind_checkpoint=ref.sample is not None, traced=traced,
                             unconvertible=cache.unconvertible(ref, data) if converts else None,
                             has_layers=bool(cache.weights(ref)[0]))
problems += [cannot] if cannot and cannot not in problems else []
for problem in problems:
    st.warning(problem)
if converts and not problems:
    st.caption(f"This {'model' if traced else 'ONNX graph'} runs these methods as torch modules converted from "
               f"{'its ONNX export' if traced else 'it'} (checked against ONNX Runtime); the run measures "
               f"{'that export' if traced else 'the uploaded file'} as the baseline and exports each variant from "
               "the conversion.")
measure = measure_knobs.section(cache.summary(ref).total_macs, held.loaded.module is not None)
spec = settings.to_spec(ref, data, measure, name=f"{label} · {settings.describe()}")
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
    chosen = []
    if technique in SWEEPS:
        key, text, options, default = SWEEPS[technique]
        chosen = st.multiselect(text, options, default=default, key=key, persist_state="session")
    thins = st.multiselect("Sweep channels removed first (%)", SWEEPS["structured"][2], key="sweep_thin",
                           persist_state="session", help="each run removes this share of the channels first, "
                           "then prunes to its sparsity") if settings.thins_first else []
    if settings.clusters:
        widths = []
        st.caption("Clustering replaces quantization: the sweep keeps 32-bit weights.")
    elif settings.layer_bits:
        widths = []
        st.caption(f"Every run keeps the per-layer bits ({len(settings.layer_bits)} layers); clear them under "
                   "Per-layer sensitivity to sweep uniform bitwidths.")
    else:
        bit_options = list(reversed(QAT_BITS)) if settings.uses_qat else list(reversed(BITWIDTHS))
        widths = st.multiselect("Sweep QAT bitwidths" if settings.uses_qat else "Sweep bitwidths", bit_options,
                                default=[8], key="sweep_qat_bits" if settings.uses_qat else "sweep_bits",
                                persist_state="session")
    seeds = st.number_input("Seeds per setting", 1, 5, 1, key="sweep_seeds", persist_state="session",
                            help="repeat every setting with seeds 0, 1, …: Compare shows mean ± std over them")
    masked = technique in ("unstructured", "nm")
    ranking = "magnitude" if settings.method == "random" else settings.method   # what random is set against
    if masked and settings.reconstruct == "obs":
        st.caption("OBS reconstruction picks the pruned weights itself, so there is no random-pruning baseline.")
    with_random = masked and settings.reconstruct != "obs" and st.checkbox(
        "Add the random-pruning baseline", key="sweep_random", persist_state="session",
        help=f"each setting again with random instead of {ranking} pruning: Compare shows what {ranking} buys")
    with_unsolved = masked and settings.reconstruct != "none" and st.checkbox(
        "Add the unsolved mask", key="sweep_unsolved", persist_state="session",
        help=f"each setting again without reconstruction: Compare shows what {settings.reconstruct} buys")
    count = max(len(chosen), 1) * max(len(widths), 1) * max(len(thins), 1) if chosen or widths or thins else 0
    count *= int(seeds) * (2 if with_random else 1) * (2 if with_unsolved else 1)
    if st.button(f"Launch sweep ({count} runs)", key="launch_sweep", disabled=not count or bool(problems)):
        with view.guard():
            base, grid = settings.sweep(ref, [v / 100 for v in chosen], widths, data, measure,
                                        name=f"{label} sweep", thin=[v / 100 for v in thins])
            grid |= {"prune.method": [ranking, "random"]} if with_random else {}
            grid |= {"prune.reconstruct": ["none", settings.reconstruct]} if with_unsolved else {}
            grid |= {"seed": list(range(int(seeds)))} if seeds > 1 else {}
            sweep_id, runs = launch.launch_sweep(base, grid)
            st.success(f"Sweep {sweep_id}: {len(runs)} runs queued.")
search = st.expander("Search under an accuracy bar", key="search_open", on_change="rerun")
if search.open:
    with search, view.guard():
        drop, trials, minutes, objective = st.columns(4)
        channels = held.loaded.kind == "torch" and st.toggle(
            "Also remove channels (structured 25% and 50%)", key="search_channels",
            help="adds structured pruning as a third axis: a real speedup, at an accuracy cost")
        # clustering keeps 32-bit weights: a quantize stage after it would drop weights.packed
        bits = {} if settings.clusters else {"bits": SPACE["bits"]}
        space = {"sparsity": SPACE["sparsity"], **bits, **({"ratio": SEARCH_RATIOS} if channels else {})}
        planned = len(candidates(spec, space))
        samples = len(cache.splits(ref, data).test)
        max_drop = drop.number_input("Max accuracy drop (points)", 0.0, 100.0, 1.0, 0.25, key="search_drop",
                                     help=f"vs each candidate's own baseline, measured in the same run. On "
                                          f"{samples:,} test samples one is {100 / samples:.2f} pt, and no change "
                                          f"under {100 * smallest_detectable() / samples:.2f} pt can be told from "
                                          "chance: a tighter bar is met or missed partly by luck")
        count = trials.number_input(f"Trials (of {planned})", 1, planned, min(8, planned), key="search_trials")
        budget = minutes.number_input("Minutes (0: no limit)", 0, 600, 30, key="search_minutes",
                                      help="candidates still queued after this are cancelled; started ones finish")
        goal = objective.radio("Objective", list(OBJECTIVES), key="search_objective",
                               help="size: the smallest gzip file meeting the bar; latency: the fastest; packed: "
                                    "the smallest weights.packed (turn on weight clustering)")
        st.caption(f"Candidates: sparsity {', '.join(f'{v:.0%}' for v in SPACE['sparsity'])}"
                   + (f" × bits {', '.join(map(str, SPACE['bits']))}" if bits else " (32-bit weights: clustered)")
                   + (" × channels removed 0/25/50%" if channels else "")
                   + " applied to this setting's recipe, coarse to fine (the first few already span the grid). "
                   "Every candidate is a measured run; Compare shows them against the bar with the Pareto set.")
        if st.button("Launch search", key="launch_search", disabled=bool(problems)):
            sweep_id, runs = launch.launch_search(spec, max_drop, int(count), budget or None, goal, space)
            st.success(f"Search {sweep_id}: {len(runs)} candidates queued.")
with st.expander("Copy as Python"):
    st.code(python_script(spec), language="python")

launched = st.session_state.get(state.LAST_RUNS_KEY, [])
if launched:
    st.subheader("Launched from here")
    active = any(not run.done for run in view.runs_by_id(launched[-10:]))

    @st.fragment(run_every=2 if active else None)
    def launched_runs() -> None:
        view.run_lines(launched[-10:])
        st.page_link("views/runs.py", label="Open Runs (progress, logs, cancel)", icon="🏃")
        st.page_link("views/compare.py", label="Compare the results", icon="📊")

    launched_runs()
