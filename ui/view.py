"""Rendering helpers shared by the pages: the error guard, badges, number formats, the sidebar, the
preview panel and small run lists."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import altair as alt
import pandas as pd
import streamlit as st

from ui import cache, launch, state, uploads
from workbench import charts
from workbench.errors import WorkbenchError
from workbench.preview import Number, Preview
from workbench.specs import ModelRef
from workbench.store import Run

log = logging.getLogger(__name__)
BADGES = {
    "computed": ":blue-badge[computed]", "estimate": ":orange-badge[estimate]", "measured": ":green-badge[measured]",
    "real": ":green-badge[real]", "simulated": ":orange-badge[simulated]", "none": ":gray-badge[no change]",
    "run": ":violet-badge[measured in a run]", "warning": ":red-badge[warning]",
}
PREVIEW_COLUMNS = 3   # four squeezed big numbers ("2,382,8…") into the panel at laptop widths
STATUS_ICONS = {"queued": "⏳", "running": "⚙️", "succeeded": "✅", "failed": "❌", "cancelled": "⏹️",
                "interrupted": "⚠️"}


def badge(kind: str) -> str:
    return BADGES.get(kind, f":gray-badge[{kind}]")


@contextmanager
def guard() -> Iterator[None]:
    """Show a failure inside the block as one red line and carry on with the rest of the page."""
    try:
        yield
    except WorkbenchError as exc:
        st.error(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    except Exception as exc:  # a bug, not bad input: still one line on screen, the traceback in the log
        log.exception("page section failed")
        st.error(f"Something went wrong: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def fmt(number: Number) -> str:
    if number.unit == "bytes":
        return kb(number.value)
    if number.label == "sparsity":
        return f"{number.value:.1%}"
    if "accuracy" in number.label:
        return f"{number.value:.3f}"
    if number.unit == "bits":
        return f"{number.value:g} bits"
    return count(number.value)


def count(value: float) -> str:
    """A count as it fits a metric: 97,568 in full, 2.38 M from a million up."""
    return f"{int(value):,}" if abs(value) < 1e6 else f"{value / 1e6:,.2f} M"


def kb(value: float) -> str:
    return f"{value / 1024:,.1f} KB" if value < 1024**2 * 10 else f"{value / 1024**2:,.1f} MB"


def _reference(number: Number, reference: Preview | None) -> Number | None:
    """The uncompressed model's number to compare `number` with (its one-shot accuracy for any accuracy)."""
    if reference is None:
        return None
    label = "one-shot accuracy" if number.label.startswith("one-shot accuracy") else number.label
    return next((n for n in reference.numbers if n.label == label), None)


def _help(number: Number) -> str | None:
    exact = f"exactly {int(number.value):,}" if not number.unit and abs(number.value) >= 1e6 else ""
    return " · ".join(part for part in (number.note, exact) if part) or None


def _delta(number: Number, reference: Number | None) -> str | None:
    if reference is None or reference.value == number.value or not reference.value or not number.value:
        return None
    if number.unit == "bytes":
        ratio = reference.value / number.value
        return f"{ratio:.1f}× smaller" if ratio >= 1 else f"{1 / ratio:.1f}× larger"
    if number.label in ("parameters", "MACs"):
        ratio = reference.value / number.value
        return f"{ratio:.1f}× fewer" if ratio >= 1 else f"{1 / ratio:.1f}× more"
    if "accuracy" in number.label:
        return f"{number.value - reference.value:+.3f}" + (", within noise" if number.change == "within noise" else "")
    return None


