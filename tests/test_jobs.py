import pytest

from tests.conftest import FAST_MEASURE
from workbench.jobs import execute, expand_grid, parse_grid, submit, submit_sweep, sweep_summary
from workbench.specs import QuantSpec, RunSpec, SpecError, quant_spec_for_bits
from workbench.store import Store

BASE = RunSpec.from_dict({"name": "base", "model": "digits-mlp", "measure": FAST_MEASURE,
                          "stages": [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "dynamic"}}]})


def test_parse_grid():
    assert parse_grid(["sparsity=0.5,0.9", "bits=8,4"]) == {"sparsity": [0.5, 0.9], "bits": [8, 4]}
    with pytest.raises(SpecError, match="grid"):
        parse_grid(["sparsity"])


def test_bits_mean_the_method_a_user_expects():
    assert quant_spec_for_bits(32) is None
    assert quant_spec_for_bits(16).method == "fp16"
    assert quant_spec_for_bits(8).method == "static"
    assert quant_spec_for_bits(8, QuantSpec(method="dynamic")).method == "dynamic"
    assert quant_spec_for_bits(4).method == "weight_only"
    assert quant_spec_for_bits(3).method == "fake"


def test_grid_expands_to_every_combination():
    specs = expand_grid(BASE, {"sparsity": [0.5, 0.7, 0.9], "bits": [8, 4, 32]})
    assert len(specs) == 9
    combos = {(s.stages[0].sparsity, s.stages[-1].method if s.stages[-1].kind == "quantize" else None)
              for s in specs}
    assert (0.9, "weight_only") in combos and (0.7, None) in combos and (0.5, "dynamic") in combos
    assert specs[0].name == "base [sparsity=0.5 bits=8]"


def test_grid_on_a_stage_field_and_bad_values():
    specs = expand_grid(BASE, {"prune.method": ["random", "magnitude"]})
    assert [s.stages[0].method for s in specs] == ["random", "magnitude"]
    with pytest.raises(SpecError, match="sparsity"):
        expand_grid(BASE, {"sparsity": [1.5]})
    with pytest.raises(SpecError, match="no 'finetune' stage"):
        expand_grid(BASE, {"finetune.epochs": [1]})


def test_sweep_is_validated_before_anything_is_queued(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(SpecError):
        submit_sweep(store, BASE, {"sparsity": [0.5, 2.0]})
    assert store.list() == []
    sweep_id, runs = submit_sweep(store, BASE, {"sparsity": [0.5, 0.9]})
    assert len(runs) == 2 and {r.sweep_id for r in runs} == {sweep_id}
    assert [row["status"] for row in sweep_summary(store, sweep_id)] == ["queued", "queued"]


def test_execute_success_writes_artifacts_and_metrics(tmp_path):
    store = Store(tmp_path)
    run = submit(store, BASE)
    store.claim("w")
    assert execute(store, run.id) == "succeeded"
    done = store.get(run.id)
    assert done.metrics["final"]["variant"] == "2: quantize" and done.progress == 1.0
    folder = store.run_dir(run.id)
    assert {"model.onnx", "report.json", "recipe.yaml", "log.txt"} <= {p.name for p in folder.iterdir()}


def test_execute_failure_is_recorded_with_log_tail(tmp_path):
    store = Store(tmp_path)
    bad = RunSpec.from_dict({"model": {"path": str(tmp_path / "missing.onnx")}, "measure": FAST_MEASURE})
    run = submit(store, bad)
    store.claim("w")
    assert execute(store, run.id) == "failed"
    error = store.get(run.id).error
    assert error.startswith(f"{tmp_path / 'missing.onnx'}: model file not found") and "log tail" in error


def test_execute_honours_a_cancel_request(tmp_path):
    store = Store(tmp_path)
    run = submit(store, BASE)
    store.claim("w")
    store.request_cancel(run.id)
    assert execute(store, run.id) == "cancelled"
    assert store.get(run.id).error == "cancelled by request"


def test_a_seed_grid_makes_real_repeats():
    base = RunSpec.from_dict({"name": "seeded", "model": "digits-mlp", "measure": FAST_MEASURE, "stages": [
        {"prune": {"sparsity": 0.5, "method": "random", "finetune": {"epochs": 1}}},
        {"finetune": {"epochs": 1}}, {"quantize": {"method": "dynamic"}}]})
    specs = expand_grid(base, {"sparsity": [0.5, 0.9], "seed": [0, 1, 2]})
    assert len(specs) == 6 and specs[1].name == "seeded [sparsity=0.5 seed=1]"
    for spec in specs:
        prune, finetune, _ = spec.stages
        assert spec.seed == prune.seed == prune.finetune.seed == finetune.seed
    assert [s.seed for s in specs] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(SpecError, match="grid.seed: must be a whole number"):
        expand_grid(base, {"seed": ["x"]})


def test_sweep_summary_gives_mean_and_std_over_seeds(tmp_path):
    store = Store(tmp_path)
    sweep_id, runs = submit_sweep(store, BASE, {"sparsity": [0.5, 0.9], "seed": [0, 1]})
    accuracy = {runs[0].id: 0.96, runs[1].id: 0.98, runs[2].id: 0.80, runs[3].id: 0.90}
    for _ in runs:
        run = store.claim("w")
        store.finish(run.id, "succeeded", {"final": {"variant": "2: quantize", "accuracy": accuracy[run.id],
                                                     "gzip_kb": 10.0}})
    assert [r["id"] for r in sweep_summary(store, sweep_id)] == [r.id for r in runs]   # per run by default
    rows = sweep_summary(store, sweep_id, over_seeds=True)
    assert [r["setting"] for r in rows] == ["base [sparsity=0.5]", "base [sparsity=0.9]"]
    first, second = rows
    assert first["seeds"] == "0,1" and first["n"] == 2 and first["status"] == "2 succeeded"
    assert first["accuracy"] == pytest.approx(0.97) and first["accuracy_std"] == pytest.approx(0.0141421, abs=1e-6)
    assert second["accuracy"] == pytest.approx(0.85) and second["gzip_kb_std"] == 0.0
    assert "variant" not in first   # words are not averaged
