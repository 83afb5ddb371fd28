import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import FAST_MEASURE
from workbench.cli import main
from workbench.specs import RunSpec


def _recipe(tmp_path, stages, model="digits-mlp"):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "cli-test", "model": model, "stages": stages, "measure": FAST_MEASURE}))
    return path


def test_run_writes_model_report_and_log(tmp_path, capsys):
    recipe = _recipe(tmp_path, [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "dynamic"}}])
    main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "report.json", "recipe.yaml", "log.txt"}
    assert "baseline" in json.loads((out / "report.json").read_text())
    assert "1: prune" in (out / "log.txt").read_text()
    printed = capsys.readouterr().out
    assert "[NONE" in printed and "stored densely" in printed


def test_run_overrides_the_recipes_batch_sizes_and_threads(tmp_path, capsys):
    recipe = _recipe(tmp_path, [{"quantize": {"method": "dynamic"}}])
    main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet", "--batch-sizes", "8", "1", "8",
          "--threads", "2"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    latency = report["baseline"]["measurement"]["latency"]
    assert [(s["batch_size"], s["threads"]) for s in latency] == [(1, 2), (8, 2)]
    written = RunSpec.from_dict(yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text()))
    assert written.measure.batch_sizes == (1, 8)


def test_inspect_prints_layers(capsys):
    main(["inspect", "digits-cnn"])
    out = capsys.readouterr().out
    assert "features.1.0" in out and "MACs/sample 2,382,848" in out


def test_inspect_says_whether_an_onnx_graph_converts_to_torch_modules(tiny_onnx, einsum_onnx, capsys):
    import json

    main(["inspect", str(tiny_onnx)])
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "torch conversion (for training and removing channels): converts (2 Conv/Linear layers; outputs within")
    main(["inspect", str(einsum_onnx), "--json"])
    assert json.loads(capsys.readouterr().out)["torch_conversion"] == (
        "does not convert: the ONNX op Einsum (node 'mix') has no torch conversion")


def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    recipe = _recipe(tmp_path, [{"prune": {"sparsity": 1.5}}])
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: stages[0].prune.sparsity: must be in [0, 1), got 1.5"


def test_corrupt_model_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(SystemExit):
        main(["inspect", str(bad)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.onnx" in err


def test_export_script_reproduces_the_run(tmp_path):
    recipe = _recipe(tmp_path, [{"quantize": {"method": "dynamic"}}])
    script = tmp_path / "reproduce.py"
    main(["export-script", str(recipe), "-o", str(script)])
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "again")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert report["spec"]["name"] == "cli-test"
    assert report["variants"][0]["facts"]["quant_method"] == "dynamic"


def test_sensitivity_prints_both_tables_and_an_allocation_as_recipe_yaml(capsys):
    main(["sensitivity", "digits-mlp", "--target", "0.7", "--exclude", "fc3"])
    out = capsys.readouterr().out
    assert out.startswith("digits-mlp: accuracy 0.99")
    assert "magnitude-pruned to:\nlayer  params  20%" in out and "rounded (symmetric, per channel) to:" in out
    stages = yaml.safe_load(out[out.index("\n- prune:"):])
    prune = stages[0]["prune"]
    assert prune["sparsity"] == 0.7 and prune["exclude"] == ["fc3"] and set(prune["overrides"]) == {"fc1", "fc2"}
    main(["sensitivity", "digits-mlp", "--size-kb", "12", "--bits", "8", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["stages"][1] == {"quantize": {"method": "static", "weight_bits": 8}}
    assert set(data["sensitivity"]["sparsity"]) == {"fc1", "fc2", "fc3"} and data["allocation"]["note"]
    with pytest.raises(SystemExit):
        main(["sensitivity", "digits-mlp", "--exclude", "fc9"])
    assert capsys.readouterr().err.strip() == "error: exclude: 'fc9' matches no layer (layers: fc1, fc2, fc3)"


def test_sensitivity_allocates_bits_as_a_quantize_stage(capsys):
    main(["sensitivity", "digits-mlp", "--bits-kb", "20", "--bits-choices", "8", "4", "2"])
    out = capsys.readouterr().out
    assert "bits allocation for 20 KB" in out and "weight_only: MatMulNBits" in out
    (stage,) = yaml.safe_load(out[out.index("\n- quantize:"):])
    quant = RunSpec.from_dict({"model": "digits-mlp", "stages": [stage]}).stages[0]
    assert quant.method == "weight_only" and set(quant.overrides) == {"fc1", "fc2", "fc3"}
    assert sum(p * quant.overrides[k] / 8 for k, p in {"fc1": 19200, "fc2": 30000, "fc3": 1000}.items()) <= 20 * 1024
    main(["sensitivity", "digits-cnn", "--bits-kb", "40", "--exclude", "features.0.0", "--json"])
    data = json.loads(capsys.readouterr().out)
    quant = data["stages"][0]["quantize"]
    assert quant["method"] == "fake" and quant["exclude"] == ["features.0.0"]
    allocation = data["bits_allocation"]
    assert allocation["estimated_bytes"] <= 40 * 1024 and allocation["bits"]["features.0.0"] == 32
    with pytest.raises(SystemExit):
        main(["sensitivity", "digits-mlp", "--bits-kb", "1"])
    assert "out of reach" in capsys.readouterr().err
