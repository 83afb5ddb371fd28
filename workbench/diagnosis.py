""""Why isn't it faster?": plain-words findings for one variant of a run, read from its report.json.

Contract: `diagnose(report, index=-1, model_path=None)` takes a report dict (as workbench.report writes
it) and a variant index (into `report["variants"]`, negative counts from the end) and returns an ordered
list of `Finding`s: first the measured verdict (latency vs the baseline at each batch size), then the
causes, what works, and hints. Each finding states only what the report measured or what inspecting
the model shows: stored sparsity and bits, the op coverage, the CPU flags and threads of the measuring
machine, latency medians and their p90 spread. With `model_path` (the run's model.onnx, which is the
*last* variant's model; ignored for other indices) it also reads
  - the graph ONNX Runtime actually runs after its load-time fusions (its optimized-model dump), and
  - multiply-adds (MACs) per sample of the variant and, when the weight count changed, of the baseline
    (loaded from the recipe's model and exported to ONNX, so both are counted the same way).
The fixed per-call cost is a straight line through the baseline's medians at the smallest and largest
measured batch sizes. `render_text` lays findings out for a terminal.

Non-goals: measuring anything new (that is workbench.measure); deciding real vs simulated (workbench.claims).
"""

from __future__ import annotations

import logging
import tempfile
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from workbench.environment import int8_note
from workbench.errors import WorkbenchError
from workbench.onnx_graph import QUANTIZED_KERNEL_OPS
from workbench.summary import model_macs

log = logging.getLogger(__name__)
KINDS = ("cause", "ok", "hint")
FLOAT_KERNELS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul"})
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast")
OVERHEAD_SHARE = 0.5     # a batch-1 call that is at least this much fixed cost gets a finding
REALIZED = 0.8           # speedup / MAC reduction below this: the arithmetic saved did not become speed
NOISY = 0.25             # p90 this far above the median: ratios of that size are noise
ALIGN = 8                # channel blocks CPU kernels favour (8 floats per AVX2 vector, 16 per AVX-512)
SPARSE = 0.05            # below this fraction of zeros, sparsity is not worth a finding


