"""Which batch sizes a run times by default, for a model of a given size.

Batch 1 (one request at a time) and batch 256 (throughput) show the two sides of a speedup, and the
sample models take both in microseconds to milliseconds. A large model does not: a ResNet-18 at 224×224
is 1.8 GMAC per sample, so 464 GMAC per call at batch 256 (seconds on one core), and a run times every
batch size at least five times for the baseline and each variant, in ONNX Runtime and torch eager. So the
default keeps batch 1 and the largest throughput batch whose call stays within CALL_BUDGET_MACS; the user
can still ask for any batch size. Knows nothing about timing itself (workbench.benchmark).
"""

from __future__ import annotations

DEFAULT_BATCH_SIZES = (1, 256)
THROUGHPUT_BATCHES = (256, 64, 32, 8)   # tried largest first
CALL_BUDGET_MACS = 40 * 10**9           # ~0.5 s per call at the ~80 GMAC/s one AVX-512 core reaches on convs


def default_batch_sizes(macs_per_sample: int | None) -> tuple[int, ...]:
    """Batch 1 plus the largest of THROUGHPUT_BATCHES whose call stays within CALL_BUDGET_MACS (unknown
    MACs: DEFAULT_BATCH_SIZES)."""
    if not macs_per_sample:
        return DEFAULT_BATCH_SIZES
    fitting = [b for b in THROUGHPUT_BATCHES if b * macs_per_sample <= CALL_BUDGET_MACS]
    return (1, fitting[0]) if fitting else (1,)


def default_reason(macs_per_sample: int | None) -> str:
    """Why the default differs from DEFAULT_BATCH_SIZES for this model, in one sentence ("" when it does not)."""
    sizes = default_batch_sizes(macs_per_sample)
    if sizes == DEFAULT_BATCH_SIZES or not macs_per_sample:
        return ""
    largest = DEFAULT_BATCH_SIZES[-1]
    return (f"batch {largest} of this model is {largest * macs_per_sample / 1e9:,.0f} GMAC per call "
            f"({macs_per_sample / 1e9:.2f} GMAC per sample), seconds per call, timed at least five times per "
            f"variant and engine; so by default runs time batch {' and '.join(map(str, sizes))}")


def heavy_calls(macs_per_sample: int | None, batch_sizes: tuple[int, ...]) -> str:
    """The measured batch sizes whose call exceeds CALL_BUDGET_MACS, in words for a progress line
    ("batch 256: 464 GMAC per call"), or "" when none does or the MACs are unknown."""
    if not macs_per_sample:
        return ""
    heavy = [b for b in batch_sizes if b * macs_per_sample > CALL_BUDGET_MACS]
    return ", ".join(f"batch {b}: {b * macs_per_sample / 1e9:,.0f} GMAC per call" for b in heavy)
