"""Summary statistics and paired comparisons: hand-computed values and scipy as the reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from multiturbo.stats import MIN_T_TEST, fmt, fmt_mean_std, fmt_p, fmt_test_p, mean_std, paired_difference


def test_mean_and_sample_std_by_hand():
    s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert s.n == 4 and s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof = 1
    assert fmt_mean_std(s) == "2.5000 ± 1.2910"


def test_one_value_has_no_std_and_nan_values_are_dropped():
    one = mean_std([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.std)
    assert fmt_mean_std(one) == "0.7000"
    s = mean_std([0.2, float("nan"), 0.4])
    assert s.n == 2 and s.mean == pytest.approx(0.3) and s.std == pytest.approx(math.sqrt(0.02))
    none = mean_std([])
    assert none.n == 0 and math.isnan(none.mean) and fmt_mean_std(none) == "n/a"


def test_paired_difference_by_hand():
    a, b = [0.5, 0.6, 0.7], [0.6, 0.65, 0.85]  # d = 0.10, 0.05, 0.15: mean 0.1, sd 0.05
    p = paired_difference(a, b)
    assert p.n == 3 and p.mean_a == pytest.approx(0.6) and p.mean_b == pytest.approx(0.7)
    assert p.mean_diff == pytest.approx(0.1) and p.std_diff == pytest.approx(0.05)
    half = 4.302652729749462 * 0.05 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert (p.ci_low, p.ci_high) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert math.isnan(p.t_p) and "n too small for a p-value" in p.note  # n = 3 < MIN_T_TEST: the interval only
    assert math.isnan(p.wilcoxon_p) and "no Wilcoxon" in p.note  # n < 6
    forced = paired_difference(a, b, min_t_test=2)
    assert forced.t_p == pytest.approx(0.0741799002274485)  # two-sided, t = 0.1 / (0.05 / sqrt 3) = 3.464, df 2


def test_below_min_t_test_the_interval_is_shown_without_a_p_value():
    assert MIN_T_TEST == 5
    a, b = [0.5, 0.6], [0.61, 0.62]  # the users' case: n = 2 printed p = 0.004-like values with no caveat
    two = paired_difference(a, b, test_train_ratio=0.25)
    assert math.isnan(two.t_p) and math.isnan(two.nb_p) and not math.isnan(two.ci_low) and not math.isnan(two.nb_ci_low)
    assert "n = 2 < 5: n too small for a p-value" in two.note and fmt_test_p(two.t_p, two) == "n < 5"
    four = paired_difference([0.5, 0.6, 0.7, 0.55], [0.56, 0.62, 0.78, 0.6])
    assert math.isnan(four.t_p) and fmt_test_p(four.nb_p, four) == "n < 5"
    five = paired_difference([0.5, 0.6, 0.7, 0.55, 0.52], [0.56, 0.62, 0.78, 0.6, 0.6], test_train_ratio=0.25)
    assert five.t_p == pytest.approx(sps.ttest_rel([0.56, 0.62, 0.78, 0.6, 0.6], [0.5, 0.6, 0.7, 0.55, 0.52]).pvalue)
    assert not math.isnan(five.nb_p) and "too small" not in five.note and fmt_test_p(five.t_p, five) == fmt_p(five.t_p)
    same = paired_difference([0.1, 0.2], [0.15, 0.25])  # zero variance: the note says so, not "n < 5"
    assert fmt_test_p(same.t_p, same) == "n/a" and "zero variance" in same.note


def test_paired_difference_equals_scipy():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 0.8, 9)
    b = a + rng.normal(0.02, 0.03, 9)
    p = paired_difference(list(a), list(b))
    d = b - a
    low, high = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert (p.ci_low, p.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert p.t_p == pytest.approx(sps.ttest_rel(b, a).pvalue)
    assert p.wilcoxon_p == pytest.approx(sps.wilcoxon(b, a).pvalue)
    assert p.std_diff == pytest.approx(d.std(ddof=1)) and p.note == ""
    # other confidence levels follow the same formula
    p90 = paired_difference(list(a), list(b), confidence=0.9)
    assert p90.ci_low == pytest.approx(sps.t.interval(0.9, len(d) - 1, loc=d.mean(), scale=sps.sem(d))[0])


def test_degenerate_cases_give_nan_and_a_note_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = paired_difference([0.5], [0.6])
        assert one.n == 1 and one.mean_diff == pytest.approx(0.1) and math.isnan(one.ci_low) and math.isnan(one.t_p)
        assert "n = 1" in one.note
        same = paired_difference([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.15, 0.25, 0.35, 0.45, 0.55, 0.65])
        assert same.mean_diff == pytest.approx(0.05) and same.ci_low == same.ci_high == pytest.approx(0.05)
        assert math.isnan(same.t_p) and "zero variance" in same.note
        assert same.wilcoxon_p == pytest.approx(sps.wilcoxon([0.05] * 6).pvalue)  # all positive: exact p = 2 / 64
        zero = paired_difference([0.3] * 6, [0.3] * 6)
        assert zero.mean_diff == 0 and math.isnan(zero.t_p) and math.isnan(zero.wilcoxon_p)
        assert "all differences zero" in zero.note
        empty = paired_difference([], [])
        assert empty.n == 0 and math.isnan(empty.mean_diff) and empty.note == "no pairs"


def test_pairs_with_nan_are_dropped_and_lengths_must_match():
    p = paired_difference([0.1, float("nan"), 0.3], [0.2, 0.5, 0.5])
    assert p.n == 2 and p.mean_diff == pytest.approx(0.15) and "1 pair(s) with n/a values dropped" in p.note
    with pytest.raises(ValueError, match="same length"):
        paired_difference([0.1, 0.2], [0.1])


def test_formatting():
    assert fmt(float("nan")) == "n/a" and fmt(0.12345) == "0.1235" and fmt(3) == "3"
    assert fmt_p(float("nan")) == "n/a" and fmt_p(0.0004) == "<0.001" and fmt_p(0.0412) == "0.041"
