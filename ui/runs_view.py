"""Streamlit glue for the Runs, Compare and Learn pages: the store, cached reports, the Compare
selection (query params), log tails and links between pages.

Durable state lives in the store and the run folders; shareable state (which runs Compare shows) in
the URL (`?runs=3,4,5`); nothing here survives only in `st.session_state`.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui import cache, launch, state, uploads
from workbench import charts, compare
from workbench.errors import WorkbenchError
from workbench.specs import RunSpec
from workbench.store import Run, Store

STATUS_ICONS = {"queued": "⏳", "running": "▶️", "succeeded": "✅", "failed": "❌", "cancelled": "⏹️",
                "interrupted": "⚠️"}
COMPARE_PAGE = "views/compare.py"
RUNS_PARAM = "runs"
LOG_FILES = ("log.txt", "worker-output.txt")   # the pipeline's log, then the worker child's stdout/stderr


def get_store() -> Store:
    """The store of the current data dir (WORKBENCH_HOME), opened once per dir."""
    return cache.store()


@st.cache_data(show_spinner=False, max_entries=1000)
def _report(home: str, run_id: int, mtime: float) -> dict | None:
    return compare.load_report(Store(home), run_id)


def reports(store: Store, runs: list[Run]) -> dict[int, dict]:
    """report.json of each run, re-read only when the file changed."""
    out = {}
    for run in runs:
        path = store.run_dir(run.id) / "report.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        report = _report(str(store.home), run.id, mtime)
        if report is not None:
            out[run.id] = report
    return out


def compare_frame(store: Store, runs: list[Run]) -> pd.DataFrame:
    """compare.runs_frame from the cached reports, files named as they were uploaded."""
    return compare.runs_frame(store, runs, reports(store, runs), file_name=uploads.display_name)


# --- the runs table ----------------------------------------------------------------------------

def _ago(t: float | None, now: float) -> str:
    if t is None:
        return ""
    s = max(0.0, now - t)
    return f"{s:.0f} s ago" if s < 90 else f"{s / 60:.0f} min ago" if s < 5400 else f"{s / 3600:.1f} h ago"


def _duration(run: Run, now: float) -> str:
    if run.started is None:
        return ""
    return f"{(run.finished or now) - run.started:.1f} s"


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run for st.dataframe: status with icon, progress 0..1, stage, message, times."""
    now = time.time()
    rows = [{"id": r.id, "run": r.name, "status": f"{STATUS_ICONS.get(r.status, '')} {r.status}",
             "progress": r.progress, "stage": r.stage, "message": one_line(r.error) if r.error else r.message,
             "created": _ago(r.created, now), "duration": _duration(r, now), "sweep": r.sweep_id or ""}
            for r in runs]
    return pd.DataFrame(rows, columns=["id", "run", "status", "progress", "stage", "message", "created",
                                       "duration", "sweep"])


TABLE_CONFIG = {
    "id": st.column_config.NumberColumn("id", width="small"),
    "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "message": st.column_config.TextColumn("message", width="large"),
}


