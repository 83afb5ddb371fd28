"""Is an accuracy change more than test-set noise? Paired counts and the exact McNemar test.

A variant and its baseline are scored on the same test samples, so the question is not "how far apart are
two accuracies" but "how many samples changed side": `worse` went from right to wrong, `better` from wrong
to right. Under "the two models are equally accurate" each changed sample is a fair coin, so the exact
(binomial) McNemar test gives the two-sided p-value. On the 360-sample digits test split one sample is
0.28 pt, and no change of fewer than 6 samples can reach p < 0.05 however lopsided it is.

The same counts compare any two runs scored on the same samples, from the per-sample answers each
measurement keeps (`pack_answers`: one bit per sample in report.json).

Contract: pure functions over predictions and counts (numpy only).
Non-goals: comparing runs scored on different data (the samples are not paired).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
Z95 = 1.959963984540054   # the two-sided 95% normal quantile


@dataclass(frozen=True)
class PairedChange:
    """How a variant's right and wrong answers differ from its baseline's, on the same samples."""

    samples: int
    worse: int       # right in the baseline, wrong in the variant
    better: int      # wrong in the baseline, right in the variant
    p_value: float   # exact two-sided McNemar test

    @property
    def verdict(self) -> str:
        """'identical' (no sample changed side), 'within noise', 'drop' or 'gain' (beyond noise)."""
        if not self.worse and not self.better:
            return "identical"
        if self.p_value >= ALPHA:
            return "within noise"
        return "drop" if self.worse > self.better else "gain"

    def sentence(self) -> str:
        """The counts and the verdict in plain words, for a claim or a tooltip."""
        n = self.samples
        if self.verdict == "identical":
            return f"the same samples right and wrong as the baseline on all {n:,}"
        net = self.better - self.worse
        counts = (f"{_samples(self.worse)} went wrong and {_samples(self.better)} went right of {n:,} "
                  f"(net {net:+d}, {100 * net / n:+.2f} pt)")
        if self.verdict == "within noise":
            return (f"{counts}: within test-set noise (exact McNemar test p = {self.p_value:.2f}; a change needs at "
                    f"least {smallest_detectable()} samples going one way to show)")
        return f"{counts}: beyond test-set noise (exact McNemar test {_p(self.p_value)})"


def _samples(count: int) -> str:
    return f"{count} sample" + ("" if count == 1 else "s")


def _p(value: float) -> str:
    return f"p = {value:.3f}" if value >= 0.001 else "p < 0.001"


def mcnemar_p(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value: twice the Binomial(worse + better, 1/2) tail of the rarer direction,
    capped at 1. Summed in log space here: scipy.stats gives the same number but takes 0.6 s to import, which
    the Compare page would pay on its first load."""
    changed, rarer = worse + better, min(worse, better)
    if changed == 0:
        return 1.0
    i = np.arange(rarer, dtype=np.float64)
    log_terms = np.concatenate([[0.0], np.cumsum(np.log(changed - i) - np.log(i + 1))])   # log C(n, 0..rarer)
    top = log_terms.max()
    log_tail = top + np.log(np.exp(log_terms - top).sum()) - changed * math.log(2)
    return float(min(1.0, 2 * math.exp(log_tail)))


def smallest_detectable(alpha: float = ALPHA) -> int:
    """The fewest changed samples (all one way) whose exact McNemar p-value is below `alpha`: 6 at 0.05."""
    return math.ceil(math.log2(2 / alpha) + 1e-12)


def changes(before: np.ndarray, after: np.ndarray) -> PairedChange:
    """`after` against `before`: per-sample correctness (evaluate.answers) of two models on the same samples, in
    the same order. Their class counts may differ (a transferred head): the answers still pair."""
    if before.shape != after.shape:
        raise ValueError(f"changes: {before.shape} and {after.shape} answers are not the same samples")
    worse, better = int(np.sum(before & ~after)), int(np.sum(~before & after))
    return PairedChange(len(before), worse, better, mcnemar_p(worse, better))


def class_counts(right: np.ndarray, labels: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """(label, samples, right answers) per class present in `labels`: where an accuracy change falls, since a
    compressed model can lose some classes far more than its average says (Hooker et al. 2019)."""
    classes, index = np.unique(np.asarray(labels), return_inverse=True)
    samples, hits = np.bincount(index), np.bincount(index, weights=np.asarray(right, dtype=float))
    return tuple((int(c), int(n), int(h)) for c, n, h in zip(classes, samples, hits, strict=True))


def pack_answers(right: np.ndarray) -> str:
    """Per-sample correctness as text for report.json: one bit per sample, base64 (60 characters for 360)."""
    return base64.b64encode(np.packbits(np.asarray(right, dtype=bool))).decode("ascii")


def unpack_answers(text: str, samples: int) -> np.ndarray:
    """The inverse of `pack_answers`."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=samples).astype(bool)


def wilson_interval(accuracy: float, samples: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy measured on `samples` samples."""
    if samples <= 0:
        raise ValueError("wilson_interval: need at least one sample")
    z2n = z * z / samples
    centre = (accuracy + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / samples + z2n / (4 * samples)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)
