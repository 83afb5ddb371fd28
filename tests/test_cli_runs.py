"""The queue commands: submit, runs, show, cancel, retry, delete, sweep, sweep-summary, search,
search-summary, versus, execute, worker."""

import json
import shutil
import sys
import types

import pytest
import yaml

from tests.conftest import FAST_MEASURE
from workbench.cli import main
from workbench.store import Store


@pytest.fixture()
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture()
def recipe(tmp_path, tiny_onnx):
    shutil.copy(tiny_onnx, tmp_path / "tiny.onnx")  # relative to the recipe, as users write them
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "model": "tiny.onnx", "measure": FAST_MEASURE,
                                    "stages": [{"prune": {"sparsity": 0.7}}]}))
    return path


def _cli(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def _fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_submit_runs_show_cancel_retry_execute_delete(home, recipe, capsys):
    run_id = _cli(capsys, "submit", str(recipe), "--home", str(home), "--name", "first").strip()
    assert run_id == "1"
    listing = _cli(capsys, "runs", "--home", str(home))
    assert listing.splitlines()[0].split() == ["id", "name", "status", "progress", "stage", "age", "accuracy", "sweep"]
    assert "first" in listing and "queued" in listing

    assert _cli(capsys, "cancel", "1", "--home", str(home)).strip() == "run 1: cancelled"  # queued: at once
    assert "not claimed" in _fails(capsys, "execute", "1", "--home", str(home))
    assert _cli(capsys, "retry", "1", "--home", str(home)).strip() == "run 1: queued again"
    assert "cannot retry a queued run" in _fails(capsys, "retry", "1", "--home", str(home))
    assert "no report to diagnose (status queued)" in _fails(capsys, "why", "1", "--home", str(home))

    Store(home).claim("test-worker")
    assert "is running; cancel it first" in _fails(capsys, "delete", "1", "--home", str(home))
    assert _cli(capsys, "execute", "1", "--home", str(home)).strip() == "run 1: succeeded"
    shown = _cli(capsys, "show", "1", "--home", str(home))
    assert "status    succeeded (attempt 1)" in shown
    assert "recipe    tiny.onnx on digits: prune(sparsity=0.7)" in shown
    assert "baseline" in shown and "1: prune" in shown and "accuracy" in shown
    assert str(Store(home).run_dir(1) / "model.onnx") in shown and "report.json" in shown
    listing = _cli(capsys, "runs", "--status", "succeeded", "--home", str(home))
    accuracy = Store(home).get(1).metrics["final"]["accuracy"]
    assert "100%" in listing and str(accuracy) in listing

    assert "already succeeded" in _fails(capsys, "cancel", "1", "--home", str(home))
    why = _cli(capsys, "why", "1", "--home", str(home))
    assert why.startswith("run 1: first") and "zero" in why.lower()   # pruned only: zeros stored densely
    assert _cli(capsys, "delete", "1", "--home", str(home)).strip() == "run 1: deleted"
    assert not Store(home).run_dir(1).exists()
    assert _cli(capsys, "runs", "--home", str(home)).strip() == "no runs"


def test_bad_ids_are_one_line_errors(home, capsys):
    assert _fails(capsys, "show", "7", "--home", str(home)) == "error: run 7: no such run"
    assert "whole number" in _fails(capsys, "cancel", "abc", "--home", str(home))
    for command in ("retry", "delete"):
        assert "no such run" in _fails(capsys, command, "7", "--home", str(home))
    assert "no such sweep" in _fails(capsys, "sweep-summary", "nope", "--home", str(home))
    assert "recipe not found" in _fails(capsys, "submit", str(home / "none.yaml"), "--home", str(home))


def test_sweep_runs_through_the_worker_and_summarises(home, recipe, capsys):
    out = _cli(capsys, "sweep", str(recipe), "--grid", "sparsity=0.5,0.9", "--home", str(home)).splitlines()
    assert out[0].startswith("sweep ") and len(out) == 3
    sweep_id = out[0].split()[1]
    assert [line.split()[0] for line in out[1:]] == ["1", "2"]
    assert "tiny [sparsity=0.9]" in out[2]
    assert "sparsity: must be in [0, 1)" in _fails(capsys, "sweep", str(recipe), "--grid", "sparsity=0.5,1.5",
                                                  "--home", str(home))
    assert len(Store(home).list()) == 2  # nothing of the bad sweep was queued

    main(["worker", "--home", str(home), "--until-idle", "--concurrency", "2"])
    capsys.readouterr()
    listing = _cli(capsys, "runs", "--sweep", sweep_id, "--home", str(home)).splitlines()
    assert len(listing) == 3 and all("succeeded" in line and sweep_id in line for line in listing[1:])
    summary = _cli(capsys, "sweep-summary", sweep_id, "--home", str(home)).splitlines()
    header = summary[0].split()
    assert header[:4] == ["id", "name", "status", "variant"] and "accuracy" in header and "sparsity" in header
    at = summary[0].index(" sparsity ") + 1  # columns are aligned; names hold spaces
    assert [row[at:].split()[0] for row in summary[1:]] == ["0.5", "0.9"]

    versus = _cli(capsys, "versus", "1", "2", "--home", str(home)).splitlines()
    assert versus[0] == "against run 1 (tiny [sparsity=0.5]), sample by sample on the same test samples:"
    assert versus[1].split()[:6] == ["id", "label", "accuracy", "vs", "reference", "(pt)"] and "went_wrong" in versus[1]
    assert versus[2].split()[0] == "2" and any(v in versus[2] for v in ("identical", "within noise", "drop", "gain"))
    assert "run 3: no such run" in _fails(capsys, "versus", "1", "3", "--home", str(home))


def test_worker_hands_runs_to_ray_when_asked(home, monkeypatch, capsys):
    made = []

    class FakeRay:
        name = "ray"

        def __init__(self, address, num_cpus=1, num_gpus=0):
            made.append((address, num_gpus))

        def connect(self):
            made.append("connect")

        def start(self, store, run):
            raise AssertionError("nothing is queued")

        def finished(self):
            return []

        def kill(self, run_id):
            pass

        def active(self):
            return 0

        def shutdown(self):
            made.append("shutdown")

    monkeypatch.setitem(sys.modules, "workbench.ray_executor", types.SimpleNamespace(RayExecutor=FakeRay))
    main(["worker", "--home", str(home), "--until-idle", "--ray", "ray://head:10001", "--ray-gpus", "1"])
    monkeypatch.setenv("WORKBENCH_RAY_ADDRESS", "auto")
    main(["worker", "--home", str(home), "--until-idle"])
    assert made == [("ray://head:10001", 1.0), "connect", "shutdown", ("auto", 0.0), "connect", "shutdown"]


def test_search_queues_candidates_and_summarises_them(home, recipe, capsys):
    out = _cli(capsys, "search", str(recipe), "--max-drop", "1", "--trials", "2", "--sparsity", "0.5,0.9",
               "--bits", "32", "--home", str(home)).splitlines()
    assert out[0].endswith(": 2 of 2 candidates queued, coarse-to-fine") and len(out) == 3
    sweep_id = out[0].split()[1].rstrip(":")
    assert "tiny [search sparsity=0.5 bits=32]" in out[1] + out[2]
    for _ in range(2):
        run = Store(home).claim("w")
        assert _cli(capsys, "execute", str(run.id), "--home", str(home)).strip() == f"run {run.id}: succeeded"
    summary = _cli(capsys, "search-summary", sweep_id, "--home", str(home)).splitlines()
    assert summary[1] == f"search {sweep_id}: bar 1 pt drop, objective size"
    assert summary[2].split() == ["id", "label", "status", "ratio", "accuracy", "drop", "gzip_kb", "latency_ms",
                                  "meets_bar", "pareto"]
    assert summary[-1].startswith(("Recommended: ", "No candidate stays within 1 pt"))
    data = json.loads(_cli(capsys, "search-summary", sweep_id, "--json", "--max-drop", "50", "--home", str(home)))
    assert data["max_drop"] == 50 and len(data["candidates"]) == 2 and data["recommended"] is not None
    assert "give a budget" in _fails(capsys, "search", str(recipe), "--max-drop", "1", "--home", str(home))
    assert "comma-separated" in _fails(capsys, "search", str(recipe), "--max-drop", "1", "--trials", "1",
                                       "--bits", "8;4", "--home", str(home))
    assert "not recorded" in _fails(capsys, "search-summary", "nope", "--home", str(home))


def test_sweep_summary_prints_mean_and_std_over_seeds(home, recipe, capsys):
    out = _cli(capsys, "sweep", str(recipe), "--grid", "seed=0,1", "--home", str(home)).splitlines()
    sweep_id = out[0].split()[1]
    store = Store(home)
    for accuracy in (0.5, 0.7):
        run = store.claim("w")
        store.finish(run.id, "succeeded", {"final": {"variant": "1: prune", "accuracy": accuracy}})
    printed = _cli(capsys, "sweep-summary", sweep_id, "--home", str(home))
    assert "over seeds (mean ± sample std of the succeeded runs):" in printed
    assert printed.splitlines()[-1].split() == ["tiny", "1,2", "0,1", "2", "2", "succeeded", "0.6", "±", "0.14"]