@dataclass(frozen=True)
class Finding:
    kind: str          # cause (why it is not faster) | ok (a real source of speed) | hint (context, what to try)
    headline: str
    explanation: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Finding.kind: expected one of {KINDS}, got {self.kind!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class ExecutedGraph:
    """What ONNX Runtime runs after optimizing the model for this CPU."""

    ops: Counter                 # op type -> count in the optimized graph
    float_kernels: tuple[str, ...]   # "name (op)" of compute ops left in float
    fp16_file: int               # float16 initializers in the file
    fp16_run: int                # float16 initializers ORT kept after optimizing

    @property
    def int8(self) -> Counter:
        return Counter({op: n for op, n in self.ops.items() if op in QUANTIZED_KERNEL_OPS})


@dataclass(frozen=True)
class Macs:
    base: int | None   # None when not counted: same weight count, so no arithmetic finding needs it
    variant: int
    useful: int     # multiply-adds whose weight is nonzero


@dataclass(frozen=True)
class Evidence:
    """Everything a rule may look at for one variant."""

    name: str
    base: dict[str, Any]        # baseline measurement
    var: dict[str, Any]         # variant measurement
    facts: dict[str, Any]
    stage: dict[str, Any]       # {kind: fields} of the stage that made the variant
    claims: dict[str, dict[str, Any]]
    env: dict[str, Any]
    executed: ExecutedGraph | None
    macs: Macs | None
    history: tuple[dict[str, Any], ...] = ()   # the stage's records (structured: its pruned layers' shapes)

    @property
    def speedups(self) -> list[tuple[int, float, dict, dict]]:
        """(batch, baseline ms / variant ms, baseline stats, variant stats) per batch measured in both."""
        out = []
        for s in self.var.get("latency", []):
            ref = next((r for r in self.base.get("latency", []) if r["batch_size"] == s["batch_size"]), None)
            if ref and s["median_ms"] > 0:
                out.append((s["batch_size"], ref["median_ms"] / s["median_ms"], ref, s))
        return out

    def faster_at(self, batch: int) -> bool:
        claim = self.claims.get(f"latency @ batch {batch}", {})
        return claim.get("kind") == "real" and (claim.get("ratio") or 0) > 1


# --- reading the inputs ------------------------------------------------------------------------

def executed_graph(model_path: Path, threads: int = 1) -> ExecutedGraph:
    """The graph ONNX Runtime runs, read back from its optimized-model dump (same session settings as
    workbench.evaluate.make_session: CPU provider, `threads` intra-op threads, default optimizations)."""
    import onnxruntime as ort

    from workbench.evaluate import ORT_ERRORS, ort_message

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="workbench-diag-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except ORT_ERRORS as exc:
            raise WorkbenchError(f"{model_path.name}: ONNX Runtime cannot load the model "
                                 f"({ort_message(exc)})") from None
        optimized = onnx.load(options.optimized_model_filepath)
    original = onnx.load(str(model_path), load_external_data=False)
    nodes = optimized.graph.node
    return ExecutedGraph(Counter(n.op_type for n in nodes),
                         tuple(f"{n.name or n.output[0]} ({n.op_type})" for n in nodes if n.op_type in FLOAT_KERNELS),
                         _half(original), _half(optimized))


def _half(model: onnx.ModelProto) -> int:
    return sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def baseline_model(spec: dict[str, Any]) -> onnx.ModelProto:
    """The recipe's model as ONNX, exported like the pipeline exports it (torch sources need a known shape)."""
    from workbench.models import load_model
    from workbench.specs import RunSpec

    loaded = load_model(RunSpec.from_dict(spec).model)
    if loaded.module is None:
        return loaded.onnx_model
    if loaded.input_shape is None:
        raise WorkbenchError(f"{loaded.label}: input shape unknown, cannot count the baseline's MACs")
    import torch

    from workbench.export import export_onnx

    return export_onnx(loaded.module, (torch.zeros(2, *loaded.input_shape),))


def _macs(report: dict[str, Any], base: dict, var: dict, facts: dict, model: onnx.ModelProto) -> Macs | None:
    counted = model_macs(model)
    if counted is None:
        return None
    if base.get("macs"):     # measured with the baseline (reports since MACs were recorded): no re-export
        return Macs(base["macs"], *counted)
    if facts.get("same_kernels"):
        return Macs(counted[0], *counted)    # same ops and weight shapes: the baseline does the same dense MACs
    if base["size"]["params"] == var["size"]["params"]:
        return Macs(None, *counted)
    try:
        base_counted = model_macs(baseline_model(report["spec"]))
    except WorkbenchError as exc:
        log.info("baseline MACs unknown: %s", exc)
        return None
    return Macs(base_counted[0], *counted) if base_counted else None


def evidence(report: dict[str, Any], index: int = -1, model_path: Path | None = None) -> Evidence:
    """Collect what the rules read; a bad report or index is a one-line WorkbenchError."""
    if not isinstance(report, dict) or not isinstance(report.get("variants"), list) or "baseline" not in report:
        raise WorkbenchError("report: expected a report.json dict with 'baseline' and 'variants'")
    variants = report["variants"]
    if not -len(variants) <= index < len(variants):
        raise WorkbenchError(f"index: the report has {len(variants)} variant(s), no variant {index}")
    variant = variants[index]
    base, var = report["baseline"]["measurement"], variant["measurement"]
    env = report.get("environment") or {}
    executed = macs = None
    if model_path is not None and index % len(variants) == len(variants) - 1:   # model.onnx is the last one
        model_path = Path(model_path)
        if not model_path.is_file():
            raise WorkbenchError(f"{model_path}: model file not found")
        executed = executed_graph(model_path, int(env.get("threads") or 1))
        macs = _macs(report, base, var, variant.get("facts") or {}, onnx.load(str(model_path)))
    return Evidence(variant.get("name", f"variant {index}"), base, var, variant.get("facts") or {},
                    variant.get("stage") or {}, {c["aspect"]: c for c in variant.get("claims", [])}, env,
                    executed, macs, tuple(variant.get("history") or ()))


# --- wording helpers ---------------------------------------------------------------------------

def _time(ms: float) -> str:
    return f"{ms * 1000:.1f} µs" if ms < 0.01 else f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms"


def _ratios(ev: Evidence) -> str:
    return ", ".join(f"{r:.2f}x at batch {b}" for b, r, _, _ in ev.speedups)


def _ops(counts: Counter) -> str:
    return ", ".join(f"{op} ×{n}" for op, n in sorted(counts.items()))


def _kernels(ev: Evidence) -> str:
    """The compute ops that run: from ONNX Runtime's optimized graph when read, else the file's."""
    ops = ev.executed.ops if ev.executed else Counter(ev.var["coverage"]["histogram"])
    return _ops(Counter({op: n for op, n in ops.items() if op in FLOAT_KERNELS | QUANTIZED_KERNEL_OPS}))


def _stage_field(ev: Evidence, name: str, default: Any = None) -> Any:
    body = next(iter(ev.stage.values()), None) if ev.stage else None
    return (body or {}).get(name, default)


# --- the rules: each returns zero or more findings ---------------------------------------------

def _change(ev: Evidence, batch: int) -> str:
    """'faster' | 'slower' | 'flat', as the report's latency claim for that batch labelled it."""
    claim = ev.claims.get(f"latency @ batch {batch}", {})
    if claim.get("kind") != "real" or claim.get("ratio") is None:
        return "flat"
    return "faster" if claim["ratio"] > 1 else "slower"


def verdict(ev: Evidence) -> list[Finding]:
    rows = ev.speedups
    if not rows:
        return []
    change = {b: _change(ev, b) for b, *_ in rows}
    word = "Faster" if "faster" in change.values() else "Slower" if "slower" in change.values() else "Not faster"
    times = "; ".join(f"batch {b}: {_time(ref['median_ms'])} -> {_time(s['median_ms'])}" for b, _, ref, s in rows)
    flat = ", ".join(str(b) for b, c in change.items() if c == "flat")
    if not flat:
        why = ""
    elif ev.facts.get("same_kernels"):
        why = " The graph has the same ops and shapes as the baseline, so the differences are run-to-run noise."
    else:
        why = f" At batch {flat} the ratio is within the run-to-run spread: no measurable change."
    return [Finding("ok" if word == "Faster" else "hint", f"{word}: {_ratios(ev)}",
                    f"ONNX Runtime medians, {rows[0][3]['threads']} thread(s), variant vs the baseline measured in "
                    f"the same run ({times}).{why}")]


def dense_zeros(ev: Evidence) -> list[Finding]:
    size = ev.var["size"]
    if size["sparsity"] < SPARSE:
        return []
    pct = f"{size['sparsity']:.0%}"
    kernels = _kernels(ev)
    same = ev.facts.get("same_kernels")
    # channels removed first, then the rest pruned: the layers shrank for real, their zeros did not
    where = " in the layers left by structured pruning" if ev.facts.get("structured") else ""
    head = (f"{pct} of weights are zero but stored densely: ORT runs the same dense kernels as the baseline "
            f"({kernels}) — no sparse kernel" if same else
            f"{pct} of weights are zero but stored densely{where}: the kernels ({kernels}) are dense and multiply "
            "the zeros")
    text = (f"{size['nonzero']:,} of {size['params']:,} weights are nonzero, yet every weight is stored and "
            "multiplied: ONNX Runtime's CPU kernels do the same work whatever the values. ")
    if ev.macs:
        text += (f"Per sample the kernels do {ev.macs.variant:,} multiply-adds; only {ev.macs.useful:,} of them "
                 "involve a nonzero weight. ")
    if _stage_field(ev, "nm"):
        text += f"The {_stage_field(ev, 'nm')} pattern (N:M) needs a semi-structured sparse kernel; none ran here. "
    text += ("Zeros pay off in gzip and minimum storage (see the size claims); any speed here comes from the channels "
             "removed, not from the zeros." if where else
             "Zeros pay off in gzip and minimum storage (see the size claims), or as speed after structured pruning.")
    return [Finding("cause", head, text)]


def int8_format(ev: Evidence) -> list[Finding]:
    method = ev.facts.get("quant_method")
    if method not in ("static", "dynamic"):
        return []
    label = {"static": "int8 static QDQ", "dynamic": "int8 dynamic"}[method]
    cov = ev.var["coverage"]
    if ev.executed:
        int8, floats = ev.executed.int8, list(ev.executed.float_kernels)
        if len(floats) == len(cov["float_names"]):   # ORT renames some nodes; the file's names are the user's
            floats = list(cov["float_names"])
        where = f"in the graph ONNX Runtime runs after fusing: {_ops(int8) or 'no integer kernels'}"
        conv = Counter({op: ev.executed.ops[op] for op in CONVERSIONS if ev.executed.ops.get(op)})
    else:
        int8, floats = Counter({"quantized": cov["quantized"]}), list(cov["float_names"])
        where, conv = "counted in the file (pass the model to see what ONNX Runtime fuses)", Counter()
    n_int8, total = sum(int8.values()), sum(int8.values()) + len(floats)
    head = f"{label}: {n_int8} of {total} MatMul/Conv/Gemm run as int8 kernels"
    head += f"; {len(floats)} still float: {', '.join(floats)}" if floats else ""
    text = f"Compute ops {where}. "
    if conv:
        text += (f"Conversions between float and int8 left in the graph: {_ops(conv)}; each is extra work per "
                 "call that a float model does not do. ")
    if floats:
        text += "The float ones run at float speed" + (
            " behind a dequantize/quantize round trip. " if method == "static" else ". ")
    if method == "dynamic":
        text += ("Dynamic quantization computes each activation's int8 range on every call (DynamicQuantizeLinear "
                 "or DynamicQuantizeMatMul), work that static quantization does once at calibration. ")
        if not _stage_field(ev, "op_types"):
            text += "op_types was not set, so only MatMul/Gemm were quantized. "
    return [Finding("cause" if floats else "ok", head, text.strip())]


def weight_only_format(ev: Evidence) -> list[Finding]:
    if ev.facts.get("quant_method") != "weight_only":
        return []
    size, base = ev.var["size"], ev.base["size"]
    bits, block = round(size["bits_per_weight"]), _stage_field(ev, "block_size", "?")
    layers = ev.var["coverage"]["histogram"].get("MatMulNBits", 0)
    float_kb = base["params"] * base["bits_per_weight"] / 8 / 1024
    faster = any(ev.faster_at(b) for b, *_ in ev.speedups)
    return [Finding("ok" if faster else "cause",
                    f"MatMulNBits {bits}-bit: weights unpacked per block of {block} at run time",
                    f"{layers} layer(s) store {size['params']:,} weights as {bits}-bit codes (file "
                    f"{base['file_bytes'] / size['file_bytes']:.1f}x smaller). Every call unpacks the codes block "
                    "by block before multiplying, so what it saves is reading weight bytes from memory, not "
                    "arithmetic. That pays off for large layers at small batch; here the baseline's weights are "
                    f"{float_kb:,.0f} KB in all and the measured ratios are {_ratios(ev)}.")]


def fp16_format(ev: Evidence) -> list[Finding]:
    if ev.facts.get("quant_method") != "fp16":
        return []
    if ev.executed:
        kept = (f"ONNX Runtime's optimized graph keeps {ev.executed.fp16_run} of the file's "
                f"{ev.executed.fp16_file} float16 tensors and runs {ev.executed.ops.get('Cast', 0)} Cast node(s)")
        head = ("fp16 on CPU: ORT casts the weights back to float32 at load — smaller file only"
                if ev.executed.fp16_run == 0 else "fp16 on CPU: part of the model stays fp16")
    else:
        kept = "which tensors stay fp16 shows only in ONNX Runtime's optimized graph (pass the model)"
        head = "fp16 on CPU: smaller file; speed depends on the kernels ONNX Runtime picks"
    shrink = ev.base["size"]["file_bytes"] / ev.var["size"]["file_bytes"]
    return [Finding("cause", head, f"Weights are stored at 16 bits (file {shrink:.1f}x smaller); {kept}. "
                    f"Measured: {_ratios(ev)}.")]


def simulated(ev: Evidence) -> list[Finding]:
    out, size = [], ev.var["size"]
    if ev.facts.get("simulated_quant"):
        bits = ev.facts.get("storage_bits")
        out.append(Finding("cause", f"simulated: weights rounded to {bits} bits but stored and computed as float",
                           f"The file stores {size['bits_per_weight']:.0f}-bit floats; the {bits}-bit size "
                           f"({size['min_storage_bytes']:,} bytes) is computed, not a file ONNX Runtime can load. "
                           + ("The graph has the same ops and shapes as the baseline, so the same float kernels run."
                              if ev.facts.get("same_kernels") else "Fake-quant ops, if any, add float work.")))
    if ev.facts.get("packed_bytes"):
        out.append(Finding("cause", "weights.packed is smaller on disk only",
                           f"The packed weights ({ev.facts['packed_bytes']:,} bytes) must be decoded back into "
                           f"model.onnx, which stores {size['bits_per_weight']:.0f}-bit weights; ONNX Runtime runs "
                           "that file, so the kernels are the float ones."))
    return out


def arithmetic(ev: Evidence) -> list[Finding]:
    if ev.macs is None or ev.macs.base is None or ev.macs.variant >= 0.95 * ev.macs.base or not ev.speedups:
        return []
    fell = ev.macs.base / ev.macs.variant
    rows = [(b, r, r / fell) for b, r, *_ in ev.speedups]
    low = min(rows, key=lambda row: row[2])
    head = (f"MACs fell {fell:.1f}x but latency only {low[1]:.1f}x at batch {low[0]}" if low[2] < REALIZED
            else f"MACs fell {fell:.1f}x and latency {max(r for _, r, _ in rows):.1f}x")
    text = (f"Multiply-adds per sample of the exported graphs: {ev.macs.base:,} -> {ev.macs.variant:,}. Share of "
            "that reduction measured as speed: " + ", ".join(f"{q:.0%} at batch {b}" for b, _, q in rows) + ". ")
    fixed = per_call_cost(ev.base)
    if low[2] < REALIZED and fixed:
        text += (f"The baseline's fixed per-call cost (~{_time(fixed[0])}) does not shrink with the "
                 "layers: it dominates small models at small batch; compare at a large batch (e.g. 256).")
    return [Finding("cause" if low[2] < REALIZED else "ok", head, text.strip())]


def widths(ev: Evidence) -> list[Finding]:
    """Structured pruning that left layer widths between two multiples of ALIGN."""
    odd = sorted({after for record in ev.history for layer in record.get("pruned_layers", [])
                  for before, after in zip(layer["before"][:2], layer["after"][:2], strict=False)
                  if after != before and after % ALIGN})
    if not odd:
        return []
    rounded = _stage_field(ev, "round_to")
    fix = (f"round_to: {rounded} was asked for, but these layers could not be rounded (coupled to others)" if rounded
           else f"round_to: {ALIGN} (the Compress page's 'Round channel counts' toggle) keeps the widths aligned at "
                "about the same size; the structured section of BENCHMARKS.md measures the difference")
    return [Finding("hint", f"{len(odd)} pruned width(s) are not multiples of {ALIGN}: "
                    f"{', '.join(map(str, odd[:6]))}{' ...' if len(odd) > 6 else ''}",
                    "ONNX Runtime's CPU convolutions and matrix products work on blocks of 8-16 channels per vector "
                    f"instruction, so a width between two multiples leaves part of a block idle. {fix}.")]


def per_call_cost(measurement: dict[str, Any]) -> tuple[float, float, int, int] | None:
    """(fixed ms per call, ms per extra sample, smallest batch, largest batch): a straight line through
    the medians at the smallest and largest measured batch; None when that line says nothing."""
    stats = sorted(measurement.get("latency", []), key=lambda s: s["batch_size"])
    if len(stats) < 2:
        return None
    lo, hi = stats[0], stats[-1]
    per_sample = (hi["median_ms"] - lo["median_ms"]) / (hi["batch_size"] - lo["batch_size"])
    fixed = lo["median_ms"] - lo["batch_size"] * per_sample
    return (fixed, per_sample, lo["batch_size"], hi["batch_size"]) if fixed > 0 and per_sample > 0 else None


def overhead(ev: Evidence) -> list[Finding]:
    line = per_call_cost(ev.base)
    if line is None:
        return []
    fixed, per_sample, b0, b1 = line
    t0 = next(s["median_ms"] for s in ev.base["latency"] if s["batch_size"] == b0)
    if fixed / t0 < OVERHEAD_SHARE:
        return []
    head = f"At batch {b0}, ~{_time(fixed)} of the baseline's {_time(t0)} call is fixed per-call cost"
    text = (f"A straight line through the baseline's medians at batch {b0} and {b1} gives {_time(per_sample)} per "
            f"extra sample and {_time(fixed)} per call whatever its size (session.run, input/output copies, one "
            f"dispatch per op). Compression shrinks only the per-sample part, so batch {b0} can gain at most "
            f"{t0 / fixed:.2f}x even if that part vanished. ")
    text += ("Add 256 to measure.batch_sizes to see the per-sample work dominate." if b1 < 256 else
             f"At batch {b1} the per-sample work dominates: read the ratio there.")
    return [Finding("hint" if ev.faster_at(b0) else "cause", head, text)]


def cpu(ev: Evidence) -> list[Finding]:
    int8 = sum(ev.executed.int8.values()) if ev.executed else ev.var["coverage"]["quantized"]
    flags = ev.env.get("cpu_flags") or {}
    if not int8 or not flags:
        return []
    note = int8_note(flags)
    listed = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in flags.items() if v is not None)
    if flags.get("avx2") is None:
        return [Finding("hint", "CPU int8 support unknown", f"{note} (no x86 flags were readable on the "
                        "measuring machine).")]
    best = next((name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"),
                                         ("avx_vnni", "AVX-VNNI")) if flags.get(flag)), None)
    head = (f"This CPU has {best}: int8 dot products are accelerated" if best
            else "No VNNI on this CPU: int8 dot products are not accelerated")
    return [Finding("ok" if best else "cause", head,
                    f"{note}. {int8} op(s) run integer or low-bit kernels. Flags of the measuring machine "
                    f"({ev.env.get('cpu_model') or 'CPU model unknown'}): {listed}.")]


