"""Summary statistics and paired comparisons: hand-computed values and scipy as the reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from multiturbo.stats import (
    ITEM_METRICS, MIN_T_TEST, fmt, fmt_mean_std, fmt_p, fmt_test_p, item_paired_difference, mcnemar_exact, mean_std, paired_difference,
)


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


# -- item-level paired comparison of two classifiers on the same items -------------------------------
def test_identical_predictions_differ_by_zero_with_a_zero_interval_and_mcnemar_p_1():
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 4, 80), rng.integers(0, 4, 80)
    out = item_paired_difference(labels, preds, preds, 4)
    assert list(out) == list(ITEM_METRICS) == ["wa", "ua", "f1"]
    for s in out.values():
        assert s.n == 80 and s.diff == 0.0 and (s.ci_low, s.ci_high) == (0.0, 0.0)
    assert out["wa"].mcnemar_p == 1.0 and (out["wa"].b_only, out["wa"].a_only) == (0, 0)
    assert math.isnan(out["ua"].mcnemar_p)  # McNemar is for WA only


def test_item_differences_by_hand():
    labels = [0, 0, 1, 1]
    a = [0, 1, 1, 0]  # right on items 0 and 2: WA 1/2, recalls 1/2 and 1/2, F1 1/2 and 1/2
    b = [0, 0, 1, 0]  # right on items 0, 1, 2: WA 3/4, recalls 1 and 1/2, F1 4/5 and 2/3
    out = item_paired_difference(labels, a, b, 2)
    assert out["wa"].value_a == pytest.approx(0.5) and out["wa"].value_b == pytest.approx(0.75)
    assert out["wa"].diff == pytest.approx(0.25) and out["ua"].diff == pytest.approx(0.25)
    assert out["f1"].diff == pytest.approx((0.8 + 2 / 3) / 2 - 0.5)
    assert (out["wa"].b_only, out["wa"].a_only) == (1, 0) and out["wa"].mcnemar_p == pytest.approx(1.0)  # 1 of 1 discordant
    for s in out.values():
        assert s.ci_low <= s.diff <= s.ci_high


def test_b_right_on_30_items_a_gets_wrong_is_significant_and_the_interval_excludes_zero():
    labels = np.arange(120) % 3
    a = labels.copy()
    a[:30] = (labels[:30] + 1) % 3  # A wrong on the first 30 items ...
    a[90:] = (labels[90:] + 1) % 3  # ... and on the last 30, where B is wrong too
    b = labels.copy()
    b[90:] = a[90:]
    out = item_paired_difference(labels, a, b, 3)
    wa = out["wa"]
    assert (wa.b_only, wa.a_only) == (30, 0) and wa.diff == pytest.approx(30 / 120)
    assert wa.mcnemar_p < 0.001 and wa.mcnemar_p == pytest.approx(sps.binomtest(30, 30, 0.5).pvalue)
    for s in out.values():
        assert 0 < s.ci_low <= s.diff <= s.ci_high


def test_item_comparison_is_deterministic_and_the_seed_is_what_draws_the_resamples():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 60)
    a = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 3, 60))
    b = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 3, 60))
    first, again = item_paired_difference(labels, a, b, 3), item_paired_difference(labels, a, b, 3)
    assert first == again
    other = item_paired_difference(labels, a, b, 3, seed=1)
    assert other["ua"].diff == first["ua"].diff and other["ua"].ci_low != first["ua"].ci_low


def test_bootstrap_interval_matches_a_loop_over_the_same_resamples():
    from multiturbo.metrics import macro_recall
    import torch

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 40)
    a, b = rng.integers(0, 3, 40), np.where(rng.random(40) < 0.6, labels, rng.integers(0, 3, 40))
    out = item_paired_difference(labels, a, b, 3, resamples=200, seed=11)
    idx = np.random.default_rng(11).integers(0, 40, size=(200, 40))
    t = lambda x: torch.from_numpy(np.asarray(x, dtype=np.int64))  # noqa: E731
    diffs = [macro_recall(t(b[i]), t(labels[i]), 3) - macro_recall(t(a[i]), t(labels[i]), 3) for i in idx]
    low, high = np.quantile(diffs, [0.025, 0.975])
    assert (out["ua"].ci_low, out["ua"].ci_high) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))


def test_mcnemar_without_discordant_items_is_1_and_bad_inputs_are_refused():
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same) == (1.0, 0, 0)
    with pytest.raises(ValueError, match="one entry per item"):
        item_paired_difference([0, 1], [0, 1, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="at least one item"):
        item_paired_difference([], [], [], 2)
    with pytest.raises(ValueError, match="class indices in 0..1"):
        item_paired_difference([0, 2], [0, 1], [0, 1], 2)
