"""Cached loaders. Loaded models are shared by every session of the app process (st.cache_resource),
so whatever touches a model's weights (the preview's accuracy, the baseline's eager timing) holds its lock.

Cache keys are JSON strings of the refs: uploads are content-named, so a path names its content.
`clear()` empties every cache; tests call it, because st.cache_resource outlives an AppTest instance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from workbench.data import Dataset, Splits
from workbench.measure import Measurement
from workbench.models import LoadedModel, traced_kind
from workbench.presets import CompressSettings
from workbench.preview import Preview, Subject, with_layers
from workbench.repair_preview import RepairPreview
from workbench.sensitivity import Sensitivity
from workbench.specs import DataRef, MeasureSpec, ModelRef, PruneSpec, RunSpec
from workbench.store import Store
from workbench.summary import ModelSummary
from workbench.thinning import SameBytes

if TYPE_CHECKING:
    from workbench.onnx_torch import Conversion


@dataclass
class Held:
    """A loaded model and the lock that serializes work on its (shared) weights."""

    loaded: LoadedModel
    lock: threading.Lock


def _key(ref: ModelRef | DataRef | MeasureSpec) -> str:
    return json.dumps(dataclasses.asdict(ref), sort_keys=True)


def _model_ref(key: str) -> ModelRef:
    raw = json.loads(key)
    return ModelRef(**raw | {"input_shape": tuple(raw["input_shape"]) if raw.get("input_shape") else None})


def clear() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


@st.cache_resource(show_spinner=False)
def _store(home: str) -> Store:
    return Store(home)


def store() -> Store:
    from ui.state import home

    return _store(str(home()))


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _held(key: str) -> Held:
    from workbench.models import load_model

    return Held(load_model(_model_ref(key)), threading.Lock())


def model(ref: ModelRef) -> Held:
    """The loaded model (raises WorkbenchError for a bad file; errors are not cached)."""
    return _held(_key(ref))


@st.cache_resource(show_spinner=False, max_entries=8)
def _summary(key: str) -> ModelSummary:
    from workbench.summary import summarize

    held = _held(key)
    with held.lock:
        return summarize(held.loaded)


def summary(ref: ModelRef) -> ModelSummary:
    return _summary(_key(ref))


@st.cache_resource(show_spinner=False, max_entries=8)
def _weights(key: str) -> tuple[dict, int]:
    from workbench.preview import model_weights

    return model_weights(_held(key).loaded)


def weights(ref: ModelRef) -> tuple[dict, int]:
    """(prunable weights as numpy arrays, count of other parameters); treat as read-only."""
    return _weights(_key(ref))


@st.cache_resource(show_spinner="Loading the data…", max_entries=8)
def _splits(model_key: str, data_key: str) -> Splits:
    from workbench.pipeline import load_splits

    spec = RunSpec(model=_model_ref(model_key), data=DataRef(**json.loads(data_key)))
    return load_splits(spec, _held(model_key).loaded)


def splits(ref: ModelRef, data: DataRef) -> Splits:
    return _splits(_key(ref), _key(data))


@st.cache_data(show_spinner="Packing the weights…", max_entries=16)
def _same_bytes(model_key: str, ratio: float) -> SameBytes:
    from workbench.pipeline import example_inputs
    from workbench.thinning import same_bytes

    held = _held(model_key)
    example = example_inputs(_splits(model_key, _key(DataRef())).test)
    with held.lock:
        return same_bytes(held.loaded.module, example, ratio)


def same_bytes(ref: ModelRef, ratio: float) -> SameBytes:
    """A torch model's weights at 90% in weights.packed against a copy with `ratio` of its channels removed, in
    the same packed bytes (workbench.thinning); cached."""
    return _same_bytes(_key(ref), ratio)


@st.cache_resource(show_spinner="Converting the model to torch modules…", max_entries=4)
def _conversion(model_key: str, data_key: str) -> tuple[Conversion | None, Dataset | None, str | None]:
    """(the conversion, the test split typed for its module, None) or (None, None, why not) for an ONNX graph or
    a traced torch model (workbench.onnx_torch); the module is shared: previews prune copies."""
    from workbench.errors import WorkbenchError
    from workbench.onnx_torch import convert_loaded

    held = _held(model_key)
    try:
        with held.lock:
            conversion, typed, _ = convert_loaded(held.loaded, _splits(model_key, data_key))
    except WorkbenchError as exc:
        return None, None, str(exc).splitlines()[0]
    return conversion, typed.test, None


def conversion(ref: ModelRef, data: DataRef) -> tuple[Conversion | None, str | None]:
    """For an ONNX graph or a traced torch model: its conversion to torch modules on this data
    (workbench.onnx_torch) and None, or None and why a run could not convert it."""
    converted, _, why = _conversion(_key(ref), _key(data))
    return converted, why


def unconvertible(ref: ModelRef, data: DataRef) -> str | None:
    """Why a run could not convert the model to torch modules on this data, or None when it can."""
    return conversion(ref, data)[1]


@st.cache_resource(show_spinner="Reading the data file…", max_entries=8)
def _user_data(path: str, label_column: str | None, input_names: tuple[str, ...]) -> Dataset:
    from workbench.data import load_user_data

    return load_user_data(path, list(input_names), label_column)


def user_data(path: Path, label_column: str | None, input_names: tuple[str, ...] = ()) -> Dataset:
    """An uploaded data file, read once per content (uploads are named by their hash), label column and model
    inputs (a .npz may hold one array per input, named like them): the Model page checks it on every rerun
    while the uploader holds it. Treat as read-only."""
    return _user_data(str(path), label_column, tuple(input_names))


@st.cache_data(show_spinner=False, max_entries=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path | None) -> str:
    """sha256 of a file, cached by (path, mtime, size)."""
    if path is None or not Path(path).is_file():
        return ""
    stat = Path(path).stat()
    return _digest(str(path), stat.st_mtime_ns, stat.st_size)


@st.cache_data(show_spinner=False, max_entries=32)
def _baseline(model_key: str, model_sha: str, data_key: str, measure_key: str) -> Measurement:
    from workbench.baseline import measure_baseline

    held = _held(model_key)
    raw = json.loads(measure_key)
    measure = MeasureSpec(**raw | {"batch_sizes": tuple(raw["batch_sizes"])})
    spec = RunSpec(model=_model_ref(model_key), data=DataRef(**json.loads(data_key)), measure=measure)
    with held.lock:
        return measure_baseline(held.loaded, spec, _splits(model_key, data_key))


def baseline(ref: ModelRef, data: DataRef, measure: MeasureSpec) -> Measurement:
    """The model measured as it is (accuracy, ORT latency, size); cached by the model file's hash."""
    sha = file_digest(model(ref).loaded.source)
    return _baseline(_key(ref), sha, _key(data), _key(measure))


