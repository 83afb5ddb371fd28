"""Every corpus model and data file, uploaded on the Model page of one app session (AppTest), one after
another: each shows one error line and no exception, the page keeps rendering, the next normal upload
works, nothing is written outside the data dir, and every stored upload has a content-hash name."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import streamlit as st

from tests.app_fixtures import fresh_app_env, open_app
from tests.reliability.corpus import ALL_CASES, UPLOAD_LIMIT_MB, Case, digits_onnx
from tests.reliability.entries import Sandbox

pytestmark = pytest.mark.reliability
PAGE = "views/model.py"
CASES = [case for case in ALL_CASES if "app" in case.entries]
UPLOADER = {"model": ("model_source", "Upload a model file", "model_upload"),
            "data": ("data_source", "Upload .npz / .csv", "data_upload")}
HASH_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]+(\.name)?$")


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Sandbox:
    return Sandbox(tmp_path_factory.mktemp("app"))


@pytest.fixture(autouse=True)
def isolated_home(monkeypatch, box):
    """One data dir for the whole module (the app session outlives a test), instead of one per test."""
    monkeypatch.setenv("WORKBENCH_HOME", str(box.home))
    return box.home


@pytest.fixture(scope="module")
def app(box):
    """The Model page of one session, with a lowered upload limit; caches are fresh before and after."""
    previous = st.get_option("server.maxUploadSize")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(box.home))
        env = fresh_app_env(mp, box.home)
        next(env)
        st.config.set_option("server.maxUploadSize", UPLOAD_LIMIT_MB)
        try:
            yield open_app(PAGE)
        finally:
            st.config.set_option("server.maxUploadSize", previous)
            next(env, None)


def _good_file(kind: str) -> tuple[str, bytes]:
    if kind == "model":
        return "good.onnx", digits_onnx().SerializeToString()
    rng, buffer = np.random.default_rng(3), io.BytesIO()
    np.savez(buffer, x=rng.random((30, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 30))
    return "good.npz", buffer.getvalue()


def _upload(at, kind: str, name: str, data: bytes, arch: str | None = None):
    radio, choice, uploader = UPLOADER[kind]
    if at.radio(key=radio).value != choice:
        at.radio(key=radio).set_value(choice).run()
    if arch:
        at.selectbox(key="model_arch").set_value(arch)
    return at.file_uploader(key=uploader).upload(name, data).run()


def _verdict(at, case: Case) -> tuple[str, str]:
    if at.exception:
        return "crash", f"exception element: {at.exception[0].value}"
    errors = [str(e.value) for e in at.error]
    if len(errors) != 1:
        return "unclear", f"{len(errors)} error elements: {errors}"
    if not at.dataframe:
        return "crash", f"the layer table is gone after: {errors[0]}"
    message = errors[0]
    return ("clear" if case.expect in message and "\n" not in message else "unclear"), message


def _refused_by_the_widget(at, case: Case, path: Path) -> bool:
    radio, choice, uploader = UPLOADER[case.kind]
    if at.radio(key=radio).value != choice:
        at.radio(key=radio).set_value(choice).run()
    return path.suffix.lower() not in at.file_uploader(key=uploader).allowed_type


def _below_the_widget(case: Case, path: Path, box: Sandbox) -> tuple[str, str]:
    """What ui/uploads does with a file the uploader widget would not offer (a forged request)."""
    from ui import uploads
    from workbench.errors import WorkbenchError

    accept = uploads.accept_model if case.kind == "model" else uploads.accept_data
    try:
        accept(path.read_bytes(), path.name, box.home / "uploads")
    except WorkbenchError as exc:
        return ("clear" if case.expect in str(exc) and "\n" not in str(exc) else "unclear"), str(exc)
    except Exception as exc:
        return "crash", f"{type(exc).__name__}: {exc}"
    return "unclear", "accepted without an error"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_upload_is_one_error_line_and_the_app_keeps_working(case: Case, app, box: Sandbox, tally):
    """Types the uploader does not offer (.pth, .txt) are refused by Streamlit before any of our code
    runs; for those, ui/uploads (which a forged request would reach) is checked directly."""
    path = case.make(box.inputs)
    before = box.snapshot()
    if _refused_by_the_widget(app, case, path):
        at, (outcome, message) = app, _below_the_widget(case, path, box)
    else:
        at = _upload(app, case.kind, path.name, path.read_bytes(), case.arch)
        outcome, message = _verdict(at, case)
    name, data = _good_file(case.kind)
    at = _upload(at, case.kind, name, data)   # the normal action that follows must work
    if at.exception or at.error:
        outcome, message = "crash", f"the next upload failed after '{message}': {[e.value for e in at.error]}"
    stray = box.trespass(before)
    if stray:
        outcome, message = "crash", stray
    tally.outcome(f"app {case}", outcome, message)
    assert outcome == "clear", f"expected '{case.expect}', got: {message}"


def test_uploads_are_stored_under_content_hash_names_only(app, box: Sandbox):
    """Whatever name an upload claims (a path out of the folder, an absolute path), it lands in
    HOME/uploads as <sha256>.<suffix>, with the claimed name kept only as text in a .name sidecar."""
    _upload(app, "model", "../../escape.onnx", digits_onnx().SerializeToString())
    _upload(app, "data", "/tmp/evil.npz", b"PK not really an archive")
    stored = sorted(p.name for p in (box.home / "uploads").iterdir())
    assert len(stored) >= 4 and all(HASH_NAME.match(name) for name in stored), stored
    assert not list(box.root.parent.glob("escape.onnx")) and not Path("/tmp/evil.npz").exists()