def threads(ev: Evidence) -> list[Finding]:
    used, cores = ev.env.get("threads"), ev.env.get("usable_cores") or ev.env.get("logical_cores")
    if not used or not cores or used >= cores:
        return []
    biggest = max((b for b, *_ in ev.speedups), default=None)
    return [Finding("hint", f"threads={used} in this measurement ({cores} cores usable)",
                    f"Every latency here used {used} intra-op thread(s). ONNX Runtime splits a large batch across "
                    f"threads, so measure.threads: {cores} would speed up batch {biggest} for baseline and variant "
                    "alike; at batch 1 small layers gain little from more threads.")]


def noise(ev: Evidence) -> list[Finding]:
    spread = [(max((ref["p90_ms"] - ref["median_ms"]) / ref["median_ms"], (s["p90_ms"] - s["median_ms"]) /
                   s["median_ms"]), b, min(ref["repeats"], s["repeats"])) for b, _, ref, s in ev.speedups]
    worst = max(spread, default=None)
    if worst is None or worst[0] < NOISY:
        return []
    return [Finding("hint", f"Noisy timing: p90 is {worst[0]:.0%} above the median at batch {worst[1]}",
                    f"With {worst[2]} timed calls, a latency ratio within ±{worst[0]:.0%} cannot be told from noise. "
                    "Raise measure.repeats or measure.min_time_s, and keep other work off the machine.")]


