"""Say, per gain, whether it is real (smaller file, faster kernel, measured here) or simulated/estimated,
with a one-line reason a user can act on. Pure functions over two measurements; no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.measure import Measurement

NOISE = 0.10  # latency ratios within +-10% (or the measured spread, if wider) are "no measurable change"


@dataclass(frozen=True)
class Facts:
    """What a variant is, as opposed to what it measured."""

    sparsity: float = 0.0              # fraction of weight values that are zero
    quant_method: str | None = None    # static | dynamic | weight_only | fp16 | fake | qat
    simulated_quant: bool = False
    storage_bits: int | None = None
    layer_bits: tuple[int, ...] = ()   # the distinct widths, highest first, when bits differ per layer
    same_kernels: bool = False         # same ops and tensor shapes as the baseline: only values differ
    structured: bool = False           # layers physically smaller (channels/heads removed, low-rank factors)
    packed_bytes: int | None = None    # size of the weights in a purpose-built encoding that decodes back
    graph_gzip_bytes: int | None = None   # gzipped graph.onnx: the network without those weights (packed_model)


@dataclass(frozen=True)
class Claim:
    aspect: str        # file size | compressed size | minimum storage | latency @ batch N | accuracy
    kind: str          # real | simulated | estimate | none
    ratio: float | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(before: float, after: float) -> float:
    return before / after if after > 0 else float("inf")


def _bits(mean: int, facts: Facts) -> str:
    return f"{'/'.join(map(str, facts.layer_bits))} bits per layer" if len(facts.layer_bits) > 1 else f"{mean} bits"


def size_claims(base: Measurement, var: Measurement, facts: Facts) -> list[Claim]:
    b, v = base.size, var.size
    raw = _ratio(b.file_bytes, v.file_bytes)
    pct = round(100 * facts.sparsity)
    if facts.simulated_quant:
        bits = (f"{'/'.join(map(str, facts.layer_bits))} bits per layer (mean {facts.storage_bits})"
                if len(facts.layer_bits) > 1 else f"{facts.storage_bits} bits")
        raw_claim = Claim("file size", "simulated", raw,
                          f"weights rounded to {bits} but stored as float32: the file does not shrink; a real "
                          "format with those widths would (see minimum storage)")
    elif raw >= 1.05 and facts.structured and round(v.bits_per_weight) == round(b.bits_per_weight):
        raw_claim = Claim("file size", "real", raw,
                          f"the ONNX file is {raw:.1f}x smaller: {b.params:,} -> {v.params:,} weights, the layers "
                          "themselves got smaller (channels removed or factorized)")
    elif raw >= 1.05:
        narrower = (f"; the values need only {facts.storage_bits} bits (see minimum storage)"
                    if facts.storage_bits and facts.storage_bits < round(v.bits_per_weight) else "")
        raw_claim = Claim("file size", "real", raw,
                          f"the ONNX file is {raw:.1f}x smaller: weights stored at {v.bits_per_weight:.0f} bits "
                          f"instead of {b.bits_per_weight:.0f}{narrower}")
    elif facts.sparsity >= 0.05:
        raw_claim = Claim("file size", "none", raw,
                          f"{pct}% of weights are zero but stored densely: the raw file is the same size")
    else:
        raw_claim = Claim("file size", "none", raw, "no change in how weights are stored")
    gz = _ratio(b.gzip_bytes, v.gzip_bytes)
    gz_why = ("zeros and repeated values compress well" if facts.sparsity >= 0.05 or facts.simulated_quant
              else "smaller stored weights")
    gz_claim = Claim("compressed size", "real" if gz >= 1.05 else "none", gz,
                     f"gzip of the file is {gz:.1f}x smaller than the baseline's gzip: {gz_why}" if gz >= 1.05
                     else "gzip gains nothing over the baseline's gzip")
    mn = _ratio(b.file_bytes, v.min_storage_bytes)
    min_claim = Claim("minimum storage", "estimate", mn,
                      f"computed, not measured: {v.nonzero:,} nonzero weights at {_bits(v.storage_bits, facts)} + "
                      "index = "
                      f"{v.min_storage_bytes:,} bytes, {mn:.1f}x below the baseline file; needs a sparse/packed "
                      "format that ONNX Runtime does not load")
    claims = [raw_claim, gz_claim, min_claim]
    if facts.packed_bytes:
        packed = _ratio(b.file_bytes, facts.packed_bytes)
        claims.append(Claim("packed size", "real", packed,
                            f"weights.packed is {facts.packed_bytes:,} bytes, {packed:.1f}x below the baseline "
                            "file: shared values + entropy-coded indices, decoded back losslessly by workbench "
                            f"(not a format ONNX Runtime loads){_with_graph(b.file_bytes, facts)}"))
    return claims


def _with_graph(base_file_bytes: int, facts: Facts) -> str:
    """The packed claim's second half: the model with its network, as graph.onnx + weights.packed restore it."""
    if not facts.graph_gzip_bytes:
        return ""
    total = facts.packed_bytes + facts.graph_gzip_bytes
    return (f"; with the network (graph.onnx, {facts.graph_gzip_bytes:,} bytes gzipped) the whole model is "
            f"{total:,} bytes, {_ratio(base_file_bytes, total):.1f}x below the baseline file: `workbench unpack "
            "graph.onnx weights.packed` restores model.onnx")


