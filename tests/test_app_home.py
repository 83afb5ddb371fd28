"""Home page and the app shell: every page renders, recent runs come from the store, the sidebar and URL
carry the current model."""

import pytest

from tests.app_fixtures import ROOT, fresh_app_env, open_app, texts
from workbench import jobs
from workbench.specs import ModelRef, RunSpec
from workbench.store import Store

PAGES = ["views/home.py", "views/model.py", "views/compress.py", "views/runs.py", "views/compare.py",
         "views/learn.py"]


@pytest.fixture(autouse=True)
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


def test_home_explains_links_and_lists_recent_runs(isolated_home):
    run = jobs.submit(Store(isolated_home), RunSpec(model=ModelRef(sample="digits-mlp"), name="my first run"))
    at = open_app()
    assert not at.exception and at.title[0].value == "Compression Workbench"
    assert {"Pick a model", "Compress", "Compare"} <= {link.proto.label for link in at.get("page_link")}
    table = at.dataframe[0].value
    assert list(table["id"]) == [run.id] and table["name"][0] == "my first run"
    assert any(":orange-badge[simulated]" in t and ":green-badge[real]" in t for t in texts(at))
    # the shared sidebar (AppTest shows app.py's own elements only on a run without a page switch)
    assert any("`digits-mlp`" in t for t in texts(at))
    assert any("auto-start off" in t for t in texts(at))  # loading a page never starts a worker


def test_the_sidebar_names_a_worker_started_outside_the_app(isolated_home):
    Store(isolated_home).register_worker("terminal")       # as `workbench worker` in a terminal does
    at = open_app()
    assert not at.exception and any("served by 1 worker(s) started outside the app" in t for t in texts(at))


def test_every_page_renders_without_exception():
    at = open_app()
    for page in PAGES:
        assert (ROOT / page).is_file(), page
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
