"""workbench.diagnosis: findings built from real pipeline reports (FAST measurement) and synthetic environments."""

from __future__ import annotations

import copy
import json

import onnx
import pytest

from tests.conftest import FAST_MEASURE
from tests.test_compare import mlp_onnx
from workbench.diagnosis import Finding, diagnose, per_call_cost, render_text
from workbench.environment import int8_note
from workbench.errors import WorkbenchError
from workbench.summary import model_macs

# ONNX sources skip the torch export (seconds per run); structured pruning needs the torch sample
RUNS = {
    "pruned": ("mlp", [{"prune": {"sparsity": 0.9}}]),
    "static": ("tiny", [{"quantize": {"method": "static", "op_types": ["Conv"]}}]),
    "fp16": ("mlp", [{"quantize": {"method": "fp16", "weight_bits": 16}}]),
    "weight_only": ("mlp", [{"quantize": {"method": "weight_only", "weight_bits": 4}}]),
    "structured": ("digits-mlp", [{"structured": {"ratio": 0.5}}]),
    "thin_then_pruned": ("digits-mlp", [{"structured": {"ratio": 0.5}}, {"prune": {"sparsity": 0.7}}]),
    "two_stage": ("mlp", [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "fake", "weight_bits": 4}}]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_onnx):
    """name -> (report dict as written to report.json, path of model.onnx). Sources: the trained
    digits-mlp as a hand-built ONNX graph (fc1..fc3), the untrained Conv+Gemm `tiny_onnx`, the torch sample."""
    from workbench.pipeline import run_pipeline
    from workbench.specs import RunSpec

    sources = {"mlp": {"path": str(mlp_onnx(tmp_path_factory.mktemp("src") / "mlp.onnx"))},
               "tiny": {"path": str(tiny_onnx)}, "digits-mlp": "digits-mlp"}
    out = {}
    for name, (model, stages) in RUNS.items():
        folder = tmp_path_factory.mktemp(name)
        spec = RunSpec.from_dict({"model": sources[model], "measure": {**FAST_MEASURE, "torch_eager": False},
                                  "stages": stages})
        run_pipeline(spec, out_dir=folder)
        out[name] = (json.loads((folder / "report.json").read_text()), folder / "model.onnx")
    return out


def by_headline(findings: list[Finding], start: str) -> Finding:
    match = [f for f in findings if f.headline.startswith(start)]
    assert len(match) == 1, [f.headline for f in findings]
    return match[0]


def test_pruned_only_explains_the_same_dense_kernels(runs):
    report, model = runs["pruned"]
    findings = diagnose(report, model_path=model)
    assert findings[0].headline.startswith("Not faster")   # same kernels: the claims call any ratio noise
    assert "same ops and shapes" in findings[0].explanation
    dense = by_headline(findings, "90% of weights are zero")
    assert dense.kind == "cause" and "same dense kernels" in dense.headline and "no sparse kernel" in dense.headline
    assert "Gemm" in dense.headline   # the ops ONNX Runtime actually runs
    size = report["variants"][-1]["measurement"]["size"]
    # a Linear weight is used once per sample: MACs = params, useful MACs = nonzero weights
    assert f"{size['nonzero']:,} of {size['params']:,} weights" in dense.explanation
    assert f"do {size['params']:,} multiply-adds; only {size['nonzero']:,} of them" in dense.explanation
    assert not [f for f in findings if "int8" in f.headline or "VNNI" in f.headline]


def test_static_int8_names_the_ops_left_in_float(runs):
    report, model = runs["static"]
    findings = diagnose(report, model_path=model)
    floats = report["variants"][-1]["measurement"]["coverage"]["float_names"]
    assert floats == ["fc"]   # op_types: [Conv] leaves the classifier's Gemm in float
    fmt = by_headline(findings, "int8 static QDQ")
    assert fmt.kind == "cause"
    assert fmt.headline.endswith("1 of 2 MatMul/Conv/Gemm run as int8 kernels; 1 still float: fc")
    assert "QLinearConv ×1" in fmt.explanation and "QuantizeLinear" in fmt.explanation
    flags = report["environment"]["cpu_flags"]
    cpu = [f for f in findings if "VNNI" in f.headline or "int8 support" in f.headline]
    assert len(cpu) == 1 and cpu[0].explanation.startswith(int8_note(flags))