def latency_claims(base: Measurement, var: Measurement, facts: Facts) -> list[Claim]:
    claims = []
    for stats in var.latency:
        ref = base.latency_at(stats.batch_size)
        if ref is None:
            continue
        speed = _ratio(ref.median_ms, stats.median_ms)
        aspect = f"latency @ batch {stats.batch_size}"
        where = f"measured with ONNX Runtime, {stats.threads} thread(s), median of {stats.repeats}"
        noise = max(NOISE, _spread(ref.median_ms, ref.p90_ms), _spread(stats.median_ms, stats.p90_ms))
        if facts.same_kernels:
            claims.append(Claim(aspect, "none", speed, f"no change expected: same ops and shapes as the baseline, "
                                f"so ONNX Runtime runs the same dense kernels; {_flat_reason(var, facts)} "
                                f"(measured ratio {speed:.2f}x is run-to-run noise; {where})"))
        elif speed >= 1 + noise:
            claims.append(Claim(aspect, "real", speed, f"{speed:.2f}x faster ({where}); "
                                f"{_speed_reason(var, facts)}"))
        elif speed <= 1 / (1 + noise):
            claims.append(Claim(aspect, "real", speed, f"{1 / speed:.2f}x SLOWER ({where}); "
                                f"{_slow_reason(var, facts, stats.batch_size)}"))
        else:
            claims.append(Claim(aspect, "none", speed, f"no measurable change: {speed:.2f}x is within the "
                                f"run-to-run spread of {noise:.0%} ({where}); "
                                f"{_flat_reason(var, facts)}"))
    return claims


def _spread(median: float, p90: float) -> float:
    """Relative p90-over-median spread: a change smaller than this is indistinguishable from noise."""
    return (p90 - median) / median if median > 0 else 0.0


def _integer_kernels(var: Measurement, facts: Facts) -> bool:
    """Quantized to run integer arithmetic: int8 methods, and QAT when its activations are quantized too."""
    return facts.quant_method in ("static", "dynamic") or (facts.quant_method == "qat" and var.coverage.quantized > 0)


def _speed_reason(var: Measurement, facts: Facts) -> str:
    if facts.structured:
        return "layers were physically made smaller (channels removed or factorized): fewer multiply-adds"
    if _integer_kernels(var, facts) or facts.quant_method == "weight_only":
        c = var.coverage
        return f"integer kernels: {c.quantized} of {c.quantized + c.float_ops} compute ops quantized"
    return "fewer bytes to move or cheaper kernels"


def _slow_reason(var: Measurement, facts: Facts, batch: int) -> str:
    if _integer_kernels(var, facts):
        if var.coverage.histogram.get("ConvInteger"):
            return "dynamic int8 Conv (ConvInteger) has slow CPU kernels; use static quantization for convs"
        if batch <= 8:
            return "quantize/dequantize overhead dominates a small model at small batch"
        return "conversion overhead outweighs the int8 arithmetic here"
    if facts.quant_method == "weight_only":
        return "MatMulNBits unpacks low-bit weights per call; it pays off only for large layers at batch 1"
    if facts.quant_method == "fp16":
        return "ONNX Runtime's CPU provider has few fp16 kernels; it inserts casts back to float32"
    if facts.quant_method == "qat":
        conv = (" (and ONNX Runtime's faster NCHWc convolutions need constant weights)"
                if var.coverage.histogram.get("Conv") else "")
        return (f"the integer weights are dequantized (DequantizeLinear) on every call before float Gemm/Conv run"
                f"{conv}; int8 activations (activation_bits: 8) let it fuse integer kernels instead")
    if facts.simulated_quant:
        return "fake-quant nodes add float work; a simulation is never faster"
    return "variance or extra ops; check the op histogram"


def _flat_reason(var: Measurement, facts: Facts) -> str:
    if facts.structured:
        return "layers got smaller, but at this size call overhead, not arithmetic, dominates"
    if facts.sparsity >= 0.05 and facts.quant_method is None:
        return (f"{round(100 * facts.sparsity)}% zeros stored densely: ONNX Runtime has no sparse kernel, "
                "so no speedup is expected")
    if facts.simulated_quant:
        return "simulated quantization still computes in float32"
    return "the model's arithmetic did not change enough to show"


def accuracy_claim(base: Measurement, var: Measurement, facts: Facts) -> Claim:
    key = "accuracy" if "accuracy" in var.metrics else "top1_agreement"
    before, after = base.metrics.get(key), var.metrics.get(key)
    delta = None if before is None or after is None else after - before
    where = f"on {var.eval_samples} samples with ONNX Runtime"
    paired = f"; {var.paired.sentence()}" if var.paired else ""
    if facts.simulated_quant:
        return Claim(key, "simulated", delta, f"measured {where}, but quantization is simulated in float32 "
                     f"(fake-quant): a real low-bit kernel may differ slightly{paired}")
    return Claim(key, "real", delta, f"measured {where} on the exported model{paired}")


def claims_for(base: Measurement, var: Measurement, facts: Facts) -> list[Claim]:
    return [*size_claims(base, var, facts), *latency_claims(base, var, facts), accuracy_claim(base, var, facts)]
