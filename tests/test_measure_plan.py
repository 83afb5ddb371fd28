"""Default batch sizes follow the model's cost per call, and say why when they leave out batch 256."""

from workbench.measure_plan import (
    CALL_BUDGET_MACS,
    DEFAULT_BATCH_SIZES,
    default_batch_sizes,
    default_reason,
    heavy_calls,
)


def test_small_or_unknown_models_are_timed_at_batch_1_and_256():
    assert default_batch_sizes(2_382_848) == DEFAULT_BATCH_SIZES     # digits-cnn
    assert default_batch_sizes(None) == DEFAULT_BATCH_SIZES
    assert default_reason(2_382_848) == "" and default_reason(None) == ""


def test_large_models_keep_batch_1_and_the_largest_batch_within_the_budget():
    resnet18 = 1_814_073_344                                          # 224×224, torchvision layout
    assert default_batch_sizes(resnet18) == (1, 8)
    assert "464 GMAC per call" in default_reason(resnet18) and "batch 1 and 8" in default_reason(resnet18)
    assert default_batch_sizes(CALL_BUDGET_MACS // 64) == (1, 64)
    assert default_batch_sizes(CALL_BUDGET_MACS // 8 + 1) == (1,)     # one sample's cost nears the budget
    assert "batch 1" in default_reason(CALL_BUDGET_MACS)


def test_heavy_calls_name_the_batch_sizes_over_the_budget():
    assert heavy_calls(1_814_073_344, (1, 8, 256)) == "batch 256: 464 GMAC per call"
    assert heavy_calls(2_382_848, (1, 256)) == "" and heavy_calls(None, (1, 256)) == ""


def test_a_run_says_while_measuring_that_a_batch_is_heavy(tiny_onnx, monkeypatch):
    from tests.conftest import FAST_MEASURE
    from workbench import measure_plan
    from workbench.pipeline import run_pipeline
    from workbench.specs import RunSpec

    monkeypatch.setattr(measure_plan, "CALL_BUDGET_MACS", 1000)   # the tiny model's batch 32 is "heavy" now
    messages = []
    spec = RunSpec.from_dict({"model": {"path": str(tiny_onnx)}, "measure": FAST_MEASURE,
                              "stages": [{"prune": {"sparsity": 0.5}}]})
    run_pipeline(spec, progress=lambda fraction, stage, message: messages.append((stage, message)))
    heavy = [m for m in messages if "batch 32:" in m[1] and "GMAC per call" in m[1]]
    assert [stage for stage, _ in heavy] == ["baseline", "1: prune"]