def test_fp16_is_a_smaller_file_only(runs):
    report, model = runs["fp16"]
    fp16 = by_headline(diagnose(report, model_path=model), "fp16 on CPU")
    kept = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(model)).graph.initializer)
    assert fp16.kind == "cause" and f"of the file's {kept} float16 tensors" in fp16.explanation
    assert "keeps 0 of" in fp16.explanation and "casts the weights back to float32" in fp16.headline
    assert by_headline(diagnose(report), "fp16 on CPU").headline.endswith("the kernels ONNX Runtime picks")


def test_weight_only_explains_run_time_unpacking(runs):
    report, model = runs["weight_only"]
    findings = diagnose(report, model_path=model)
    nbits = by_headline(findings, "MatMulNBits 4-bit")
    assert "block of 32" in nbits.headline and "3 layer(s) store 50,200 weights" in nbits.explanation
    faster = any(f.kind == "ok" and f.headline.startswith("Faster") for f in findings)
    assert nbits.kind == ("ok" if faster else "cause")


def test_structured_compares_mac_and_latency_ratios(runs):
    report, model = runs["structured"]
    findings = diagnose(report, model_path=model)
    macs = by_headline(findings, "MACs fell")
    variant = model_macs(onnx.load(str(model)))[0]
    base_macs = 64 * 300 + 300 * 100 + 100 * 10   # digits-mlp: Linear 64->300->100->10, one MAC per weight
    assert f"-> {variant:,}." in macs.explanation and variant < 0.5 * base_macs   # half the neurons of each layer
    assert f"{base_macs:,} ->" in macs.explanation   # the baseline exported from the sample, counted the same way
    base, var = report["baseline"]["measurement"], report["variants"][-1]["measurement"]
    ratio = base["latency"][0]["median_ms"] / var["latency"][0]["median_ms"]
    realized = ratio / (base_macs / variant)
    assert f"{realized:.0%} at batch 1" in macs.explanation
    assert not [f for f in findings if "zero" in f.headline]   # physically removed, not masked


def test_channels_removed_then_pruned_names_both_the_smaller_layers_and_the_dense_zeros(runs):
    report, model = runs["thin_then_pruned"]
    findings = diagnose(report, model_path=model)
    dense = by_headline(findings, "70% of weights are zero but stored densely in the layers left by structured")
    assert dense.kind == "cause" and "any speed here comes from the channels removed" in dense.explanation
    assert f"{64 * 150 + 150 * 50 + 50 * 10:,} weights" in dense.explanation   # of the 64-150-50-10 model
    assert by_headline(findings, "MACs fell").kind == "cause"


def test_structured_widths_between_multiples_of_8_get_the_round_to_hint(runs):
    report, model = runs["structured"]   # digits-mlp at 50%: 300 -> 150 and 100 -> 50 neurons
    hint = by_headline(diagnose(report, model_path=model), "2 pruned width(s) are not multiples of 8: 50, 150")
    assert hint.kind == "hint" and "round_to: 8" in hint.explanation
    aligned = copy.deepcopy(report)
    for layer in aligned["variants"][-1]["history"][0]["pruned_layers"]:
        layer["after"] = [w - w % 8 if w != b else w for w, b in zip(layer["after"], layer["before"], strict=True)]
    assert not [f for f in diagnose(aligned, model_path=model) if "multiples of 8" in f.headline]


def test_earlier_variant_reads_the_report_only(runs):
    report, model = runs["two_stage"]
    pruned = diagnose(report, index=0, model_path=model)   # model.onnx is the last variant's: not used for index 0
    dense = by_headline(pruned, "50% of weights are zero")
    assert "multiply-adds" not in dense.explanation and "Gemm ×3" in dense.headline   # the file's ops, no MACs
    sim = by_headline(diagnose(report, model_path=model), "simulated: weights rounded to 4 bits")
    assert sim.kind == "cause" and "32-bit floats" in sim.explanation


def with_env(report: dict, **flags) -> dict:
    out = copy.deepcopy(report)
    out["environment"]["cpu_flags"] = {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False,
                                       "amx_int8": False, "amx_tile": False, "f16c": True, **flags}
    return out


