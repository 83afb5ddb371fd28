"""Exposure: the app listens on loopback unless told otherwise (and says so when it is told), downloads
read only inside a run's folder, nothing is sent off the machine (no ONNX Runtime telemetry, no connection
attempts), and every entry point refuses to start when torch's safe loading is switched off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import ROOT, fresh_app_env
from tests.reliability.corpus import FAST_MEASURE, digits_onnx
from workbench.errors import WorkbenchError
from workbench.store import Store

pytestmark = pytest.mark.reliability
UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:   # 0A: LISTEN
                found.add(address)
    return found


def test_the_app_listens_on_loopback_only_by_default(tmp_path):
    """`streamlit run app.py` with no address option, as the README says: bound to 127.0.0.1 only."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1" and config["browser"]["gatherUsageStats"] is False
    port = _free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path / "home"), "WORKBENCH_AUTO_WORKER": "0"}
    with open(tmp_path / "streamlit.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while not _listening_addresses(port):
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "streamlit.log").read_text()
                time.sleep(0.3)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as reply:
                assert reply.read() == b"ok"
            assert _listening_addresses(port) == {"0100007F"}   # 127.0.0.1, and no IPv6 or wildcard socket
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


def test_serving_to_the_network_is_explicit_and_the_app_says_so(app_env):
    """With the repo's config the sidebar has no warning; served on 0.0.0.0 it warns on every page."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    options = {"server.address": config["server"]["address"],
               "browser.gatherUsageStats": config["browser"]["gatherUsageStats"]}
    previous = {key: st.get_option(key) for key in options}
    try:
        for key, value in options.items():   # as `streamlit run` in the repo folder reads them
            st.config.set_option(key, value)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        assert not at.exception and at.sidebar.caption and not at.sidebar.warning
        st.config.set_option("server.address", "0.0.0.0")
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    finally:
        for key, value in previous.items():
            st.config.set_option(key, value)
    (warning,) = at.sidebar.warning
    assert "Served on 0.0.0.0" in warning.value and "anyone who can reach this port" in warning.value
    for doc in ("README.md", "RELIABILITY.md"):   # the option is documented, with its risk
        text = " ".join((ROOT / doc).read_text().split())
        assert "--server.address 0.0.0.0" in text and "start runs on your machine" in text, doc


def test_downloads_read_only_inside_the_run_folder(tmp_path):
    from workbench.compare import artifact_path

    store = Store(tmp_path / "home")
    run = store.submit({"model": {"sample": "digits-mlp"}})
    folder = store.run_dir(run.id)
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text("version: 1\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (folder / "report.json").symlink_to(secret)
    assert artifact_path(store, run.id, "recipe") == (folder / "recipe.yaml").resolve()
    with pytest.raises(WorkbenchError, match="points outside the run's folder"):
        artifact_path(store, run.id, "report")
    with pytest.raises(WorkbenchError, match="unknown artifact"):
        artifact_path(store, run.id, "../../secret.txt")


GUARD = """
import socket, sys
attempts = []
real_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        attempts.append(host)
        raise OSError("blocked by the test: " + host)
    return real_connect(self, address)
socket.socket.connect = connect
def lookup(host, *args, **kwargs):
    attempts.append("dns:" + str(host))
    raise socket.gaierror("blocked by the test")
socket.getaddrinfo = lookup
from workbench.cli import main
for argv in (["inspect", sys.argv[1]], ["run", sys.argv[2], "--out", sys.argv[3], "--quiet"]):
    try:
        main(argv)
    except SystemExit as exit:
        assert not exit.code, exit.code
print("ATTEMPTS", attempts)
"""


def test_nothing_is_sent_off_the_machine(tmp_path):
    """A run through the CLI makes no connection and no DNS lookup, and ONNX Runtime's telemetry (on by
    default in its Linux builds) never starts: no session file in TMPDIR, no event cache in the home dir."""
    model = tmp_path / "digits.onnx"
    model.write_bytes(digits_onnx().SerializeToString())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"path": str(model)}, "stages": [{"quantize": {"method": "dynamic"}}],
                                      "measure": FAST_MEASURE}))
    user_home, tmp = tmp_path / "user", tmp_path / "tmp"
    user_home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env |= {"HOME": str(user_home), "TMPDIR": str(tmp), "WORKBENCH_HOME": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", GUARD, str(model), str(recipe), str(tmp_path / "data" / "out")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ATTEMPTS []" in done.stdout, done.stdout[-500:]
    left = [str(p.relative_to(tmp_path)) for p in [*user_home.rglob("*"), *tmp.rglob("*")]]
    assert left == [], f"written outside the data dir (telemetry?): {left}"


def test_every_entry_point_refuses_to_start_without_safe_loading(tmp_path, monkeypatch, app_env):
    home = tmp_path / "home"
    store = Store(home)
    queued = store.submit({"model": {"sample": "digits-mlp"}})
    env = {**os.environ, UNSAFE: "1", "WORKBENCH_HOME": str(home)}
    for args in (["runs"], ["worker", "--until-idle"], ["inspect", "digits-mlp"]):
        done = subprocess.run([sys.executable, "-m", "workbench", *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and done.stdout == "", (args, done.stdout, done.stderr)
        assert done.stderr.startswith(f"error: {UNSAFE}=1 is set") and done.stderr.count("\n") == 1, done.stderr
    assert store.get(queued.id).status == "queued"   # the worker refused before claiming anything

    monkeypatch.setenv(UNSAFE, "yes")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith(f"{UNSAFE}=yes is set") and "refuses to start" in error.value
    assert not at.title and not at.sidebar.caption   # no page and no sidebar were drawn
    monkeypatch.setenv(UNSAFE, "0")   # an explicit "off" is fine
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.error and at.title and at.sidebar.caption
