"""Uploads: copied to disk at once as HOME/uploads/<sha256>.<ext> (Streamlit holds them in RAM), then
validated by loading them. Any failure becomes one line naming the file the user chose; never a traceback.

Only the content hash and an allowed suffix make up a stored name, so an upload's own name (`../x`, an
absolute path) can never place a file anywhere else. Uploads over `server.maxUploadSize` (the limit
Streamlit enforces in the browser, .streamlit/config.toml) are refused here too, before anything is written.
The functions take bytes and a name, so they work (and are tested) without a browser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.specs import MODEL_SUFFIXES, DataRef, ModelRef

log = logging.getLogger(__name__)
DATA_SUFFIXES = (".npz", ".csv")
NAME_SUFFIX = ".name"   # sidecar holding the file name the user uploaded


def max_upload_bytes() -> int:
    """The upload limit: Streamlit's `server.maxUploadSize` (megabytes)."""
    import streamlit as st

    return int(st.get_option("server.maxUploadSize")) * 1024**2


def save_upload(data: bytes, name: str, folder: Path, allowed: tuple[str, ...]) -> Path:
    """Write `data` to folder/<sha256><ext> (once; the same content reuses the file) and remember `name`."""
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise WorkbenchError(f"{name}: unsupported file type '{suffix or '(none)'}' (use {', '.join(allowed)})")
    if not data:
        raise WorkbenchError(f"{name}: the file is empty")
    limit = max_upload_bytes()
    if len(data) > limit:
        raise WorkbenchError(f"{name}: {len(data) / 1024**2:.1f} MB is over the upload limit of "
                             f"{limit / 1024**2:g} MB (server.maxUploadSize)")
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)  # readers never see a half-written upload
        path.with_name(path.name + NAME_SUFFIX).write_text(Path(name).name[:200])
    except OSError as exc:  # disk full, read-only data dir: nothing half-written stays behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise WorkbenchError(f"{name}: could not be saved in {folder} ({exc.strerror or exc})") from None
    return path


def display_name(path: str | Path | None) -> str:
    """The name the user uploaded `path` as (the content-hash name if unknown)."""
    if path is None:
        return ""
    sidecar = Path(path).with_name(Path(path).name + NAME_SUFFIX)
    try:
        return sidecar.read_text().strip() or Path(path).name
    except OSError:
        return Path(path).name


def model_label(ref: ModelRef) -> str:
    return ref.sample or display_name(ref.path)


def data_label(ref: DataRef) -> str:
    return ref.builtin or display_name(ref.path)


def one_line(exc: Exception, path: Path | None = None, name: str = "") -> WorkbenchError:
    """A user-facing one-line error; the stored hash name is replaced by the user's file name."""
    if isinstance(exc, WorkbenchError):
        text = str(exc)
    else:  # a loader bug or an odd file: the user still gets one line, the log keeps the traceback
        log.exception("loading %s failed", name or path)
        text = f"{name}: could not be loaded ({type(exc).__name__}: {exc})"
    if path is not None:
        text = text.replace(str(path), name).replace(path.name, name)
    lines = text.strip().splitlines()
    line = lines[0][:300] if lines else "could not be loaded"
    return WorkbenchError(line if not name or line.startswith(name) else f"{name}: {line}")


def accept_model(data: bytes, name: str, folder: Path, arch: str | None = None) -> ModelRef:
    """Save an uploaded model, load it (through the app's cache) and return its ref."""
    from ui import cache

    path = None
    try:
        path = save_upload(data, name, folder, MODEL_SUFFIXES)
        ref = ModelRef(path=str(path), arch=arch if path.suffix == ".safetensors" else None)
        cache.model(ref)
        cache.summary(ref)
    except Exception as exc:
        raise one_line(exc, path, name) from None
    return ref


def accept_data(data: bytes, name: str, folder: Path, label_column: str | None = None,
                input_names: tuple[str, ...] = ()) -> DataRef:
    """Save uploaded evaluation data, check that it reads (a .npz may name its arrays after the model's
    `input_names`), and return its ref."""
    from ui import cache

    path = None
    try:
        path = save_upload(data, name, folder, DATA_SUFFIXES)
        cache.user_data(path, label_column or None, input_names)
    except Exception as exc:
        raise one_line(exc, path, name) from None
    return DataRef(path=str(path), label_column=label_column or None)


def accept_training_data(data: bytes, name: str, folder: Path, evaluation: DataRef,
                         input_names: tuple[str, ...] = ()) -> DataRef:
    """Save an uploaded training file for the evaluation data `evaluation` (read with its label column and the
    model's `input_names`), check that it has labels and samples shaped like the evaluation data's, and return
    the combined ref."""
    from ui import cache
    from workbench.data import check_training_data

    path = None
    try:
        path = save_upload(data, name, folder, DATA_SUFFIXES)
        train = cache.user_data(path, evaluation.label_column, input_names)
        test = cache.user_data(Path(evaluation.path), evaluation.label_column, input_names)
        check_training_data(dataclasses.replace(train, name=name),
                            dataclasses.replace(test, name=data_label(evaluation)))
    except Exception as exc:
        raise one_line(exc, path, name) from None
    return dataclasses.replace(evaluation, train_path=str(path))

