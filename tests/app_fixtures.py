"""Shared AppTest helpers for the app's page tests.

Use in a test module:

    @pytest.fixture(autouse=True)
    def app_env(monkeypatch, isolated_home):
        yield from fresh_app_env(monkeypatch, isolated_home)

Each test then gets empty Streamlit caches (st.cache_resource outlives an AppTest instance), fast
measurement for launched runs (WORKBENCH_FAST_MEASURE=1) and no auto-started worker
(WORKBENCH_AUTO_WORKER=0): tests run the queue in-process with `drain_queue`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120   # seconds per script run: the first one imports torch and loads a model


def fresh_app_env(monkeypatch, home: Path) -> Iterator[Path]:
    from ui import cache

    monkeypatch.setenv("WORKBENCH_FAST_MEASURE", "1")
    monkeypatch.setenv("WORKBENCH_AUTO_WORKER", "0")
    monkeypatch.chdir(ROOT)
    cache.clear()
    yield home
    cache.clear()


def open_app(page: str | None = None, query: dict[str, str] | None = None,
             session: dict | None = None) -> AppTest:
    """Run app.py (optionally on `page`, with URL `query` and preset session state) and return the AppTest."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    for key, value in (session or {}).items():
        at.session_state[key] = value
    if page:
        at.switch_page(page)
    return at.run()


def texts(at: AppTest) -> list[str]:
    """Every markdown, caption, success, info, warning and error text on the page (sidebar included)."""
    kinds = ("markdown", "caption", "success", "info", "warning", "error")
    return [str(e.value) for kind in kinds for e in at.get(kind)] + \
           [str(e.value) for kind in kinds for e in at.sidebar.get(kind)]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def chart_specs(at: AppTest) -> list[dict]:
    """The Vega-Lite specs of every Altair chart on the page."""
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def drain_queue(home: Path) -> None:
    """Run every queued run to its end with the real worker (one child process per run)."""
    from workbench.store import Store
    from workbench.worker import Worker

    Worker(Store(home), concurrency=1).run(until_idle=True)


def rerun_until(at: AppTest, predicate, timeout_s: float = 30.0) -> AppTest:
    """AppTest cannot tick `st.fragment(run_every=...)`: rerun the script until `predicate(at)` holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate(at.run()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {texts(at)[-5:]}")
        time.sleep(0.2)
    return at


def chart_frames(at: AppTest) -> dict[str, object]:
    """The data of each Altair chart on the page, by title, as a pandas DataFrame (its first dataset)."""
    import pyarrow as pa

    out = {}
    for chart in at.get("vega_lite_chart"):
        title = json.loads(chart.proto.spec).get("title")
        if chart.proto.datasets:
            table = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all()
            out[title if isinstance(title, str) else title["text"]] = table.to_pandas()
    return out