def test_cpu_flags_with_and_without_vnni(runs):
    report, _ = runs["static"]
    cases = {"No VNNI on this CPU": ({}, "cause"), "This CPU has AVX-512 VNNI": ({"avx512_vnni": True}, "ok"),
             "This CPU has AVX-VNNI": ({"avx_vnni": True}, "ok"), "This CPU has AMX-INT8": ({"amx_int8": True}, "ok")}
    for headline, (flags, kind) in cases.items():
        assert by_headline(diagnose(with_env(report, **flags)), headline).kind == kind
    unknown = with_env(report)
    unknown["environment"]["cpu_flags"] = dict.fromkeys(unknown["environment"]["cpu_flags"])
    assert by_headline(diagnose(unknown), "CPU int8 support unknown").kind == "hint"
    assert not [f for f in diagnose(with_env(runs["pruned"][0])) if "VNNI" in f.headline]   # float model


def with_latency(report: dict, base: dict[int, tuple[float, float]], var: dict[int, tuple[float, float]]) -> dict:
    """`report` with latency stats replaced: {batch: (median_ms, p90_ms)} for baseline and final variant."""
    out = copy.deepcopy(report)
    for m, stats in ((out["baseline"]["measurement"], base), (out["variants"][-1]["measurement"], var)):
        m["latency"] = [{"engine": "onnxruntime", "batch_size": b, "threads": 1, "median_ms": t, "p90_ms": p,
                         "mean_ms": t, "repeats": 7, "warmup": 1} for b, (t, p) in stats.items()]
    return out


def test_fixed_per_call_cost_from_two_batch_sizes(runs):
    report = with_latency(runs["pruned"][0], {1: (0.010, 0.011), 256: (0.265, 0.27)},
                          {1: (0.010, 0.011), 256: (0.262, 0.27)})
    fixed, per_sample, lo, hi = per_call_cost(report["baseline"]["measurement"])
    assert (fixed, per_sample, lo, hi) == (pytest.approx(0.009), pytest.approx(0.001), 1, 256)
    cost = by_headline(diagnose(report), "At batch 1, ~9.0 µs of the baseline's 10 µs call")
    assert cost.kind == "cause" and "at most 1.11x" in cost.explanation and "At batch 256" in cost.explanation
    small = with_latency(report, {1: (0.010, 0.011), 256: (2.5, 2.6)}, {1: (0.010, 0.011), 256: (2.5, 2.6)})
    assert not [f for f in diagnose(small) if "fixed per-call cost" in f.headline]   # ~0 fixed cost


def test_noise_and_threads_hints(runs):
    noisy = with_latency(runs["pruned"][0], {1: (0.010, 0.02)}, {1: (0.010, 0.011)})
    hint = by_headline(diagnose(noisy), "Noisy timing: p90 is 100% above the median at batch 1")
    assert hint.kind == "hint" and "7 timed calls" in hint.explanation
    quiet = with_latency(runs["pruned"][0], {1: (0.010, 0.0101)}, {1: (0.010, 0.0101)})
    assert not [f for f in diagnose(quiet) if f.headline.startswith("Noisy")]
    report = copy.deepcopy(runs["pruned"][0])
    report["environment"].update(threads=1, usable_cores=4)
    assert by_headline(diagnose(report), "threads=1 in this measurement (4 cores usable)").kind == "hint"
    report["environment"]["threads"] = 4
    assert not [f for f in diagnose(report) if f.headline.startswith("threads=")]


def test_order_rendering_and_bad_input(runs, tmp_path):
    report, model = runs["pruned"]
    findings = diagnose(report, model_path=model)
    kinds = [f.kind for f in findings[1:]]
    assert kinds == sorted(kinds, key=("cause", "ok", "hint").index)
    text = render_text(findings, "why")
    assert text.startswith("why\n  [HINT ] Not faster") and "[CAUSE] 90% of weights are zero" in text
    assert json.dumps([f.to_dict() for f in findings])
    with pytest.raises(WorkbenchError, match="report: expected"):
        diagnose({"variants": []})
    damaged = copy.deepcopy(report)
    del damaged["variants"][0]["measurement"]["size"]
    with pytest.raises(WorkbenchError, match="report: variant -1 lacks the field 'size'"):
        diagnose(damaged)
    with pytest.raises(WorkbenchError, match="index: the report has 1 variant"):
        diagnose(report, index=1)
    with pytest.raises(WorkbenchError, match="model file not found"):
        diagnose(report, model_path=tmp_path / "gone.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(WorkbenchError, match="bad.onnx: ONNX Runtime cannot load"):
        diagnose(report, model_path=tmp_path / "bad.onnx")
