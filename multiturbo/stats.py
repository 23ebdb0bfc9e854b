"""Summary statistics over repeated runs (folds x seeds) and paired comparisons of methods.

- :func:`mean_std`: mean and the SAMPLE standard deviation (ddof = 1); with one value the
  std is NaN ("n/a"), not 0. NaN inputs (an EER that is undefined on some fold) are dropped.
- :func:`paired_difference`: for two methods measured on the same (fold, seed) pairs, the
  mean of the differences d_i = b_i - a_i, the 95 % paired t interval
  d_mean +- t_{0.975, n-1} * sd(d) / sqrt(n), the paired t-test p-value (scipy's
  ``ttest_rel``) and, from ``min_wilcoxon`` pairs on, the Wilcoxon signed-rank p-value
  (scipy's ``wilcoxon``). Below ``min_t_test`` pairs (:data:`MIN_T_TEST` = 5) the interval is
  given but no t-test p-value, with a note that n is too small for one. Cases where a quantity
  is undefined (n = 1, all differences equal) give NaN with a ``note`` saying why, never an
  exception or a warning.
- The Nadeau-Bengio corrected resampled t-test (Nadeau & Bengio 2003, Machine Learning 52;
  Bouckaert & Frank 2004 for repeated cross-validation), when the share of test to training
  items is given: the training sets of cross-validation folds overlap, so the differences are
  correlated and the plain paired t-test is optimistic. The corrected variance is
  (1/n + n_test/n_train) * sd(d)^2 instead of sd(d)^2 / n, with n - 1 degrees of freedom.
  It applies to fold (and fold x seed) grids; over seeds on one fixed split the test set is the
  same for every pair and neither test accounts for the split's own sampling variance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

MIN_WILCOXON = 6  # below 6 pairs the exact two-sided signed-rank p-value cannot go below 0.0625
MIN_T_TEST = 5  # below 5 pairs no t-test p-value is given (only the interval): with 1-3 degrees of freedom
# the p-value rests on the normality of a handful of differences and swings with any one of them


@dataclass(frozen=True)
class Summary:
    """``n`` finite values, their mean and sample std (NaN when n < 2; mean NaN when n = 0)."""

    n: int
    mean: float
    std: float

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    return x[np.isfinite(x)]


def mean_std(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (ddof = 1) of the finite values."""
    x = _finite(values)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    return Summary(n, mean, std)


@dataclass(frozen=True)
class PairedStats:
    """The paired comparison of b against a: differences are b - a."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    t_p: float
    wilcoxon_p: float
    note: str = ""
    nb_ci_low: float = math.nan  # Nadeau-Bengio corrected interval and p-value (NaN without test_train_ratio)
    nb_ci_high: float = math.nan
    nb_p: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def _sps():
    """scipy.stats, imported on first use: about a second of start-up that a single run (which only
    formats numbers with this module) need not pay."""
    from scipy import stats

    return stats


def corrected_resampled_t(d: Sequence[float], test_train_ratio: float, confidence: float = 0.95) -> tuple[float, float, float]:
    """Nadeau-Bengio corrected resampled t-test of the differences ``d`` (n >= 2, not all equal):
    (ci_low, ci_high, two-sided p) with variance (1/n + n_test/n_train) * sd(d)^2 and n - 1 df."""
    sps = _sps()
    x = np.asarray(d, dtype=np.float64)
    n = int(x.size)
    if not test_train_ratio > 0:
        raise ValueError(f"test_train_ratio must be > 0 (test items / training items), got {test_train_ratio}")
    se = math.sqrt((1.0 / n + test_train_ratio) * float(x.var(ddof=1)))
    mean = float(x.mean())
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    return mean - half, mean + half, p


def too_few_for_p(n: int, min_t_test: int = MIN_T_TEST) -> str:
    """The note of a paired comparison with too few pairs for a p-value."""
    return f"n = {n} < {min_t_test}: n too small for a p-value, only the interval is shown (run {min_t_test}+ folds or seeds)"


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, min_wilcoxon: int = MIN_WILCOXON,
    test_train_ratio: float | None = None, min_t_test: int = MIN_T_TEST,
) -> PairedStats:
    """Compare paired samples ``a`` and ``b`` (same length, same order of pairs).

    Pairs where either value is NaN are dropped. Returns NaN (with a note) for what is
    undefined: the interval and t-test need n >= 2 and differences that are not all
    equal; the t-test p-values need n >= ``min_t_test``; the Wilcoxon test needs n >=
    ``min_wilcoxon`` and a non-zero difference.
    ``test_train_ratio`` (test items / training items of one run, for fold grids) adds the
    Nadeau-Bengio corrected interval and p-value (:func:`corrected_resampled_t`).
    """
    sps = _sps()
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[keep], xb[keep]
    d = xb - xa
    n = int(d.size)
    notes = []
    if n < len(a):
        notes.append(f"{len(a) - n} pair(s) with n/a values dropped")
    nan = math.nan
    if n == 0:
        return PairedStats(0, nan, nan, nan, nan, nan, nan, nan, nan, "; ".join([*notes, "no pairs"]))
    mean_d = float(d.mean())
    std_d = float(d.std(ddof=1)) if n >= 2 else nan
    ci_low = ci_high = t_p = w_p = nb_low = nb_high = nb_p = nan
    if n < 2:
        notes.append("n = 1: no interval or test")
    elif np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal up to rounding: t is undefined
        ci_low = ci_high = mean_d
        notes.append("all differences equal (zero variance): no t-test")
    else:
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std_d / math.sqrt(n)
        ci_low, ci_high = mean_d - half, mean_d + half
        if test_train_ratio is not None:
            nb_low, nb_high, nb_p = corrected_resampled_t(d, test_train_ratio, confidence)
        if n >= min_t_test:
            t_p = float(sps.ttest_rel(xb, xa).pvalue)
        else:
            nb_p = nan
            notes.append(too_few_for_p(n, min_t_test))
    if n >= 2:
        if n < min_wilcoxon:
            notes.append(f"n = {n} < {min_wilcoxon}: no Wilcoxon test")
        elif not np.any(np.abs(d) > 1e-12):
            notes.append("all differences zero: no Wilcoxon test")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns about zeros / ties and switches to the normal approximation
                w_p = float(sps.wilcoxon(xb, xa).pvalue)
    return PairedStats(n, float(xa.mean()), float(xb.mean()), mean_d, std_d, ci_low, ci_high, t_p, w_p, "; ".join(notes),
                       nb_low, nb_high, nb_p)


def fmt(value: float | int | None, digits: int = 4) -> str:
    """A number for a table: NaN / None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_p(p: float) -> str:
    """A p-value: ``n/a``, ``<0.001`` or three decimals."""
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_test_p(p: float, stats: PairedStats) -> str:
    """A t-test p-value of ``stats`` for a table: ``n < 5`` where too few pairs withheld it, else :func:`fmt_p`."""
    if math.isnan(p) and "n too small for a p-value" in stats.note:
        return f"n < {MIN_T_TEST}"
    return fmt_p(p)


def fmt_mean_std(s: Summary, digits: int = 4) -> str:
    """``mean ± std`` (only the mean when std is undefined, i.e. a single run)."""
    if s.n == 0:
        return "n/a"
    return fmt(s.mean, digits) if math.isnan(s.std) else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"
