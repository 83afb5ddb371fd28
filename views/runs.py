"""Runs: every run in the store, live — progress, logs, cancel, retry, delete, and a link to Compare."""

import streamlit as st

from ui import launch, recipe_upload
from ui import runs_view as rv
from workbench.jobs import sweep_summary
from workbench.specs import RunSpec

st.title("Runs")
st.caption("Runs execute in a background worker; this page only reads the run store, so it survives a reload.")
store = rv.get_store()
counts = store.counts()
busy = counts["queued"] + counts["running"] > 0


def worker_line() -> None:
    """Queued runs with nobody to run them: say so, and offer to start the worker (the sidebar shows the rest)."""
    line = launch.worker_status()
    if counts["queued"] and "worker running" not in line:
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.warning(line)
        right.button("Start worker", key="start_worker", on_click=rv.start_worker)


def actions(run) -> None:
    cancel, retry, delete, opener, link = st.columns([1, 1, 1, 2, 3], vertical_alignment="center")
    cancel.button("Cancel", key=f"cancel_{run.id}", disabled=run.done, help="stop a queued or running run",
                  on_click=rv.act, args=(store.request_cancel, run.id, f"run #{run.id}: cancel requested"))
    retry.button("Retry", key=f"retry_{run.id}", disabled=run.status not in ("failed", "cancelled", "interrupted"),
                 help="queue it again with the same recipe",
                 on_click=rv.act, args=(rv.retry, run.id, f"run #{run.id}: queued again"))
    with delete.popover("Delete", disabled=run.status == "running"):
        st.write(f"Delete run #{run.id} and its files?")
        st.button("Delete for good", key=f"delete_{run.id}", type="primary",
                  on_click=rv.act, args=(store.delete, run.id, f"run #{run.id}: deleted"))
    rv.open_in_compress(opener, RunSpec.from_dict(run.spec), f"run #{run.id}", key=f"open_{run.id}")
    with link:
        if run.status == "succeeded":
            rv.compare_link([run.id], "Compare this run")


def details(run) -> None:
    st.subheader(rv.run_label(run))
    if run.status in ("queued", "running"):
        st.progress(run.progress, text=f"{run.stage or 'waiting'} — {run.message or 'queued'}"[:200])
    elif run.status == "succeeded":
        st.success(rv.outcome_line(run.metrics or {}))
    elif run.error:
        st.error(rv.one_line(run.error))
    actions(run)
    if run.sweep_id:
        done = [r["id"] for r in sweep_summary(store, run.sweep_id) if r["status"] == "succeeded"]
        st.caption(f"Part of sweep `{run.sweep_id}`: {len(done)} run(s) succeeded.")
        if done:
            rv.compare_link(done, f"Compare sweep {run.sweep_id}")
    with st.expander("Log"):
        st.code(rv.log_tail(store, run.id), language=None)
    if run.error and "\n" in run.error:
        with st.expander("Error details"):
            st.code(run.error, language=None)


@st.fragment(run_every=2 if busy else 10)
def live() -> None:
    runs = store.list(limit=500)
    summary = " · ".join(f"{n} {status}" for status, n in store.counts().items() if n)
    st.caption(summary or "no runs yet")
    rv.flash()
    if not runs:
        st.info("No runs yet. Pick a model, set the sliders on **Compress** and press **Launch run**, or queue a "
                "recipe file above.")
        return
    st.dataframe(rv.runs_table(runs), column_config=rv.TABLE_CONFIG, hide_index=True, width="stretch",
                 height=min(400, 38 + 35 * len(runs)))
    by_id = {r.id: r for r in runs}
    wanted = st.query_params.get("run", "")
    index = list(by_id).index(int(wanted)) if wanted.isdigit() and int(wanted) in by_id else 0
    # no status in the choices: the browser keeps showing a chosen label from when it was picked ("running")
    chosen = st.selectbox("Run", list(by_id), index=index, format_func=lambda i: f"#{i} {by_id[i].name}",
                          key="runs_selected")
    if st.query_params.get("run") != str(chosen):
        st.query_params["run"] = str(chosen)
    details(by_id[chosen])


worker_line()
recipe_upload.section()
live()
