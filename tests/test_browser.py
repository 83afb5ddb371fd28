"""One real-browser smoke test: Playwright drives Debian's Chromium through the whole app.

Home → Model (pick a sample) → Compress (move the sparsity slider, launch a run) → Runs (wait until it
succeeds; the app starts the background worker itself) → Compare (a chart is drawn) → screenshot.

Needs `pip install playwright` and `apt-get install chromium` (no `playwright install`: that downloads a
browser). The screenshot goes to $WORKBENCH_SCREENSHOT (default: the test's tmp dir); with
WORKBENCH_UPDATE_SCREENSHOT=1 the test also launches a 3-run sweep and writes docs/screenshot-compare.png.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
UPDATE_DOCS = os.environ.get("WORKBENCH_UPDATE_SCREENSHOT") == "1"

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser test")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app(tmp_path):
    """`streamlit run app.py` on loopback with its own data dir and fast measurements; stopped afterwards,
    together with the background worker the app starts."""
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(home), "WORKBENCH_FAST_MEASURE": "1", "WORKBENCH_AUTO_WORKER": "1"}
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed in the teardown below
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1", "--server.port",
         str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, home
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
        from workbench.worker import auto_worker_pid

        pid = auto_worker_pid(home)
        if pid:
            os.kill(pid, signal.SIGTERM)


def nav(page, name: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(name, exact=True).click()
    page.get_by_role("heading", name=name, exact=True).first.wait_for(timeout=60_000)


def test_pick_slide_launch_wait_compare(app, tmp_path):
    url, home = app
    shot = Path(os.environ.get("WORKBENCH_SCREENSHOT") or tmp_path / "screenshot-compare.png")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("heading", name="Compression Workbench").wait_for()

        nav(page, "Model")
        page.get_by_test_id("stSelectbox").filter(has_text="Sample model").click()
        page.get_by_role("option", name="digits-mlp", exact=True).click()
        page.get_by_text("trained to").first.wait_for()

        nav(page, "Compress")
        slider = page.get_by_test_id("stSlider").filter(has_text="Sparsity")
        track = slider.locator("div[data-orientation='horizontal'][style*='relative']").bounding_box()
        page.mouse.click(track["x"] + 0.6 * track["width"], track["y"] + track["height"] / 2)
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stSliderThumbValue]')]"
                               ".some(e => parseInt(e.textContent) >= 40)")
        assert "sparsity=" in page.url   # the slider lives in the URL
        page.get_by_role("button", name="Launch run").click()
        page.get_by_text("queued: it runs in the background").wait_for()
        runs = 1
        if UPDATE_DOCS:   # a richer picture for the docs: three more settings
            page.get_by_role("button", name="Launch sweep (3 runs)").click()
            page.get_by_text("3 runs queued").wait_for()
            runs = 4

        nav(page, "Runs")
        page.get_by_text(f"{runs} succeeded", exact=True).wait_for(timeout=300_000 if UPDATE_DOCS else 180_000)

        nav(page, "Compare")
        charts = page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg")
        charts.first.wait_for()
        page.wait_for_timeout(1500)   # let every chart finish drawing
        assert charts.count() >= 5
        assert page.get_by_text("the Pareto frontier").count() >= 1
        height = page.evaluate("() => document.querySelector('[data-testid=stMainBlockContainer]').scrollHeight")
        page.set_viewport_size({"width": 1400, "height": max(1000, min(6000, height + 200))})  # the whole page
        page.wait_for_timeout(1000)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        if UPDATE_DOCS:
            docs = ROOT / "docs" / "screenshot-compare.png"
            docs.parent.mkdir(exist_ok=True)
            shutil.copyfile(shot, docs)
        browser.close()
    assert shot.stat().st_size > 10_000


def test_a_shared_link_opens_the_page_inside_the_app(app):
    """A deep link (?sparsity=80 on /compress) opens Compress with the app's own sidebar and the knob set.
    A folder named `pages/` would make Streamlit serve the bare script with an auto-generated sidebar."""
    url, _ = app
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/compress?model=digits-mlp&sparsity=80")
        page.get_by_role("heading", name="Compress", exact=True).first.wait_for()
        sidebar = page.get_by_test_id("stSidebarNav")
        for name in ("Home", "Model", "Compress", "Runs", "Compare", "Learn"):
            assert sidebar.get_by_text(name, exact=True).count() == 1, name
        assert sidebar.get_by_text("app", exact=True).count() == 0
        page.get_by_test_id("stSliderThumbValue").filter(has_text="80").first.wait_for()
        browser.close()
