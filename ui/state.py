"""State of one browser session: current model and data, the compress knobs, measurement settings.

Durable state lives in the run store; shareable state in the URL; the rest in `st.session_state`
(which dies on a browser refresh, so everything worth keeping is also in the URL).

Session-state keys other pages may read:
  "model_ref"  dict of ModelRef fields   -> current_model()  (set_model() also updates the URL)
  "data_ref"   dict of DataRef fields    -> current_data()   (set_data())
  "last_runs"  list of run ids launched from this session, oldest first
  "last_sweep" sweep id of the last sweep launched from this session
  COMPRESS_DEFAULTS and COMPRESS_VALUES keys: the Compress page widgets (bound to the URL under the same names)
  "batch", "threads", "eager"  how runs measure (ui.measure_knobs, on the Model and Compress pages) -> measure_spec()
URL: ?model=<sample name | uploaded file name>&arch=<arch>&data=<digits | uploaded file name>&label=<column>
     &train=<uploaded training file name> plus the bound widgets: technique, sparsity (percent), bits, method,
     scope, int8, calibration, epochs, lr (0: the model's), schedule, per_round (percent), steps, rewind,
     reconstruct, calib_samples, thin (percent), thin_epochs, ratio (percent), round8, width (percent),
     distill_epochs, init, energy (percent), clusters, cluster_epochs, bias_clusters, qat, qat_epochs, qat_act8,
     retrain_head, transfer_backbone, classes and exclude (repeated), overrides (JSON {layer: sparsity}, set by
     the sensitivity allocation, not a widget) and layer_bits (JSON {"method": "fake" | "weight_only", "bits":
     {layer: bits}}, set by the bits allocation); batch (repeated), threads and eager (how runs measure).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.measure_plan import default_batch_sizes
from workbench.presets import CLUSTER_CHOICES, LAYER_BITS_METHODS, RECOVERY_LRS, CompressSettings
from workbench.recipe_diff import measure_differences, stage_differences
from workbench.settings import get_settings
from workbench.specs import DataRef, MeasureSpec, ModelRef, RunSpec

MODEL_KEY, DATA_KEY = "model_ref", "data_ref"
LAST_RUNS_KEY, LAST_SWEEP_KEY = "last_runs", "last_sweep"
DEFAULT_SAMPLE = "digits-mlp"
# the Compress widgets: key (= URL parameter) -> default. Every default here is its widget's first option, so
# a bound widget drops the parameter from the URL exactly when the value is the default.
COMPRESS_DEFAULTS = {"technique": "unstructured", "sparsity": 0, "bits": 32, "method": "magnitude",
                     "scope": "global", "int8": "static", "calibration": "minmax", "epochs": 0, "lr": 0.0,
                     "schedule": "oneshot",
                     "rewind": "lr", "reconstruct": "none", "thin": 0, "init": "teacher", "clusters": 0,
                     "cluster_epochs": 0, "bias_clusters": 0, "qat": False, "qat_act8": False, "retrain_head": False,
                     "transfer_backbone": False, "classes": [],
                     "exclude": []}
# ...and those whose default is not their first option: the page passes it as the widget's value (percent
# for fractions), so they are not put into the session state before the widget exists
COMPRESS_VALUES = {"per_round": 20, "steps": 10, "thin_epochs": 30, "ratio": 50, "width": 50, "distill_epochs": 30,
                   "energy": 90, "qat_epochs": 5, "round8": True, "calib_samples": CompressSettings.calib_samples}
# the sliders' (low, high), in the widgets' units (percent for fractions): a recipe opened here is fitted into them
SLIDER_RANGES = {"sparsity": (0, 99), "thin": (0, 90), "per_round": (5, 50), "steps": (2, 30), "ratio": (5, 90),
                 "width": (10, 100), "energy": (50, 99)}
PERCENT = ("sparsity", "thin", "per_round", "ratio", "width", "energy")
OPENED_KEY = "opened_recipe"   # what opening a recipe on the Compress page could not hold, shown there once
# Test/dev knob: WORKBENCH_FAST_MEASURE=1 makes runs launched from the app (and the Model page baseline)
# measure quickly and roughly. Never use it for numbers you report.
FAST_MEASURE_ENV = "WORKBENCH_FAST_MEASURE"
FAST_MEASURE = MeasureSpec(batch_sizes=(1, 32), warmup=1, repeats=5, min_time_s=0)
BATCH_CHOICES = (1, 8, 32, 64, 128, 256)   # the batch sizes the measurement widget offers (ui.measure_knobs)
UPLOAD_NAME = re.compile(r"^[0-9a-f]{64}\.(onnx|pt2|pt|ts|safetensors|npz|csv)$")
SAMPLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def home() -> Path:
    return get_settings().home


def uploads_dir() -> Path:
    return home() / "uploads"


def measure_spec(macs_per_sample: int | None) -> MeasureSpec:
    """How the baseline and launched runs measure: the batch sizes, threads and torch-eager timing chosen in
    the measurement widgets; no batch size chosen: the default for a model of `macs_per_sample`
    (workbench.measure_plan). WORKBENCH_FAST_MEASURE=1 times fewer calls (FAST_MEASURE)."""
    fast = os.environ.get(FAST_MEASURE_ENV) == "1"
    base = FAST_MEASURE if fast else MeasureSpec()
    chosen = tuple(sorted(st.session_state.get("batch") or ()))
    automatic = base.batch_sizes if fast else default_batch_sizes(macs_per_sample)
    return dataclasses.replace(base, batch_sizes=chosen or automatic, threads=int(st.session_state.get("threads", 1)),
                               torch_eager=bool(st.session_state.get("eager", True)))


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
              "data": data.builtin or _upload_token(data.path), "label": data.label_column,
              "train": _upload_token(data.train_path)}
    for key, value in wanted.items():
        if value is None and key in st.query_params:
            del st.query_params[key]
        elif value is not None and st.query_params.get(key) != value:
            st.query_params[key] = value


def _uploaded(param: str) -> str | None:
    """The path of the upload named by URL parameter `param`, if it is an upload's name and the file is here."""
    token = st.query_params.get(param, "")
    return str(uploads_dir() / token) if UPLOAD_NAME.match(token) and (uploads_dir() / token).is_file() else None


