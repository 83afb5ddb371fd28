"""State of one browser session: current model and data, the compress knobs, measurement settings.

Durable state lives in the run store; shareable state in the URL; the rest in `st.session_state`
(which dies on a browser refresh, so everything worth keeping is also in the URL).

Session-state keys other pages may read:
  "model_ref"  dict of ModelRef fields   -> current_model()  (set_model() also updates the URL)
  "data_ref"   dict of DataRef fields    -> current_data()   (set_data())
  "last_runs"  list of run ids launched from this session, oldest first
  "last_sweep" sweep id of the last sweep launched from this session
  COMPRESS_DEFAULTS keys: the Compress page widgets (bound to the URL under the same names)
URL: ?model=<sample name | uploaded file name>&arch=<arch>&data=<digits | uploaded file name>&label=<column>
     plus the bound widgets: sparsity (percent), bits, method, scope, int8, calibration, epochs, schedule.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.presets import CompressSettings
from workbench.settings import get_settings
from workbench.specs import DataRef, MeasureSpec, ModelRef

MODEL_KEY, DATA_KEY = "model_ref", "data_ref"
LAST_RUNS_KEY, LAST_SWEEP_KEY = "last_runs", "last_sweep"
DEFAULT_SAMPLE = "digits-mlp"
# the Compress widgets: key (= URL parameter) -> default. Every default is its widget's first option, so
# a bound widget drops the parameter from the URL exactly when the value is the default.
COMPRESS_DEFAULTS = {"sparsity": 0, "bits": 32, "method": "magnitude", "scope": "global", "int8": "static",
                     "calibration": "minmax", "epochs": 0, "schedule": "oneshot"}
# Test/dev knob: WORKBENCH_FAST_MEASURE=1 makes runs launched from the app (and the Model page baseline)
# measure quickly and roughly. Never use it for numbers you report.
FAST_MEASURE_ENV = "WORKBENCH_FAST_MEASURE"
FAST_MEASURE = MeasureSpec(batch_sizes=(1, 32), warmup=1, repeats=5, min_time_s=0)
UPLOAD_NAME = re.compile(r"^[0-9a-f]{64}\.(onnx|pt2|pt|ts|safetensors|npz|csv)$")
SAMPLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def home() -> Path:
    return get_settings().home


def uploads_dir() -> Path:
    return home() / "uploads"


def measure_spec() -> MeasureSpec:
    """How launched runs measure: the defaults, or FAST_MEASURE when WORKBENCH_FAST_MEASURE=1."""
    return FAST_MEASURE if os.environ.get(FAST_MEASURE_ENV) == "1" else MeasureSpec()


def _fields(ref: ModelRef | DataRef) -> dict:
    return {k: v for k, v in vars(ref).items() if v is not None}


def current_model() -> ModelRef:
    if MODEL_KEY not in st.session_state:
        st.session_state[MODEL_KEY] = _model_from_url() or {"sample": DEFAULT_SAMPLE}
    return ModelRef(**st.session_state[MODEL_KEY])


def current_data() -> DataRef:
    if DATA_KEY not in st.session_state:
        st.session_state[DATA_KEY] = _data_from_url() or {"builtin": "digits"}
    return DataRef(**st.session_state[DATA_KEY])


def set_model(ref: ModelRef) -> None:
    st.session_state[MODEL_KEY] = _fields(ref)
    sync_url()


def set_data(ref: DataRef) -> None:
    st.session_state[DATA_KEY] = _fields(ref)
    sync_url()


def _upload_token(path: str | None) -> str | None:
    """The URL form of a file path: its name when it is an upload (content-named), else None."""
    if path and Path(path).parent == uploads_dir() and UPLOAD_NAME.match(Path(path).name):
        return Path(path).name
    return None


def sync_url() -> None:
    """Write the current model and data to the URL (only what changed), so the link can be shared."""
    model, data = current_model(), current_data()
    wanted = {"model": model.sample or _upload_token(model.path), "arch": model.arch,
              "data": data.builtin or _upload_token(data.path), "label": data.label_column}
    for key, value in wanted.items():
        if value is None and key in st.query_params:
            del st.query_params[key]
        elif value is not None and st.query_params.get(key) != value:
            st.query_params[key] = value


def _model_from_url() -> dict | None:
    token = st.query_params.get("model", "")
    try:
        if UPLOAD_NAME.match(token) and (uploads_dir() / token).is_file():
            return _fields(ModelRef(path=str(uploads_dir() / token), arch=st.query_params.get("arch") or None))
        if SAMPLE_NAME.match(token):
            return {"sample": token}
    except WorkbenchError:  # e.g. safetensors without arch: fall back to the default
        pass
    return None


def _data_from_url() -> dict | None:
    token = st.query_params.get("data", "")
    if UPLOAD_NAME.match(token) and (uploads_dir() / token).is_file():
        return _fields(DataRef(path=str(uploads_dir() / token), label_column=st.query_params.get("label") or None))
    return None


# --- the compress knobs -------------------------------------------------------------------------

def init_compress_state() -> None:
    """Give each compress widget its default once (a bound URL parameter still wins on first load)."""
    for key, value in COMPRESS_DEFAULTS.items():
        st.session_state.setdefault(key, value)


def compress_settings() -> CompressSettings:
    s = {k: st.session_state.get(k, v) for k, v in COMPRESS_DEFAULTS.items()}
    return CompressSettings(sparsity=s["sparsity"] / 100, bits=s["bits"], method=s["method"], scope=s["scope"],
                            int8=s["int8"], calibration=s["calibration"], epochs=s["epochs"],
                            schedule=s["schedule"])


def apply_settings(settings: CompressSettings) -> None:
    """Set the compress widgets to `settings` (use as an on_click callback, before the widgets render)."""
    st.session_state.update(sparsity=round(settings.sparsity * 100), bits=settings.bits, method=settings.method,
                            scope=settings.scope, int8=settings.int8, calibration=settings.calibration,
                            epochs=settings.epochs, schedule=settings.schedule)


def remember_runs(run_ids: list[int], sweep_id: str | None = None) -> None:
    st.session_state[LAST_RUNS_KEY] = [*st.session_state.get(LAST_RUNS_KEY, []), *run_ids][-50:]
    if sweep_id:
        st.session_state[LAST_SWEEP_KEY] = sweep_id