RULES: tuple[Callable[[Evidence], list[Finding]], ...] = (
    dense_zeros, int8_format, weight_only_format, fp16_format, simulated, arithmetic, widths, overhead, cpu, threads,
    noise)


def diagnose(report: dict[str, Any], index: int = -1, model_path: Path | None = None) -> list[Finding]:
    """The findings for variant `index` of `report`: the measured verdict first, then causes, what
    works (ok) and hints, each group in rule order. See the module docstring."""
    try:
        ev = evidence(report, index, model_path)
        found = [f for rule in RULES for f in rule(ev)]
        return verdict(ev) + sorted(found, key=lambda f: KINDS.index(f.kind))
    except (KeyError, TypeError) as exc:   # a field missing from an older or damaged report.json
        raise WorkbenchError(f"report: variant {index} lacks the field {exc} (old or damaged report.json)") from None


def render_text(findings: list[Finding], title: str = "", width: int = 100) -> str:
    """Findings as indented plain text: '[CAUSE] headline' then the wrapped explanation."""
    lines = [title] if title else []
    for f in findings:
        lines += textwrap.wrap(f"[{f.kind.upper():5}] {f.headline}", width, initial_indent="  ",
                               subsequent_indent=" " * 10)
        lines += textwrap.wrap(f.explanation, width, initial_indent=" " * 10, subsequent_indent=" " * 10)
    return "\n".join(lines)
