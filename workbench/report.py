"""The result of a run: the baseline and each stage's variant, measured alike, with claims.

`Report.to_dict()` is what `report.json` holds; `render_text` is what the CLI prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from workbench.claims import Claim, Facts

if TYPE_CHECKING:
    from workbench.measure import Measurement


@dataclass(frozen=True)
class VariantResult:
    name: str                          # "baseline" (or "baseline (after transfer)") or "<n>: <stage>"
    stage: dict[str, Any] | None       # the stage spec that produced it
    measurement: Measurement
    facts: Facts
    claims: tuple[Claim, ...] = ()
    notes: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()   # per-round records (iterative pruning)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    spec: dict[str, Any]
    environment: dict[str, Any]
    baseline: VariantResult
    variants: tuple[VariantResult, ...]
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> VariantResult:
        return self.variants[-1] if self.variants else self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "environment": self.environment,
            "baseline": self.baseline.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
            "seconds": self.seconds,
            "artifacts": self.artifacts,
        }

    def summary_rows(self) -> list[dict[str, Any]]:
        """One flat row per variant (baseline first): the numbers a comparison table shows."""
        return [_row(v, self.baseline) for v in (self.baseline, *self.variants)]


def _row(v: VariantResult, base: VariantResult) -> dict[str, Any]:
    m, b = v.measurement, base.measurement
    row: dict[str, Any] = {"variant": v.name, **{k: round(x, 4) for k, x in m.metrics.items()}}
    if m.paired:
        row["acc_change"] = m.paired.verdict
    row.update(file_kb=round(m.size.file_bytes / 1024, 1), gzip_kb=round(m.size.gzip_bytes / 1024, 1),
               min_storage_kb=round(m.size.min_storage_bytes / 1024, 1), sparsity=round(m.size.sparsity, 3),
               bits=m.size.bits_per_weight, gzip_x=round(b.size.file_bytes / m.size.gzip_bytes, 2))
    if v.facts.packed_bytes:   # clustering wrote weights.packed: the run's real smallest size
        row.update(packed_kb=round(v.facts.packed_bytes / 1024, 1),
                   packed_x=round(b.size.file_bytes / v.facts.packed_bytes, 2))
    for s in m.latency:
        ref = b.latency_at(s.batch_size)
        row[f"ort_ms@{s.batch_size}"] = round(s.median_ms, 4)
        if ref:
            row[f"speedup@{s.batch_size}"] = round(ref.median_ms / s.median_ms, 2)
    for s in m.torch_latency:
        row[f"torch_ms@{s.batch_size}"] = round(s.median_ms, 4)
    row["int8_ops"] = f"{m.coverage.quantized}/{m.coverage.quantized + m.coverage.float_ops}"
    return row


def text_table(rows: list[dict], keys: list[str] | None = None) -> str:
    """Rows as aligned plain-text columns; by default every key, in the order of the row that has the most
    (a variant's, so a column the baseline lacks stays beside its kin), blank where a row lacks one."""
    keys = keys or list(dict.fromkeys(k for r in sorted(rows, key=len, reverse=True) for k in r))
    cells = [[("" if r.get(k) is None else str(r.get(k))) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_text(report: Report) -> str:
    """A plain-text report: the table, then each variant's claims."""
    lines = [text_table(report.summary_rows())]
    env = report.environment
    lines.append(f"\nmeasured on {env.get('cpu_model')} ({env.get('int8_note')}), {env.get('threads')} thread(s)")
    if report.baseline.notes:
        lines += [f"\n{report.baseline.name}", *(f"  note: {n}" for n in report.baseline.notes)]
    for v in report.variants:
        lines.append(f"\n{v.name}")
        lines += [f"  [{c.kind.upper():9}] {c.aspect}: {c.reason}" for c in v.claims]
        if lost := classes_lost(report.baseline.measurement, v.measurement):
            lines.append(f"  classes that lost most: {lost}")
        cov = v.measurement.coverage
        if v.facts.quant_method:
            ops = ", ".join(f"{op} {n}" for op, n in cov.histogram.items())
            lines.append(f"  ops: {cov.quantized} of {cov.quantized + cov.float_ops} compute ops quantized; {ops}")
        lines += [f"  note: {n}" for n in v.notes]
    return "\n".join(lines)


def classes_lost(base: Measurement, var: Measurement, listed: int = 3) -> str:
    """The classes whose right answers fell most against the baseline, 'label (-lost of samples)', worst first;
    empty when none fell (or no labels)."""
    before = {c: right for c, _, right in base.classes}
    falls = sorted((right - before[c], c, n) for c, n, right in var.classes if c in before and right < before[c])
    return ", ".join(f"{c} ({change:+d} of {n})" for change, c, n in falls[:listed])