def _model_from_url() -> dict | None:
    token = st.query_params.get("model", "")
    try:
        if path := _uploaded("model"):
            return _fields(ModelRef(path=path, arch=st.query_params.get("arch") or None))
        if SAMPLE_NAME.match(token):
            return {"sample": token}
    except WorkbenchError:  # e.g. safetensors without arch: fall back to the default
        pass
    return None


def _data_from_url() -> dict | None:
    if path := _uploaded("data"):
        return _fields(DataRef(path=path, train_path=_uploaded("train"),
                               label_column=st.query_params.get("label") or None))
    return None


# --- the compress knobs -------------------------------------------------------------------------

def init_compress_state() -> None:
    """Give each compress widget its default once (a bound URL parameter still wins on first load)."""
    for key, value in COMPRESS_DEFAULTS.items():
        st.session_state.setdefault(key, value)


def chosen(key: str) -> bool:
    """Whether compress knob `key` is set away from its default: in the URL (a bound widget drops the parameter
    at its default) or in the session. The URL counts because on a link's first load a widget reads it only
    when it renders, which is after the expander around it has decided whether to open."""
    default = {**COMPRESS_DEFAULTS, **COMPRESS_VALUES}[key]
    return key in st.query_params or st.session_state.get(key, default) != default


def compress_settings() -> CompressSettings:
    v = {k: st.session_state.get(k, d) for k, d in {**COMPRESS_DEFAULTS, **COMPRESS_VALUES}.items()}
    method, bits = layer_bits()
    return CompressSettings(
        technique=v["technique"], sparsity=v["sparsity"] / 100, bits=v["bits"], method=v["method"], scope=v["scope"],
        int8=v["int8"], calibration=v["calibration"], epochs=v["epochs"], lr=v["lr"], schedule=v["schedule"],
        per_round=v["per_round"] / 100, steps=v["steps"], rewind=v["rewind"],
        reconstruct=v["reconstruct"], calib_samples=v["calib_samples"], thin=v["thin"] / 100,
        thin_epochs=None if v["thin_epochs"] == v["epochs"] else v["thin_epochs"], ratio=v["ratio"] / 100,
        round_to=8 if v["round8"] else None, width=v["width"] / 100, distill_epochs=v["distill_epochs"],
        init=v["init"], energy=v["energy"] / 100, clusters=v["clusters"], cluster_epochs=v["cluster_epochs"],
        bias_clusters=v["bias_clusters"],
        qat=v["qat"], qat_epochs=v["qat_epochs"], qat_act8=v["qat_act8"], classes=tuple(v["classes"]),
        retrain_head=v["retrain_head"], transfer_backbone=v["transfer_backbone"],
        exclude=tuple(v["exclude"]), overrides=tuple(overrides().items()), layer_bits=tuple(bits.items()),
        layer_bits_method=method)


