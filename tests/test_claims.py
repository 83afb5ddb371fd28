"""Claims from synthetic measurements: the wording follows the facts, not hopes."""

from workbench.benchmark import LatencyStats
from workbench.claims import Facts, claims_for
from workbench.measure import Measurement
from workbench.onnx_graph import OpCoverage
from workbench.size import SizeStats


def _m(file_bytes=200_000, gzip_bytes=180_000, nonzero=50_000, bits=32.0, ms=(1.0, 10.0), p90=1.05,
       acc=0.99, quantized=0, ops=3, histogram=None, params=50_000) -> Measurement:
    size = SizeStats(file_bytes, gzip_bytes, params, nonzero, 1 - nonzero / params, bits, file_bytes // 2, int(bits))
    latency = tuple(LatencyStats("onnxruntime", b, 1, t, t * p90, t, 100, 10)
                    for b, t in zip((1, 256), ms, strict=True))
    coverage = OpCoverage(histogram or {}, quantized, ops - quantized, ())
    return Measurement({"accuracy": acc}, latency, (), size, coverage, 360)


def _by_aspect(claims):
    return {c.aspect: c for c in claims}


def test_pruned_dense_model_claims_no_file_or_speed_gain():
    base, var = _m(), _m(gzip_bytes=36_000, nonzero=5_000, ms=(1.5, 10.2))
    claims = _by_aspect(claims_for(base, var, Facts(sparsity=0.9, same_kernels=True)))
    assert claims["file size"].kind == "none" and "stored densely" in claims["file size"].reason
    assert claims["compressed size"].kind == "real"
    assert claims["minimum storage"].kind == "estimate"
    assert claims["latency @ batch 1"].kind == "none" and "noise" in claims["latency @ batch 1"].reason


def test_int8_speedup_is_real_and_slowdown_is_explained():
    base = _m()
    var = _m(file_bytes=55_000, bits=8.0, ms=(1.3, 4.0), quantized=3)
    claims = _by_aspect(claims_for(base, var, Facts(quant_method="static", storage_bits=8)))
    assert claims["file size"].kind == "real"
    fast, slow = claims["latency @ batch 256"], claims["latency @ batch 1"]
    assert fast.kind == "real" and fast.ratio == 2.5 and "3 of 3" in fast.reason
    assert slow.kind == "real" and "SLOWER" in slow.reason and "overhead" in slow.reason


def test_dynamic_conv_slowdown_names_conv_integer():
    var = _m(ms=(6.0, 60.0), quantized=3, histogram={"ConvInteger": 2})
    claims = _by_aspect(claims_for(_m(), var, Facts(quant_method="dynamic")))
    assert "ConvInteger" in claims["latency @ batch 256"].reason


def test_change_inside_the_spread_is_not_claimed():
    base, var = _m(p90=1.5), _m(ms=(0.8, 8.0), p90=1.5)
    claims = _by_aspect(claims_for(base, var, Facts(quant_method="fp16")))
    assert claims["latency @ batch 1"].kind == "none"


def test_fake_quant_is_simulated_everywhere_it_matters():
    claims = _by_aspect(claims_for(_m(), _m(acc=0.98), Facts(quant_method="fake", simulated_quant=True,
                                                              storage_bits=3)))
    assert claims["file size"].kind == "simulated" and "3 bits" in claims["file size"].reason
    assert claims["accuracy"].kind == "simulated"
    assert abs(claims["accuracy"].ratio - (-0.01)) < 1e-9


def test_qat_weight_only_slowdown_names_the_per_call_dequantization():
    var = _m(file_bytes=36_000, bits=4.0, ms=(6.0, 17.0), quantized=0)
    claims = _by_aspect(claims_for(_m(), var, Facts(quant_method="qat", storage_bits=3)))
    assert claims["file size"].kind == "real" and "only 3 bits" in claims["file size"].reason
    assert claims["accuracy"].kind == "real"
    slow = claims["latency @ batch 256"]
    assert slow.kind == "real" and "SLOWER" in slow.reason and "DequantizeLinear" in slow.reason


def test_qat_with_integer_kernels_is_reasoned_like_static_int8():
    var = _m(file_bytes=60_000, bits=8.0, ms=(1.3, 4.0), quantized=3)
    claims = _by_aspect(claims_for(_m(), var, Facts(quant_method="qat", storage_bits=4)))
    assert "integer kernels: 3 of 3" in claims["latency @ batch 256"].reason
    assert "overhead" in claims["latency @ batch 1"].reason


def test_smaller_dense_layers_claim_fewer_weights_not_fewer_bits():
    base, var = _m(), _m(file_bytes=100_000, nonzero=25_000, params=25_000, ms=(0.5, 5.0))
    claims = _by_aspect(claims_for(base, var, Facts(structured=True)))
    size = claims["file size"]
    assert size.kind == "real" and "50,000 -> 25,000 weights" in size.reason and "bits" not in size.reason
    assert claims["latency @ batch 256"].kind == "real" and "multiply-adds" in claims["latency @ batch 256"].reason


def test_per_layer_fake_bits_are_named_per_layer_not_as_their_mean():
    facts = Facts(quant_method="fake", simulated_quant=True, storage_bits=5, layer_bits=(8, 2))
    claims = _by_aspect(claims_for(_m(), _m(acc=0.98), facts))
    assert "8/2 bits per layer (mean 5)" in claims["file size"].reason
    assert "8/2 bits per layer" in claims["minimum storage"].reason