def preview_panel(preview: Preview, reference: Preview | None = None, extra: tuple[Number, ...] = ()) -> None:
    """Each number (and the `extra` ones after them) with its badge (computed / estimate / measured), deltas vs
    no compression, the gains, and per-layer bars: sparsity, or weights now and after for methods that change
    shapes. One row of columns per line of numbers, so a number's badge never pushes the next row out of line."""
    numbers = (*preview.numbers, *extra)
    for start in range(0, len(numbers), PREVIEW_COLUMNS):
        for column, number in zip(st.columns(PREVIEW_COLUMNS), numbers[start:start + PREVIEW_COLUMNS], strict=False):
            with column:
                st.metric(number.label, fmt(number), _delta(number, _reference(number, reference)),
                          delta_color="off", help=_help(number))
                st.markdown(badge(number.kind))
    st.markdown("**What would be real, what simulated**")
    for aspect, kind, reason in preview.gains or (("setting", "none", "no compression chosen"),):
        st.markdown(f"{badge(kind)} **{aspect}**: {reason}")
    if preview.layer_kind == "params":
        st.altair_chart(charts.preview_layer_params(preview.layers, preview.after_kind), width="stretch")
    else:  # a step per layer: Streamlit's fit-to-container shrinks a small fixed height under a title to nothing
        chart = charts.preview_layer_sparsity(preview.layers).properties(height=alt.Step(24))
        st.altair_chart(chart, width="stretch")


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        final = (run.metrics or {}).get("final", {})
        rows.append({"id": run.id, "name": run.name, "status": f"{STATUS_ICONS.get(run.status, '')} {run.status}",
                     "progress": run.progress, "created": pd.Timestamp(run.created, unit="s", tz="UTC"),
                     "accuracy": final.get("accuracy"), "gzip_kb": final.get("gzip_kb")})
    return pd.DataFrame(rows, columns=["id", "name", "status", "progress", "created", "accuracy", "gzip_kb"])


def runs_by_id(run_ids: list[int]) -> list[Run]:
    """The runs still in the store (some may have been deleted on the Runs page), in the given order."""
    store, runs = cache.store(), []
    for run_id in run_ids:
        try:
            runs.append(store.get(run_id))
        except WorkbenchError:
            continue
    return runs


def run_lines(run_ids: list[int]) -> None:
    """One line per run, newest first: icon, id, name, status (and stage while it runs), error if it failed."""
    for run in reversed(runs_by_id(run_ids)):
        stage = f" · {run.stage} {run.progress:.0%}" if run.status == "running" else ""
        st.markdown(f"{STATUS_ICONS.get(run.status, '')} Run #{run.id} **{run.name}**: {run.status}{stage}")
        if run.error and run.status == "failed":
            st.caption(run.error.splitlines()[0])


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")[:80] or "recipe"


def model_or_stop(ref: ModelRef) -> cache.Held:
    """The loaded model; if it cannot load, one error line and a way back to the Model page, then stop."""
    try:
        return cache.model(ref)
    except Exception as exc:
        st.error(str(uploads.one_line(exc, name=uploads.model_label(ref))))
        st.page_link("views/model.py", label="Pick another model", icon="🧠")
        st.stop()


def sidebar() -> None:
    model, data = state.current_model(), state.current_data()
    with st.sidebar:
        trains_on = f" · trains on `{uploads.display_name(data.train_path)}`" if data.train_path else ""
        st.markdown(f"**Model** `{uploads.model_label(model)}`  \n**Data** `{uploads.data_label(data)}`{trains_on}")
        with guard():
            st.caption(launch.worker_status())
        st.caption(f"Data dir: `{state.home()}`")


def opened_recipe_note(opened: dict | None) -> None:
    """Once, after a run or recipe file was opened here (ui.state.open_recipe): that it was, and which of its
    fields the knobs could not hold, so launching from here would not repeat it exactly."""
    if opened is None:
        return
    if "error" in opened:
        st.error(f"{opened['label']} could not be opened here: {opened['error']}")
    elif not opened["differences"]:
        st.success(f"Opened {opened['label']}: the knobs below hold its whole recipe.")
    else:
        listed = "; ".join(opened["differences"][:8]) + ("; …" if len(opened["differences"]) > 8 else "")
        st.warning(f"Opened {opened['label']}, but the knobs below cannot hold all of its recipe ({listed}). A run "
                   "launched from here differs in those fields: to repeat it exactly, queue its recipe file on the "
                   "Runs page (or retry the run).")