def one_line(error: str | None) -> str:
    """The first non-empty line of an error, short enough for a table cell or st.error."""
    line = next((ln.strip() for ln in (error or "").splitlines() if ln.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


def run_label(run: Run) -> str:
    return f"#{run.id} {run.name} — {STATUS_ICONS.get(run.status, '')} {run.status}"


def outcome_line(metrics: dict) -> str:
    """A succeeded run in one line: accuracy, gzip size, the weights.packed size when clustering wrote one, and
    ORT latency at batch 1, each against the baseline measured in the same run (gzip against the baseline's
    gzip: gzip alone shrinks an untouched float file; weights.packed against the baseline's file)."""
    rows = metrics.get("rows") or [{}]
    base, final = rows[0], metrics.get("final", rows[-1])
    parts = []
    if (accuracy := final.get("accuracy")) is not None:
        change = {"within noise": ", within noise", "identical": ", same answers", "drop": ", beyond noise",
                  "gain": ", beyond noise"}.get(final.get("acc_change"), "")
        parts.append(f"accuracy {accuracy:.3f}" + (f" ({accuracy - base['accuracy']:+.3f}{change})"
                                                   if base.get("accuracy") is not None else ""))
    if (gzip := final.get("gzip_kb")) is not None:
        parts.append(f"gzip {gzip:.1f} KB" + (f" ({base['gzip_kb'] / gzip:.2f}x smaller than the baseline's gzip)"
                                              if base.get("gzip_kb") and gzip else ""))
    if (packed := final.get("packed_kb")) is not None:
        parts.append(f"weights.packed {packed:.1f} KB" + (f" ({final['packed_x']:.1f}x smaller than the baseline "
                                                          "file)" if final.get("packed_x") else ""))
    if (latency := final.get("ort_ms@1")) is not None:
        parts.append(f"ORT @ batch 1 {ms(latency)}" + (f" ({final['speedup@1']:.2f}x the baseline's speed)"
                                                       if final.get("speedup@1") else ""))
    return " · ".join(parts) or "succeeded"


def log_tail(store: Store, run_id: int, lines: int = 60) -> str:
    """The last `lines` lines of the run's logs (only files inside the run's folder are read)."""
    root = store.run_dir(run_id).resolve()
    parts = []
    for name in LOG_FILES:
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            continue
        text = path.read_text(errors="replace").splitlines()[-lines:]
        if text:
            parts.append(f"--- {name} ---\n" + "\n".join(text))
    return "\n".join(parts) or "(no log yet)"


FLASH = "runs_flash"


def act(action, run_id: int, done: str) -> None:
    """A button callback running a store action; the outcome is shown once by `flash()` (a failure is one
    line, never a traceback). Callbacks run before the rerun, so the page already shows the new state."""
    try:
        action(run_id)
        st.session_state[FLASH] = ("success", done)
    except WorkbenchError as exc:
        st.session_state[FLASH] = ("error", one_line(str(exc)))


def flash() -> None:
    kind, text = st.session_state.pop(FLASH, (None, None))
    if kind == "error":
        st.error(text)
    elif kind:
        st.success(text)


# --- moving between pages ----------------------------------------------------------------------

def compare_link(ids: list[int], label: str) -> None:
    """A link to Compare showing `ids`; outside the full app (a page run alone) the URL to open instead."""
    value = ",".join(str(i) for i in ids)
    try:
        st.page_link(COMPARE_PAGE, label=label, icon="📊", query_params={RUNS_PARAM: value})
    except StreamlitAPIException:  # the page is not registered (a page run on its own, e.g. in tests)
        st.caption(f"{label}: open Compare with `?{RUNS_PARAM}={value}`")


def selected_ids(options: list[int], default: list[int]) -> list[int]:
    """Compare's starting selection: `?runs=` from the URL when it names known runs, else `default`."""
    raw = st.query_params.get(RUNS_PARAM, "")
    wanted = [int(p) for p in raw.split(",") if p.strip().isdigit()]
    return [i for i in wanted if i in options] or [i for i in default if i in options]


def remember_selection(ids: list[int]) -> None:
    value = ",".join(str(i) for i in ids)
    if st.query_params.get(RUNS_PARAM, "") != value:
        st.query_params[RUNS_PARAM] = value


def default_ids(store: Store) -> list[int]:
    """The sweep this session launched last (if any of it succeeded), else compare.default_selection
    for the current model (the model picked on the Model page)."""
    sweep = st.session_state.get(state.LAST_SWEEP_KEY)
    if sweep:
        ids = sorted(r.id for r in store.list(status="succeeded", sweep_id=sweep, limit=10_000))
        if ids:
            return ids
    return compare.default_selection(store, state.current_model().label)


def open_in_compress(where, spec: RunSpec, label: str, key: str) -> None:
    """A button that sets the Compress knobs (and the model and data) to `spec`'s and opens that page, which then
    says what of the recipe the knobs could not hold (ui.state.open_recipe)."""
    if where.button("Open in Compress", key=key, on_click=state.open_recipe, args=(spec, label),
                    help="set the Compress page's model, data and knobs to this recipe, to change it and launch "
                         "variants; that page says if a field of the recipe has no knob there"):
        st.switch_page("views/compress.py")


def start_worker() -> bool:
    """Start the background worker for this data dir unless one runs (or auto-start is off)."""
    return launch.start_worker()


def download(where, store: Store, run_id: int, name: str, label: str, file_name: str, help: str | None = None) -> None:
    """A download button for a run's artifact; the file is read on click, and only from inside the run's
    folder (compare.artifact_path). A missing file gives a disabled button with the reason."""
    try:
        path = compare.artifact_path(store, run_id, name)
    except WorkbenchError as exc:
        where.button(label, disabled=True, help=str(exc), key=f"dl_{name}_{run_id}")
        return
    where.download_button(label, path.read_bytes, file_name, "application/octet-stream", on_click="ignore",
                          key=f"dl_{name}_{run_id}", help=help)


def has_artifact(store: Store, run_id: int, name: str) -> bool:
    try:
        compare.artifact_path(store, run_id, name)
    except WorkbenchError:
        return False
    return True


def script_download(where, store: Store, run_id: int) -> None:
    """A Python script that reproduces the run through the workbench API (workbench.codegen)."""
    from workbench.codegen import python_script
    from workbench.specs import RunSpec

    name = f"run-{run_id}.py"
    try:
        script = python_script(RunSpec.from_dict(store.get(run_id).spec), filename=name)
    except WorkbenchError as exc:
        where.button("Script (reproduce.py)", disabled=True, help=str(exc), key=f"dl_script_{run_id}")
        return
    where.download_button("Script (reproduce.py)", script, name, "text/x-python", on_click="ignore",
                          key=f"dl_script_{run_id}")


def retry(run_id: int) -> None:
    """Queue a finished run again and make sure a worker will pick it up."""
    get_store().retry(run_id)
    start_worker()


# --- Compare page pieces -----------------------------------------------------------------------

BADGE_COLORS = {"real": "green", "simulated": "orange", "estimate": "blue", "none": "gray"}
TABLE_COLUMNS = ["id", "label", "model", "data", "method", "accuracy", "d_accuracy", "acc_change", "top1_agreement",
                 "file_kb", "gzip_kb", "min_storage_kb", "packed_kb", "file_x", "gzip_x", "min_storage_x", "packed_x",
                 "params_x", "sparsity", "channels_removed", "bits", "storage_bits", "real", "simulated",
                 "setting_sparsity", "setting_bits", "sweep_id", "threads"]
ACC_CHANGE_HELP = ("Within noise: the samples that went from right to wrong and from wrong to right could be chance "
                   "(exact McNemar test, p ≥ 0.05). The counts are under Claims.")
LATENCY_NOISE_HELP = ("Within noise: the change is inside the run-to-run spread of the timings (p90 over median), or "
                      "the variant runs the baseline's kernels; the reason is under Claims.")
PACKED_HELP = ("weights.packed: shared values + entropy-coded indices, decoded back losslessly by the workbench. "
               "A real size, but not a file ONNX Runtime loads: the model still runs from the float ONNX file")


SHORT_ASPECTS = {"file size": "file", "compressed size": "gzip", "minimum storage": "min. storage",
                 "latency @ batch ": "latency@", "accuracy": "accuracy"}


def badges(claims: list[dict], short: bool = False) -> str:
    """Claims as coloured markdown badges: 'REAL compressed size 6.1x', 'SIMULATED accuracy' ..."""
    out = []
    for c in claims:
        aspect = c["aspect"]
        if short:
            aspect = next((aspect.replace(k, v) for k, v in SHORT_ASPECTS.items() if aspect.startswith(k)), aspect)
        ratio = c.get("ratio") if c["aspect"] != "accuracy" else None
        worse = c["kind"] == "real" and ratio is not None and ratio < 1   # a real loss: slower or bigger
        text = f"{c['kind'].upper()} {aspect}" + (f" {ratio:.2f}x" if ratio is not None else "") + \
            (" (worse)" if worse else "")
        out.append(f":{'red' if worse else BADGE_COLORS.get(c['kind'], 'gray')}-badge[{text}]")
    return " ".join(out)


def ms(value: float) -> str:
    return f"{value * 1000:.0f} µs" if value < 1 else f"{value:.2f} ms"


def _pct(value: float, ref: float, what: str = "vs baseline", noise: bool = False) -> dict:
    """st.metric's delta (and its colour) for `value` against `ref`, lower being better; a change that rounds
    to 0% is grey and has no arrow, not a red "up"; so is one the run's claim found within noise (`noise`:
    a latency inside the run-to-run spread), which says so."""
    if not (ref and value == value and ref == ref):
        return {"delta": None}
    change = round((value / ref - 1) * 100)
    if not change:
        return {"delta": "±0%" + (", within noise" if noise else f" {what}"), "delta_color": "off",
                "delta_arrow": "off"}
    if noise:
        return {"delta": f"{change:+d}%, within noise", "delta_color": "off"}
    return {"delta": f"{change:+d}% {what}", "delta_color": "inverse"}


def _points(delta: float | None, change: str | None = None) -> dict:
    """st.metric's delta for an accuracy change, higher being better; one that rounds to 0.000 is grey, and so
    is one within test-set noise (`change`, workbench.significance's verdict), which says so."""
    if delta is None or delta != delta:
        return {"delta": None}
    text = f"{delta:+.3f}"
    if not float(text):
        return {"delta": "±0.000 vs baseline", "delta_color": "off", "delta_arrow": "off"}
    if change == "within noise":
        return {"delta": f"{text}, within noise", "delta_color": "off"}   # short: a card is narrow
    return {"delta": f"{text} vs baseline", "delta_color": "normal"}


def metric_cards(df: pd.DataFrame, claims: dict[int, list[dict]], batch: int, per_row: int = 4) -> None:
    """One bordered card per run: quality, gzip size and latency with deltas vs that run's baseline."""
    metric, lat = compare.quality_metric(df), f"ort_ms@{batch}"
    for start in range(0, len(df), per_row):
        for col, row in zip(st.columns(per_row), df.iloc[start:start + per_row].to_dict("records"), strict=False):
            with col.container(border=True):
                st.markdown(f"**{row['label']}**")
                st.caption(row["method"])
                change = row.get("acc_change") if metric == "accuracy" else None
                change = change if isinstance(change, str) else None   # NaN for a run without paired counts
                st.metric(metric, f"{row.get(metric, float('nan')):.3f}", help=ACC_CHANGE_HELP if change else None,
                          **_points(row.get(f"d_{metric}"), change))
                st.metric("gzip size", f"{row['gzip_kb']:.1f} KB",
                          **_pct(row["gzip_bytes"], row.get("base_gzip_bytes")))
                packed = row.get("packed_kb")
                if packed is not None and packed == packed:
                    st.metric("packed size", f"{packed:.1f} KB", help=PACKED_HELP,
                              **_pct(packed * 1024, row.get("base_file_bytes"), "vs baseline file"))
                if lat in row:
                    flat = row.get(f"claim:latency @ batch {batch}") == "none"   # the run's claim: no change
                    st.metric(f"ORT @ batch {batch}", ms(row[lat]), help=LATENCY_NOISE_HELP if flat else None,
                              **_pct(row[lat], row.get(f"base_{lat}"), noise=flat))
                shown = [c for c in claims.get(row["id"], []) if c["kind"] != "estimate"]
                st.markdown(badges(shown, short=True) or " ")


def table(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The comparison table for st.dataframe: the useful columns in order, with formats."""
    lat = sorted((c for c in df.columns if c.startswith(("ort_ms@", "speedup@", "torch_ms@"))),
                 key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    head, tail = TABLE_COLUMNS[:TABLE_COLUMNS.index("sparsity")], TABLE_COLUMNS[TABLE_COLUMNS.index("sparsity"):]
    cols = [c for c in head if c in df.columns] + lat + [c for c in tail if c in df.columns]
    cols = [c for c in cols if not (c.startswith("packed_") and df[c].isna().all())]   # nothing clustered
    fmt = {c: st.column_config.NumberColumn(c, format="%.2fx") for c in cols if c.endswith("_x") or "speedup" in c}
    fmt |= {c: st.column_config.NumberColumn(c, format="%.1f") for c in cols if c.endswith("_kb")}
    fmt |= {c: st.column_config.NumberColumn(c, format="%.4f") for c in cols if "_ms@" in c}
    fmt |= {c: st.column_config.NumberColumn(c, format="percent")
            for c in ("sparsity", "setting_sparsity", "channels_removed")}
    fmt |= {c: st.column_config.NumberColumn(c, format="%+.3f") for c in ("d_accuracy",)}
    return df[cols], fmt


@st.cache_data(show_spinner=False, max_entries=1000)
def _layers(home: str, run_id: int, mtime: float, label: str) -> pd.DataFrame:
    return compare.layer_frame(Store(home), run_id, label)


def layers(store: Store, df: pd.DataFrame) -> pd.DataFrame:
    """Per-layer sparsity of each selected run's model.onnx (cached by file time)."""
    frames = []
    for run_id, label in zip(df["id"], df["label"], strict=True):
        path = store.run_dir(run_id) / "model.onnx"
        if path.is_file():
            frames.append(_layers(str(store.home), int(run_id), path.stat().st_mtime, label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def history(df: pd.DataFrame, reports_by_id: dict[int, dict]) -> pd.DataFrame:
    """Per-round accuracy of runs that pruned in rounds (two or more), one line per run, each named with its
    schedule and how it retrained between rounds (LR rewinding, fine-tuning, weight rewinding)."""
    frames = []
    for i, label in zip(df["id"], df["label"], strict=True):
        report = reports_by_id.get(i)
        frame = compare.history_frame(report, rounds_label(label, report), 2)
        if not frame.empty:
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


RETRAINING = {"lr": "LR rewinding", "none": "fine-tuning", "weight": "weight rewinding"}


def rounds_label(label: str, report: dict | None) -> str:
    """'#7 90% · int8 · gradual, weight rewinding': the run label with its pruning schedule."""
    stages = ((report or {}).get("spec") or {}).get("stages") or []
    prune = next((body or {} for stage in stages for kind, body in stage.items() if kind == "prune"), None)
    if not prune or prune.get("schedule", "oneshot") == "oneshot":
        return label
    trained = (prune.get("finetune") or {}).get("epochs")
    return f"{label} · {prune['schedule']}" + (f", {RETRAINING.get(prune.get('rewind', 'lr'))}" if trained else "")


def searches(store: Store, df: pd.DataFrame) -> list[str]:
    """Sweep ids among the selected runs that are searches under an accuracy bar (workbench.search)."""
    out = []
    for sweep_id in dict.fromkeys(df["sweep_id"].dropna()) if "sweep_id" in df else []:
        try:
            if store.get_sweep(sweep_id).kind == "search":
                out.append(sweep_id)
        except WorkbenchError:   # a plain sweep: nothing recorded beyond its runs
            continue
    return out


SEARCH_COLUMNS = ["id", "label", "status", "sparsity", "bits", "ratio", "drop", "acc_change", "gzip_kb", "latency_ms",
                  "meets_bar", "pareto", "error"]


def search_panel(store: Store, sweep_id: str) -> None:
    """One search: the bar, the recommendation (or the closest candidates), every candidate, the Pareto set."""
    from workbench.search import OBJECTIVES, search_summary

    summary = search_summary(store, sweep_id)
    st.markdown(f"**Search {sweep_id}**: the bar is {summary.max_drop:g} pt of {summary.metric} below each "
                f"candidate's own baseline; {'smallest' if summary.objective == 'size' else 'fastest'} first.")
    (st.success if summary.recommended is not None else st.info)(summary.message)
    frame = summary.frame
    left, right = st.columns([3, 2])
    left.dataframe(frame[[c for c in SEARCH_COLUMNS + [summary.metric] if c in frame]], hide_index=True,
                   column_config={"sparsity": st.column_config.NumberColumn(format="percent"),
                                  "ratio": st.column_config.NumberColumn("channels removed", format="percent"),
                                  "drop": st.column_config.NumberColumn("drop (pt)", format="%.2f"),
                                  "gzip_kb": st.column_config.NumberColumn(format="%.1f")})
    x = OBJECTIVES[summary.objective]
    done = frame.dropna(subset=[x, summary.metric]).assign(kind="run")
    if not done.empty:
        right.altair_chart(charts.tradeoff_scatter(done, x, summary.metric, x_title={
            "gzip_kb": "gzip size (KB)", "latency_ms": "ORT latency (ms)"}[x]), width="stretch")


@st.cache_data(show_spinner="Reading what ONNX Runtime runs…", max_entries=200)
def _findings(home: str, run_id: int, mtime: float) -> list[dict]:
    from workbench.diagnosis import diagnose

    store = Store(home)
    report = compare.load_report(store, run_id)
    if report is None:
        raise WorkbenchError(f"run {run_id}: no report.json (the run did not finish, or it was deleted)")
    return [f.to_dict() for f in diagnose(report, -1, compare.artifact_path(store, run_id, "model"))]


FINDING_BADGES = {"cause": ":red-badge[cause]", "ok": ":green-badge[real speed]", "hint": ":gray-badge[hint]"}


def why_not_faster(store: Store, run_id: int) -> None:
    """The run's final variant diagnosed (workbench.diagnosis): the measured verdict, then causes, what
    works and hints, each one line plus its explanation."""
    path = store.run_dir(run_id) / "report.json"
    for finding in _findings(str(store.home), run_id, path.stat().st_mtime if path.is_file() else 0.0):
        st.markdown(f"{FINDING_BADGES.get(finding['kind'], '')} **{finding['headline']}**  \n"
                    f"{finding['explanation']}")


# --- Learn page pieces -------------------------------------------------------------------------

FLAG_MEANING = {
    "avx2": "256-bit SIMD: the baseline for fast float and int8 kernels",
    "avx512f": "512-bit SIMD: wider float kernels",
    "avx512_vnni": "int8 dot product in one instruction (VPDPBUSD): what makes int8 GEMM fast",
    "avx_vnni": "the same int8 dot product on 256-bit registers",
    "amx_int8": "AMX tiles: int8 matrix multiply units, the fastest int8 path on Xeon",
    "amx_tile": "AMX tile registers (needed by amx_int8)",
    "f16c": "float16 <-> float32 conversion (fp16 weights stored, computed in float32)",
}


@st.cache_data(show_spinner="Timing a dense matmul…", max_entries=4)
def matmul_timings(sparsities: tuple[float, ...]) -> pd.DataFrame:
    """compare.dense_matmul_times, measured once per app process."""
    return pd.DataFrame(compare.dense_matmul_times(sparsities))
