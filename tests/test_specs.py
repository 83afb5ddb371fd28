import pytest

from workbench.errors import WorkbenchError
from workbench.specs import (
    PruneSpec,
    QuantSpec,
    RunSpec,
    SpecError,
    StructuredSpec,
    dump_recipe,
    load_recipe,
)

FULL = {
    "name": "demo",
    "model": "digits-mlp",
    "stages": [
        {"prune": {"sparsity": 0.9, "schedule": "iterative", "finetune": {"epochs": 1}, "exclude": ["fc3"]}},
        {"finetune": {"epochs": 2, "lr": 0.01}},
        {"quantize": {"method": "fake", "weight_bits": 3, "activation_bits": 6}},
    ],
    "measure": {"batch_sizes": [1, 64], "threads": 2},
}


def test_round_trip_through_dict_and_yaml(tmp_path):
    spec = RunSpec.from_dict(FULL)
    assert RunSpec.from_dict(spec.to_dict()) == spec
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(spec))
    assert load_recipe(path) == spec
    assert spec.to_dict()["version"] == 1
    assert spec.stages[0].finetune.epochs == 1 and spec.stages[0].exclude == ("fc3",)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model": "m", "stages": [{"prune": {"sparsity": 1.5}}]}, "stages[0].prune.sparsity"),
        ({"model": "m", "stages": [{"quantize": {"method": "fake", "weight_bits": 0}}]},
         "stages[0].quantize.weight_bits"),
        ({"model": "m", "stages": [{"finetune": {"epochs": -1}}]}, "stages[0].finetune.epochs"),
        ({"model": "m", "stages": [{"prune": {"method": "lottery"}}]}, "stages[0].prune.method"),
        ({"model": "m", "stages": [{"sharpen": {}}]}, "stages[0]"),
        ({"model": "m", "stages": [{"distill": {"width": 0}}]}, "stages[0].distill.width"),
        ({"model": "m", "stages": [{"prune": {"nm": "4:2", "sparsity": 0.5}}]}, "stages[0].prune.nm"),
        ({"model": "m", "stages": [{"prune": {"nm": "2:4", "sparsity": 0.9}}]}, "stages[0].prune.sparsity"),
        ({"model": "m", "stages": [{"qat": {"weight_bits": 1}}]}, "stages[0].qat.weight_bits"),
        ({"model": "m", "stages": [{"lowrank": {"energy": 0}}]}, "stages[0].lowrank.energy"),
        ({"model": "m", "data": {"classes": [1]}}, "data.classes"),
        ({"stages": []}, "model"),
        ({"model": "m", "measure": {"threads": 0}}, "measure.threads"),
        ({"model": "m", "measure": {"speed": 1}}, "measure.speed"),
        ({"model": {"path": "model.exe"}}, "model.path"),
        ({"model": {"path": "w.safetensors"}}, "model.arch"),
        ({"model": "m", "stages": [{"quantize": {"method": "static", "weight_bits": 4}}]},
         "stages[0].quantize.weight_bits"),
        ({"model": "m", "stages": [{"quantize": {"method": "weight_only", "weight_bits": 3}}]},
         "stages[0].quantize.weight_bits"),
        ({"model": "m", "stages": [{"prune": {"finetune": {"lr": -1}}}]}, "stages[0].prune.finetune.lr"),
        ({"model": "m", "version": 99}, "version"),
    ],
)
def test_errors_name_the_bad_field(raw, field):
    with pytest.raises(SpecError) as info:
        RunSpec.from_dict(raw)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_yaml_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(WorkbenchError) as info:
        load_recipe(path)
    assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_relative_paths_resolve_next_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("model: {path: m.onnx}\ndata: {path: d.npz}\n")
    spec = load_recipe(path)
    assert spec.model.path == str(tmp_path / "sub" / "m.onnx")
    assert spec.data.path == str(tmp_path / "sub" / "d.npz") and spec.data.builtin is None


def test_absolute_paths_stay_as_they_are(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {path: /models/m.onnx}\n")
    assert load_recipe(path).model.path == "/models/m.onnx"


def test_iterative_rounds_follow_the_20_percent_rule():
    assert PruneSpec(sparsity=0.9, schedule="iterative", per_round=0.2).rounds == 11
    assert PruneSpec(sparsity=0.2, schedule="iterative", per_round=0.2).rounds == 1
    assert PruneSpec(sparsity=0.9).rounds == 1


def test_activation_bits_only_for_fake():
    with pytest.raises(SpecError, match="activation_bits"):
        QuantSpec(method="static", activation_bits=4)
    assert QuantSpec(method="fake", weight_bits=4, activation_bits=4).activation_bits == 4


def test_quantize_exclude_and_per_layer_bits_round_trip_into_the_script():
    from workbench.codegen import python_script

    raw = {"model": "digits-mlp", "stages": [
        {"quantize": {"method": "fake", "weight_bits": 4, "exclude": ["fc3"], "overrides": {"fc1": 8, "fc2": 3}}}]}
    spec = RunSpec.from_dict(raw)
    quant = spec.stages[0]
    assert quant.exclude == ("fc3",) and quant.overrides == {"fc1": 8, "fc2": 3}
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["stages"][0]["quantize"]["overrides"] == {"fc1": 8, "fc2": 3}
    namespace: dict = {}
    exec(python_script(spec).replace('if __name__ == "__main__":', "if False:"), namespace)
    assert RunSpec.from_dict(namespace["RECIPE"]) == spec


@pytest.mark.parametrize(
    ("quantize", "message"),
    [
        ({"method": "static", "overrides": {"fc1*": 4}},
         "stages[0].quantize.overrides[fc1*]: static quantization is int8; use 'fake' or 'weight_only' for "
         "per-layer bits"),
        ({"method": "dynamic", "overrides": {"fc2": 2}}, "stages[0].quantize.overrides[fc2]: dynamic quantization"),
        ({"method": "weight_only", "weight_bits": 4, "overrides": {"fc1": 3}},
         "stages[0].quantize.overrides[fc1]: MatMulNBits supports (2, 4, 8)"),
        ({"method": "fake", "overrides": {"fc1": 1}}, "stages[0].quantize.overrides[fc1]: fake quantization supports"),
        ({"method": "fake", "overrides": {"fc1": "4"}}, "stages[0].quantize.overrides[fc1]: must be an integer"),
        ({"method": "fake", "overrides": ["fc1"]}, "stages[0].quantize.overrides: must be a mapping"),
        ({"method": "fp16", "weight_bits": 16, "exclude": ["fc1"]}, "stages[0].quantize.exclude: fp16 converts"),
    ],
)
def test_per_layer_quantization_errors_name_the_field(quantize, message):
    with pytest.raises(SpecError) as info:
        RunSpec.from_dict({"model": "m", "stages": [{"quantize": quantize}]})
    assert str(info.value).startswith(message), str(info.value)
    assert QuantSpec(method="static", overrides={"fc1": 8}, exclude=("fc3",)).overrides == {"fc1": 8}


def test_scope_unit_is_for_masks_only():
    assert PruneSpec(scope="unit").scope == "unit"
    with pytest.raises(SpecError, match="scope: unknown 'unit' \\(known: global, layer\\)"):
        StructuredSpec(scope="unit")    # channels are removed per coupled group, never per output unit