def apply_settings(settings: CompressSettings) -> None:
    """Set the compress widgets to `settings` (use as an on_click callback, before the widgets render)."""
    s = settings
    st.session_state.update(
        technique=s.technique, sparsity=round(s.sparsity * 100), bits=s.bits, method=s.method, scope=s.scope,
        int8=s.int8, calibration=s.calibration, epochs=s.epochs, lr=s.lr, schedule=s.schedule,
        per_round=round(s.per_round * 100), steps=s.steps, rewind=s.rewind,
        reconstruct=s.reconstruct, calib_samples=s.calib_samples, thin=round(s.thin * 100),
        thin_epochs=s.thin_recovery_epochs, ratio=round(s.ratio * 100),
        round8=s.round_to == 8, width=round(s.width * 100), distill_epochs=s.distill_epochs, init=s.init,
        energy=round(s.energy * 100), clusters=s.clusters, cluster_epochs=s.cluster_epochs,
        bias_clusters=s.bias_clusters, qat=s.qat,
        qat_epochs=s.qat_epochs, qat_act8=s.qat_act8, retrain_head=s.retrain_head,
        transfer_backbone=s.transfer_backbone, classes=list(s.classes),
        exclude=list(s.exclude))
    set_overrides(dict(s.overrides))
    set_layer_bits(s.layer_bits_method, dict(s.layer_bits))


def open_recipe(spec: RunSpec, label: str) -> None:
    """Set the model, the data and the compress knobs to `spec`'s (a button callback, before the Compress widgets
    render). The knobs hold what `CompressSettings.from_spec` reads, fitted into the widgets' ranges and choices;
    the fields of `spec` they cannot hold go to OPENED_KEY, which the Compress page shows once."""
    try:
        settings = fit_to_knobs(CompressSettings.from_spec(spec))
    except WorkbenchError as exc:
        st.session_state[OPENED_KEY] = {"label": label, "error": str(exc).splitlines()[0]}
        return
    set_model(spec.model)
    set_data(dataclasses.replace(spec.data, classes=None))   # a class subset is the transfer knob's
    apply_settings(settings)
    apply_measure(spec.measure)
    held = compress_settings().to_spec(current_model(), current_data())
    differences = (stage_differences(spec.stages, held.stages)
                   + measure_differences(spec.measure, measure_spec(None)))
    st.session_state[OPENED_KEY] = {"label": label, "differences": differences}


def apply_measure(measure: MeasureSpec) -> None:
    """Set the measurement widgets to `measure`: the batch sizes the widget offers, the threads up to this
    machine's cores, torch-eager timing (a button callback, before the widgets render)."""
    st.session_state.update(batch=[b for b in BATCH_CHOICES if b in measure.batch_sizes],
                            threads=min(measure.threads, os.cpu_count() or 1), eager=measure.torch_eager)