@st.cache_resource(show_spinner=False, max_entries=8)
def _subject(model_key: str, data_key: str) -> Subject:
    from workbench.preview import make_subject

    return make_subject(_held(model_key).loaded, _splits(model_key, data_key).test, _summary(model_key))


@st.cache_resource(show_spinner="Computing singular values…", max_entries=4)
def _factors(model_key: str) -> dict:
    from workbench.preview import ACCURACY_PARAM_LIMIT, svd_factors

    params, _ = _weights(model_key)
    # singular vectors (for the truncated weights' accuracy) only where the preview runs the model anyway
    return svd_factors(params, vectors=sum(w.size for w in params.values()) <= ACCURACY_PARAM_LIMIT)


def input_rms(ref: ModelRef, data: DataRef, samples: int = PruneSpec.calib_samples) -> dict | None:
    """Per prunable weight, the RMS of its inputs on `samples` of the data's solving split, drawn as a run draws
    them (what method wanda reads); None for models over the preview's size limit. Treat as read-only."""
    model(ref)
    return _rms(_key(ref), _key(data), samples)


@st.cache_resource(show_spinner="Reading each layer's inputs…", max_entries=4)
def _rms(model_key: str, data_key: str, samples: int) -> dict | None:
    """Method wanda's input RMS per weight on the solving sample; None above the preview's size limit."""
    from workbench.activations import input_rms
    from workbench.preview import ACCURACY_PARAM_LIMIT

    subject = _subject(model_key, data_key)
    if subject.runnable is None or sum(w.size for w in subject.weights.values()) > ACCURACY_PARAM_LIMIT:
        return None
    with _held(model_key).lock:
        return input_rms(subject.runnable, _splits(model_key, data_key).solving_sample(samples))[0]


