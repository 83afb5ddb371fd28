"""Every corpus input, through the Python API and the command line: refused with one specific line,
no crash, no file outside the data dir, no pickle executed.

The command-line attempts are independent subprocesses, so they run a few at a time (`cli_outcomes`)
and each case's test reads its own outcome.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.corpus import ALL_CASES, Case
from tests.reliability.entries import Sandbox, api_attempt, cli_args, cli_attempt

pytestmark = pytest.mark.reliability
CLI_PARALLEL = 3


@pytest.fixture
def box(tmp_path, monkeypatch) -> Sandbox:
    box = Sandbox(tmp_path / "sandbox")
    monkeypatch.setenv("WORKBENCH_HOME", str(box.home))
    monkeypatch.setattr(tempfile, "tempdir", str(box.tmp))  # in-process temp files land where they are seen
    return box


def _cases(entry: str) -> list[Case]:
    return [case for case in ALL_CASES if entry in case.entries]


def test_the_corpus_is_large_and_covers_every_door():
    assert len(ALL_CASES) >= 30
    assert {c.kind for c in ALL_CASES} == {"model", "data", "recipe", "packed", "graph"}
    assert all(len(_cases(entry)) >= 20 for entry in ("api", "cli", "app"))
    assert sum(c.sentinel for c in ALL_CASES) >= 8
    assert len({c.name for c in ALL_CASES}) == len(ALL_CASES)


@pytest.mark.parametrize("case", _cases("api"), ids=str)
def test_python_api(case: Case, box: Sandbox, tally):
    path = case.make(box.inputs)
    before = box.snapshot()
    outcome, message = api_attempt(case, path, box)
    stray = box.trespass(before)
    if stray:
        outcome, message = "crash", stray
    tally.outcome(f"api {case}", outcome, message)
    assert outcome == "clear", f"expected '{case.expect}', got: {message}"


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory) -> dict[str, tuple[list[str], str, str]]:
    """case name -> (arguments, outcome, message) for every CLI case, subprocesses run CLI_PARALLEL at a time."""
    jobs = {}
    for case in _cases("cli"):  # inputs are made here, in order: some generators use torch in-process
        box = Sandbox(tmp_path_factory.mktemp("cli") / case.name)
        args = cli_args(case, case.make(box.inputs), box)
        jobs[case.name] = (case, box, args, box.snapshot())

    def attempt(job: tuple) -> tuple[list[str], str, str]:
        case, box, args, before = job
        outcome, message = cli_attempt(args, box, case.expect)
        stray = box.trespass(before)
        return (args, "crash", stray) if stray else (args, outcome, message)

    with ThreadPoolExecutor(CLI_PARALLEL) as pool:
        return dict(zip(jobs, pool.map(attempt, jobs.values()), strict=True))


@pytest.mark.parametrize("case", _cases("cli"), ids=str)
def test_command_line(case: Case, cli_outcomes, tally):
    args, outcome, message = cli_outcomes[case.name]
    tally.outcome(f"cli {case}", outcome, message)
    assert outcome == "clear", f"workbench {args[0]}: expected '{case.expect}', got: {message}"


def test_bad_runs_fail_with_their_line_and_the_other_runs_go_on(tmp_path, tally):
    """Inputs that only fail once the model meets the data, queued as background runs between good runs:
    each fails with its one line first in the run's error, and the good runs succeed."""
    from tests.reliability.faults import lost_runs, quick, worker
    from workbench.specs import RunSpec, load_recipe
    from workbench.store import Store

    box = Sandbox(tmp_path / "sandbox")
    store = Store(box.home)
    cases = [c for c in ALL_CASES if c.level == "run" and "cli" in c.entries]
    good, bad = [store.submit(quick(box.model), "good, first").id], {}
    for i, case in enumerate(cases):
        path = case.make(box.inputs)
        recipe = path if case.kind == "recipe" else box.inputs / f"{case.name}.yaml"
        if case.kind != "recipe":
            cli_args(case, path, box)   # writes the recipe the CLI would run
        spec: RunSpec = load_recipe(recipe)
        bad[store.submit(spec.to_dict(), case.name).id] = case
        if i == len(cases) // 2:
            good.append(store.submit(quick(box.model), "good, in the middle").id)
    good.append(store.submit(quick(box.model), "good, last").id)
    assert worker(box.home, "--until-idle", "--concurrency", "2").wait(timeout=600) == 0
    for run_id, case in bad.items():
        run = store.get(run_id)
        first = (run.error or "").splitlines()[0] if run.error else f"{run.status}, no error"
        outcome = "clear" if run.status == "failed" and case.expect in first else "unclear"
        tally.outcome(f"worker {case}", outcome, first)
        assert outcome == "clear", f"{case}: expected '{case.expect}', got: {first}"
    lost = lost_runs(store, dict.fromkeys(good, {"succeeded"}))
    tally.runs("good runs between bad ones", len(good), lost)
    assert not lost, lost
