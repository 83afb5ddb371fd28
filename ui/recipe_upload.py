"""Runs page: queue a recipe file, as `workbench submit` does: one downloaded from Compress, written by hand or
taken from `recipes/`, as written or on the model and data currently chosen."""

from __future__ import annotations

import streamlit as st

from ui import launch, runs_view, state, uploads, view
from workbench.errors import WorkbenchError
from workbench.specs import RunSpec, dump_recipe, missing_files, parse_recipe, retarget

RETARGET_HELP = ("Replace the recipe's model and data with the ones chosen on the Model page; its stages, "
                 "measurement, class subset and sample limit stay. Off: the model and data the recipe names (a "
                 "sample, or files on this machine by absolute path).")


def section() -> None:
    with st.expander("Queue a recipe file"):
        upload = st.file_uploader("Recipe (.yaml, .yml or .json)", type=["yaml", "yml", "json"], key="recipe_upload")
        if upload is None:
            return
        here = st.toggle("Run it on the current model and data", key="recipe_retarget", help=RETARGET_HELP)
        try:
            spec = _spec(upload.getvalue(), upload.name, here)
        except WorkbenchError as exc:
            st.error(str(exc).strip().splitlines()[0])
            return
        missing = missing_files(spec)
        if missing:
            st.error("Not found on this machine: " + "; ".join(missing) + ". Give absolute paths in the recipe, "
                     "or run it on the current model and data.")
        st.caption(f"Model **{uploads.model_label(spec.model)}** · data **{uploads.data_label(spec.data)}** · "
                   f"{len(spec.stages)} stage(s): {', '.join(stage.kind for stage in spec.stages) or 'baseline only'}")
        queue, opener = st.columns([1, 4])
        if queue.button("Queue it", key="queue_recipe", type="primary", disabled=bool(missing)):
            with view.guard():
                run = launch.launch_run(spec)
                st.success(f"Run #{run.id} queued: it runs in the background.")
        if not missing:
            runs_view.open_in_compress(opener, spec, upload.name, key="open_recipe")
        st.caption("The recipe with every default filled in:")
        st.code(dump_recipe(spec), language="yaml", height=320)


def _spec(raw: bytes, name: str, here: bool) -> RunSpec:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkbenchError(f"{name}: not a text file (a recipe is YAML or JSON)") from None
    spec = parse_recipe(text, name)
    return retarget(spec, state.current_model(), state.current_data()) if here else spec