def fit_to_knobs(s: CompressSettings) -> CompressSettings:
    """`s` with every value a widget offers: sliders clamped into SLIDER_RANGES, the learning rate and the
    shared-value counts the nearest choice (log scale)."""
    fitted = {k: min(max(round(getattr(s, k) * 100), low), high) / 100 if k in PERCENT else
              min(max(getattr(s, k), low), high) for k, (low, high) in SLIDER_RANGES.items()}
    return dataclasses.replace(s, **fitted, lr=_nearest(s.lr, RECOVERY_LRS),
                               clusters=_nearest(s.clusters, CLUSTER_CHOICES[1:]),
                               bias_clusters=_nearest(s.bias_clusters, CLUSTER_CHOICES[1:]))


def _nearest(value: float, choices: tuple) -> float:
    """The choice nearest `value` on a log scale; 0 (off, or the default) stays 0."""
    return min(choices, key=lambda choice: abs(math.log(choice / value))) if value else value


OVERRIDES_KEY = "overrides"


def overrides() -> dict[str, float]:
    """Per-layer sparsities of the Compress setting (layer pattern -> sparsity), from the session or the URL."""
    if OVERRIDES_KEY not in st.session_state:
        st.session_state[OVERRIDES_KEY] = _overrides_from_url()
    return dict(st.session_state[OVERRIDES_KEY])


def set_overrides(values: dict[str, float]) -> None:
    st.session_state[OVERRIDES_KEY] = dict(values)
    if values:
        st.query_params[OVERRIDES_KEY] = json.dumps(values, separators=(",", ":"))
    elif OVERRIDES_KEY in st.query_params:
        del st.query_params[OVERRIDES_KEY]


def _overrides_from_url() -> dict[str, float]:
    """?overrides={"fc1":0.95,...}; anything else (bad JSON, values outside [0, 1)) is ignored."""
    try:
        raw = json.loads(st.query_params.get(OVERRIDES_KEY, "{}"))
    except ValueError:
        return {}
    ok = isinstance(raw, dict) and all(isinstance(k, str) and isinstance(v, int | float) and 0 <= v < 1
                                       for k, v in raw.items())
    return {k: float(v) for k, v in raw.items()} if ok else {}


LAYER_BITS_KEY = "layer_bits"
NO_LAYER_BITS = {"method": LAYER_BITS_METHODS[0], "bits": {}}


def layer_bits() -> tuple[str, dict[str, int]]:
    """(quantize method, layer pattern -> weight bits) of the Compress setting, from the session or the URL;
    no bits: the bitwidth slider applies."""
    if LAYER_BITS_KEY not in st.session_state:
        st.session_state[LAYER_BITS_KEY] = _layer_bits_from_url()
    value = st.session_state[LAYER_BITS_KEY]
    return value["method"], dict(value["bits"])


def set_layer_bits(method: str, bits: dict[str, int]) -> None:
    value = {"method": method, "bits": dict(bits)}
    st.session_state[LAYER_BITS_KEY] = value
    if bits:
        st.query_params[LAYER_BITS_KEY] = json.dumps(value, separators=(",", ":"))
    elif LAYER_BITS_KEY in st.query_params:
        del st.query_params[LAYER_BITS_KEY]


def _layer_bits_from_url() -> dict:
    """?layer_bits={"method":"fake","bits":{"fc1":8,...}}; anything the settings reject is ignored."""
    try:
        raw = json.loads(st.query_params.get(LAYER_BITS_KEY, "{}"))
        value = {"method": raw["method"], "bits": dict(raw["bits"])}
        CompressSettings(layer_bits=tuple(value["bits"].items()), layer_bits_method=value["method"])
    except (ValueError, KeyError, TypeError, AttributeError, WorkbenchError):
        return dict(NO_LAYER_BITS)
    return value


def remember_runs(run_ids: list[int], sweep_id: str | None = None) -> None:
    st.session_state[LAST_RUNS_KEY] = [*st.session_state.get(LAST_RUNS_KEY, []), *run_ids][-50:]
    if sweep_id:
        st.session_state[LAST_SWEEP_KEY] = sweep_id