def preview_for(ref: ModelRef, data: DataRef, settings: CompressSettings) -> Preview:
    """The instant preview of `settings` (one-shot, whatever the schedule): counts, sizes, accuracy; cached,
    since structured and distill settings prune a copy of the model with Torch-Pruning."""
    model(ref)  # loads it, or raises the model's own error
    return _preview(_key(ref), _key(data), settings)


@st.cache_resource(show_spinner=False, max_entries=32)
def _preview(key: str, data_key: str, settings: CompressSettings) -> Preview:
    from workbench.preview import preview_settings

    held = _held(key)
    subject = _subject(key, data_key)
    if settings.technique == "lowrank":
        subject = dataclasses.replace(subject, factors=_factors(key))
    if settings.method == "wanda" and settings.technique in ("unstructured", "nm"):
        subject = dataclasses.replace(subject, rms=_rms(key, data_key, settings.calib_samples))
    reshapes = settings.technique in ("structured", "distill") or settings.thins_first
    if reshapes and (held.loaded.kind == "onnx" or traced_kind(held.loaded.module)):
        converted, test, _ = _conversion(key, data_key)   # count on the layers a run would convert it to
        subject = with_layers(subject, converted.module, test) if converted is not None else subject
    with held.lock:
        return preview_settings(settings, subject)


@st.cache_data(show_spinner="Solving the kept weights…", max_entries=16)
def _repair(model_key: str, data_key: str, recipe: str) -> RepairPreview:
    from workbench.repair_preview import preview_repair

    spec = RunSpec.from_dict(json.loads(recipe))
    prune = next(stage for stage in spec.stages if stage.kind == "prune")
    held = _held(model_key)
    with held.lock:
        return preview_repair(held.loaded, spec.model, prune, _splits(model_key, data_key))


def repair(ref: ModelRef, data: DataRef, spec: RunSpec) -> RepairPreview:
    """`spec`'s prune stage run once on a copy of the model, with its reconstruction, and scored; cached."""
    return _repair(_key(ref), _key(data), json.dumps(spec.to_dict(), sort_keys=True))


@st.cache_resource(show_spinner="Measuring each layer's sensitivity…", max_entries=4)
def _sensitivity(model_key: str, data_key: str) -> Sensitivity:
    from workbench.sensitivity import analyze

    held = _held(model_key)
    with held.lock:   # analyze swaps one weight at a time in the shared module
        return analyze(held.loaded, _splits(model_key, data_key).test)


def sensitivity(ref: ModelRef, data: DataRef) -> Sensitivity:
    """Per-layer sensitivity of the model on the test split (workbench.sensitivity.analyze), once per model."""
    return _sensitivity(_key(ref), _key(data))


def dense_preview(ref: ModelRef, data: DataRef) -> Preview:
    """The preview of no compression: the reference for the preview's deltas."""
    return _dense(_key(ref), _key(data))


@st.cache_resource(show_spinner=False, max_entries=8)
def _dense(model_key: str, data_key: str) -> Preview:
    return preview_for(_model_ref(model_key), DataRef(**json.loads(data_key)), CompressSettings())
