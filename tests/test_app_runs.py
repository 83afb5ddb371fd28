"""The Runs page (AppTest): live table, progress, logs, cancel / retry / delete, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from workbench.settings import get_settings
from workbench.store import Store

PAGE = str(Path(__file__).resolve().parent.parent / "views" / "runs.py")
SPEC = {"model": {"sample": "digits-mlp"}, "stages": [{"prune": {"sparsity": 0.5}}]}


@pytest.fixture(autouse=True)
def fresh_app(monkeypatch):
    from ui import cache

    monkeypatch.setenv("WORKBENCH_AUTO_WORKER", "0")  # never start a background worker from a test
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def store() -> Store:
    """Run 1 succeeded (with a log), 2 failed, 3 running at 40%, 4 queued."""
    store = Store(get_settings().home)
    for name in ("done", "broken", "busy", "waiting"):
        store.submit(SPEC, name=name)
    store.claim("w")
    (store.run_dir(1)).mkdir(parents=True)
    (store.run_dir(1) / "log.txt").write_text("loading digits-mlp\nmeasuring the baseline\nfinished\n")
    final = {"accuracy": 0.97, "acc_change": "drop", "gzip_kb": 20.0, "gzip_x": 9.5, "ort_ms@1": 0.02,
             "speedup@1": 1.5}
    store.finish(1, "succeeded", {"rows": [{"accuracy": 0.99, "gzip_kb": 190.0}, final], "final": final})
    store.claim("w")
    store.finish(2, "failed", error="model.onnx: not a readable model\n--- log tail ---\nTraceback ...")
    store.claim("w")
    store.set_progress(3, 0.4, "1: prune", "round 1/2")
    return store


def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=30)


def select(at: AppTest, run_id: int) -> AppTest:
    return at.selectbox(key="runs_selected").set_value(run_id).run()


def progress_values(at: AppTest) -> list[int]:
    return [p.proto.value for p in at.get("progress")]


def test_empty_store_renders():
    at = page().run()
    assert not at.exception
    assert "No runs yet" in at.info[0].value


def test_table_lists_every_run_with_progress(store):
    at = page().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["id"]) == [4, 3, 2, 1]
    assert list(table["progress"]) == [0.0, 0.4, 0.0, 1.0]
    assert table.loc[table["id"] == 2, "message"].item() == "model.onnx: not a readable model"  # one line
    assert "succeeded" in table.loc[table["id"] == 1, "status"].item()


def test_a_running_run_shows_live_progress(store):
    at = select(page().run(), 3)
    assert progress_values(at) == [40]
    store.set_progress(3, 0.75, "1: prune", "round 2/2")
    at.run()  # AppTest cannot tick the polling fragment's timer: a rerun stands in for it
    assert progress_values(at) == [75]
    assert at.dataframe[0].value.loc[lambda t: t["id"] == 3, "stage"].item() == "1: prune"
    store.finish(3, "succeeded", {"rows": [], "final": {"accuracy": 0.9}})
    at.run()
    assert progress_values(at) == [] and at.success


def test_cancel_a_running_and_a_queued_run(store):
    at = select(page().run(), 3)
    at.button(key="cancel_3").click().run()
    assert not at.exception
    assert store.get(3).cancel_requested and store.get(3).status == "running"  # the worker confirms later
    at = select(at, 4)
    at.button(key="cancel_4").click().run()
    assert store.get(4).status == "cancelled"
    assert "cancel requested" in at.success[0].value


def test_retry_and_delete(store):
    at = select(page().run(), 2)
    assert at.error[0].value == "model.onnx: not a readable model"   # the whole error is in an expander
    at.button(key="retry_2").click().run()
    assert store.get(2).status == "queued"
    at = select(at, 1)
    at.button(key="delete_1").click().run()
    assert not at.exception
    assert [r.id for r in store.list()] == [4, 3, 2] and not store.run_dir(1).exists()


def test_a_failed_action_is_one_line(store):
    at = select(page().run(), 2)
    store.delete(2)   # gone behind the page's back (another tab, the CLI)
    at.button(key="retry_2").click().run()
    assert not at.exception
    assert any(e.value == "run 2: no such run" for e in at.error)


def test_logs_and_compare_link_of_a_finished_run(store):
    at = select(page().run(), 1)
    assert "measuring the baseline" in at.code[0].value
    assert any("?runs=1" in c.value for c in at.caption)   # run alone: the link degrades to the URL
    assert at.success[0].value == ("accuracy 0.970 (-0.020, beyond noise) · gzip 20.0 KB (9.50x smaller than the "
                                   "baseline's gzip) · ORT @ batch 1 20 µs (1.50x the baseline's speed)")


def test_a_clustered_run_says_its_packed_size():
    store = Store(get_settings().home)
    final = {"accuracy": 0.99, "gzip_kb": 9.3, "packed_kb": 4.2, "packed_x": 47.8, "ort_ms@1": 0.006}
    run = store.submit(SPEC, name="packed")
    store.claim("w")
    store.finish(run.id, "succeeded", {"rows": [{"accuracy": 0.99, "gzip_kb": 185.0}, final], "final": final})
    line = select(page().run(), run.id).success[0].value
    assert "· weights.packed 4.2 KB (47.8x smaller than the baseline file) ·" in line


def test_state_comes_from_the_store_only(store):
    first = select(page().run(), 3)
    first.button(key="cancel_3").click().run()
    reloaded = page()            # a new session, as after a browser reload
    reloaded.query_params["run"] = "3"
    reloaded.run()
    assert reloaded.selectbox(key="runs_selected").value == 3
    assert reloaded.dataframe[0].value.loc[lambda t: t["id"] == 3, "progress"].item() == 0.4


def test_inside_the_app_a_finished_run_links_to_compare(store):
    at = AppTest.from_file(str(Path(PAGE).parent.parent / "app.py"), default_timeout=30).run()
    at.switch_page("views/runs.py")
    at.query_params["run"] = "1"
    at.run()
    assert not at.exception
    links = {link.proto.label: link.proto for link in at.get("page_link")}
    assert links["Compare this run"].query_string == "runs=1"


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def queue_recipe(at: AppTest, name: str, content: bytes) -> AppTest:
    at.file_uploader(key="recipe_upload").upload(name, content).run()
    assert not at.exception
    return at


def test_a_recipe_file_is_shown_with_its_defaults_and_queued_as_written():
    from tests.app_fixtures import open_app

    at = queue_recipe(open_app("views/runs.py"), "seed.yaml", (RECIPES / "seed-iterative.yaml").read_bytes())
    shown = at.code[0].value
    assert "schedule: iterative" in shown and "calib_samples: 2048" in shown     # every default filled in
    at.button(key="queue_recipe").click().run()
    (run,) = Store(get_settings().home).list()
    assert run.name == "seed-iterative-20pct" and run.spec["model"]["sample"] == "digits-mlp"
    assert [list(s) for s in run.spec["stages"]] == [["prune"], ["quantize"]]


def test_a_recipe_file_runs_on_the_current_model_keeping_its_class_subset():
    from tests.app_fixtures import open_app

    at = open_app("views/runs.py", query={"model": "digits-cnn"})
    recipe = b"model: digits-mlp\ndata: {builtin: digits, classes: [3, 5]}\nstages:\n  - prune: {sparsity: 0.7}\n"
    queue_recipe(at, "mine.yaml", recipe).toggle(key="recipe_retarget").set_value(True).run()
    at.button(key="queue_recipe").click().run()
    (run,) = Store(get_settings().home).list()
    assert run.spec["model"]["sample"] == "digits-cnn" and run.spec["data"]["classes"] == [3, 5]
    assert run.spec["stages"][0]["prune"]["sparsity"] == 0.7


@pytest.mark.parametrize("name, content, message", [
    ("bad.yaml", b"model: [unclosed", "bad.yaml: not valid YAML"),
    ("typo.yaml", b"model: digits-mlp\nstages:\n  - prune: {sparsity: 1.5}\n", "stages[0].prune.sparsity"),
    ("binary.yaml", bytes(range(256)), "binary.yaml: not a text file"),
])
def test_a_bad_recipe_file_is_one_error_line_and_nothing_is_queued(name, content, message):
    from tests.app_fixtures import open_app

    at = queue_recipe(open_app("views/runs.py"), name, content)
    assert len(at.error) == 1 and message in at.error[0].value
    assert not [b for b in at.button if b.key == "queue_recipe"] and not Store(get_settings().home).list()


def test_a_recipe_naming_a_file_that_is_not_here_cannot_be_queued_until_retargeted():
    from tests.app_fixtures import open_app

    at = queue_recipe(open_app("views/runs.py"), "away.yaml", b"model: /nowhere/model.onnx\nstages: []\n")
    assert "model.path: /nowhere/model.onnx" in at.error[0].value and at.button(key="queue_recipe").disabled
    at.toggle(key="recipe_retarget").set_value(True).run()
    assert not at.error and not at.button(key="queue_recipe").disabled


def test_a_recipe_file_opens_in_compress_with_every_field_held():
    from tests.app_fixtures import open_app

    recipe = (RECIPES / "mlp-thin-sparse-packed.yaml").read_bytes()
    at = queue_recipe(open_app("views/runs.py", query={"model": "digits-cnn"}), "packed.yaml", recipe)
    at.button(key="open_recipe").click().run()
    assert not at.exception
    assert at.slider(key="thin").value == 50 and at.slider(key="sparsity").value == 65   # on the Compress page
    assert at.slider(key="thin_epochs").value == 30 and at.selectbox(key="lr").value == 0.003
    assert at.select_slider(key="clusters").value == 8 and at.select_slider(key="bias_clusters").value == 32
    assert at.session_state["model_ref"] == {"sample": "digits-mlp"}      # the recipe's model, not the one before
    assert [s.value for s in at.success] == ["Opened packed.yaml: the knobs below hold its whole recipe."]
    at.run()
    assert not at.success   # said once


def test_a_run_opens_in_compress_and_says_what_the_knobs_cannot_hold(store):
    from tests.app_fixtures import open_app

    spec = {"model": {"sample": "digits-mlp"}, "data": {"builtin": "digits", "classes": [3, 5]},
            "stages": [{"transfer": {}}, {"prune": {"sparsity": 0.853, "seed": 3}},
                       {"finetune": {"epochs": 4, "lr": 0.005, "label_smoothing": 0.1}}, {"cluster": {"clusters": 12}}]}
    run = store.submit(spec, name="odd")
    at = open_app("views/runs.py", query={"run": str(run.id)})
    at.button(key=f"open_{run.id}").click().run()
    assert not at.exception
    assert at.slider(key="sparsity").value == 85 and at.multiselect(key="classes").value == [3, 5]
    assert at.selectbox(key="lr").value == 0.003 and at.select_slider(key="clusters").value == 16   # nearest
    (warning,) = at.warning
    assert warning.value.startswith(f"Opened run #{run.id}, but the knobs below cannot hold all of its recipe (")
    for field in ("prune.sparsity: 0.853 -> 0.85", "prune.seed: 3 -> 0", "finetune.lr: 0.005 -> 0.003",
                  "cluster.clusters: 12 -> 16"):
        assert field in warning.value


def test_a_recipe_opens_with_its_measurement_settings_and_says_which_the_widgets_cannot_hold():
    import os

    from tests.app_fixtures import open_app

    recipe = yaml.safe_dump({"model": "digits-mlp", "stages": [{"prune": {"sparsity": 0.5}}],
                             "measure": {"batch_sizes": [1, 4, 64], "threads": 64, "torch_eager": False}})
    at = queue_recipe(open_app("views/runs.py"), "timed.yaml", recipe.encode())
    at.button(key="open_recipe").click().run()
    assert not at.exception
    assert at.multiselect(key="batch").value == [1, 64] and at.toggle(key="eager").value is False
    assert at.selectbox(key="threads").value == os.cpu_count()
    (warning,) = at.warning
    assert "measure.batch_sizes: 1, 4, 64 -> 1, 64" in warning.value
    assert f"measure.threads: 64 -> {os.cpu_count()}" in warning.value
    assert "measure.torch_eager" not in warning.value
