"""Paired counts and the exact McNemar test: is an accuracy change more than test-set noise?"""

import numpy as np
import pytest

from workbench.evaluate import answers as correct
from workbench.significance import (
    PairedChange,
    changes,
    class_counts,
    mcnemar_p,
    pack_answers,
    smallest_detectable,
    unpack_answers,
    wilson_interval,
)


def test_mcnemar_p_is_the_doubled_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 0) == pytest.approx(0.25)          # 2 * 0.5**3
    assert mcnemar_p(5, 0) == pytest.approx(0.0625)
    assert mcnemar_p(6, 0) == pytest.approx(0.03125)
    assert mcnemar_p(0, 6) == mcnemar_p(6, 0)
    assert mcnemar_p(10, 10) == 1.0                         # capped, not 2 * P(X <= 10)
    assert mcnemar_p(9, 1) == pytest.approx(2 * 11 / 1024)  # P(X <= 1) for Binomial(10, 0.5) = 11/1024


def test_mcnemar_p_matches_the_exact_binomial_sum_for_large_counts():
    from math import comb

    for worse, better in ((120, 80), (1000, 1100), (3, 400), (250, 250)):
        n, k = worse + better, min(worse, better)
        exact = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
        assert mcnemar_p(worse, better) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_six_samples_one_way_is_the_least_that_can_show():
    assert smallest_detectable() == 6
    assert mcnemar_p(smallest_detectable(), 0) < 0.05 <= mcnemar_p(smallest_detectable() - 1, 0)
    assert smallest_detectable(0.01) == 8                    # 2 * 0.5**8 < 0.01 <= 2 * 0.5**7


def test_paired_change_counts_samples_that_changed_side():
    labels = np.array([0, 1, 2, 0, 1, 2])
    base = np.eye(3)[[0, 1, 2, 1, 1, 0]]     # right on samples 0, 1, 2, 4; wrong on 3, 5
    variant = np.eye(3)[[0, 2, 2, 0, 0, 0]]  # right on 0, 2, 3; wrong on 1, 4, 5
    change = changes(correct(base, labels), correct(variant, labels))
    assert (change.samples, change.worse, change.better) == (6, 2, 1)   # 1 and 4 went wrong, 3 went right
    assert change.p_value == pytest.approx(1.0)
    assert change.verdict == "within noise"


def test_a_head_with_a_different_class_count_still_pairs():
    labels = np.array([0, 1, 1])
    change = changes(correct(np.eye(10)[[0, 1, 1]], labels), correct(np.eye(2)[[0, 1, 0]], labels))
    assert (change.worse, change.better) == (1, 0)


def test_answers_of_different_samples_do_not_pair():
    with pytest.raises(ValueError, match="not the same samples"):
        changes(np.ones(3, bool), np.ones(4, bool))


def test_answers_round_trip_as_one_bit_per_sample():
    right = np.random.default_rng(0).random(361) > 0.1
    text = pack_answers(right)
    assert len(text) == 4 * -(-46 // 3)     # 361 bits -> 46 bytes -> base64
    np.testing.assert_array_equal(unpack_answers(text, 361), right)


def test_verdicts_and_their_sentences():
    same = PairedChange(360, 0, 0, 1.0)
    assert same.verdict == "identical" and "all 360" in same.sentence()
    noise = PairedChange(360, 3, 1, mcnemar_p(3, 1))
    assert noise.verdict == "within noise"
    assert noise.sentence() == ("3 samples went wrong and 1 sample went right of 360 (net -2, -0.56 pt): within "
                                "test-set noise (exact McNemar test p = 0.62; a change needs at least 6 samples "
                                "going one way to show)")
    drop = PairedChange(360, 12, 1, mcnemar_p(12, 1))
    assert drop.verdict == "drop" and "beyond test-set noise (exact McNemar test p = 0.003)" in drop.sentence()
    assert PairedChange(360, 0, 40, mcnemar_p(0, 40)).verdict == "gain"
    assert "p < 0.001" in PairedChange(360, 0, 40, mcnemar_p(0, 40)).sentence()


def test_wilson_interval():
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    low, high = wilson_interval(1.0, 360)          # never past 1, unlike the normal approximation
    assert high == pytest.approx(1.0) and high <= 1.0 and 0.98 < low < 1.0
    low, high = wilson_interval(358 / 360, 360)    # the digits baselines: 2 errors in 360
    assert low == pytest.approx(0.980, abs=1e-3) and high == pytest.approx(0.9985, abs=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_class_counts_split_the_right_answers_by_label():
    labels = np.array([2, 0, 2, 2, 5])
    right = np.array([True, False, True, False, True])
    assert class_counts(right, labels) == ((0, 1, 0), (2, 3, 2), (5, 1, 1))
