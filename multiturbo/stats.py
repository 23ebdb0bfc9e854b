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
- :func:`item_paired_difference`: two classifiers on the same test items (one split, one seed):
  the difference B - A in WA, UA and F1 with a 95 % percentile paired bootstrap interval over
  the items, and the exact McNemar p-value for WA. It measures only which test items were drawn,
  not the noise of training (seeds) or of the split.
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


ITEM_METRICS = ("wa", "ua", "f1")  # the metrics of an item-level comparison (multiturbo.metrics computes them)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_BLOCK_CELLS = 2_000_000  # resamples x items scored at once: bounds the memory of long test splits


@dataclass(frozen=True)
class ItemPairedStats:
    """Classifier B against A on one metric over the same ``n`` items: ``diff`` = value_b - value_a,
    its percentile bootstrap interval over items, and (WA only, else NaN) the exact McNemar p-value
    with the discordant counts ``b_only`` (B right, A wrong) and ``a_only`` (A right, B wrong)."""

    metric: str
    n: int
    value_a: float
    value_b: float
    diff: float
    ci_low: float
    ci_high: float
    mcnemar_p: float = math.nan
    b_only: int | None = None
    a_only: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar test of paired correctness [N] (bool): the binomial test of the
    discordant items (B right and A wrong among all discordant, against 1/2). Returns
    (p, b_only, a_only); p = 1 when no item is discordant."""
    b_only = int(np.sum(correct_b & ~correct_a))
    a_only = int(np.sum(correct_a & ~correct_b))
    if b_only + a_only == 0:
        return 1.0, b_only, a_only
    return float(_sps().binomtest(b_only, b_only + a_only, 0.5).pvalue), b_only, a_only


def _bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] item indices drawn with replacement by a numpy Generator seeded with ``seed``."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _resampled_diffs(labels: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray, num_classes: int, indices: np.ndarray) -> dict[str, np.ndarray]:
    """For each metric of :data:`ITEM_METRICS`, the difference B - A on each resample: [resamples].
    The same indices serve A and B (a paired bootstrap); rows are scored in blocks of bounded size."""
    import torch

    from .metrics import METRIC_FUNCTIONS

    y, a, b = (torch.from_numpy(x.astype(np.int64)) for x in (labels, preds_a, preds_b))
    block = max(1, BOOTSTRAP_BLOCK_CELLS // max(1, indices.shape[1]))
    out: dict[str, list[np.ndarray]] = {m: [] for m in ITEM_METRICS}
    for start in range(0, indices.shape[0], block):
        idx = torch.from_numpy(indices[start:start + block])
        y_rows, a_rows, b_rows = y[idx], a[idx], b[idx]
        for m in ITEM_METRICS:
            score = METRIC_FUNCTIONS[m]
            out[m].append((score(b_rows, y_rows, num_classes, rows=True) - score(a_rows, y_rows, num_classes, rows=True)).double().numpy())
    return {m: np.concatenate(parts) for m, parts in out.items()}


def _check_item_arrays(labels: Sequence[int], preds_a: Sequence[int], preds_b: Sequence[int], num_classes: int) -> tuple[np.ndarray, ...]:
    """The three arrays as int64 [N], checked: the same length, at least one item, labels in 0..C-1."""
    y, a, b = (np.asarray(x, dtype=np.int64).reshape(-1) for x in (labels, preds_a, preds_b))
    if not (y.size == a.size == b.size):
        raise ValueError(f"labels and both predictions must have one entry per item, got {y.size}, {a.size} and {b.size}")
    if y.size == 0:
        raise ValueError("an item-level comparison needs at least one item, got none")
    for name, x in (("labels", y), ("predictions A", a), ("predictions B", b)):
        if x.min() < 0 or x.max() >= num_classes:
            raise ValueError(f"{name} must be class indices in 0..{num_classes - 1}, got values from {x.min()} to {x.max()}")
    return y, a, b


def item_paired_difference(
    labels: Sequence[int], preds_a: Sequence[int], preds_b: Sequence[int], num_classes: int, *,
    confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> dict[str, ItemPairedStats]:
    """Classifier B against classifier A on the same items: ``labels``, ``preds_a``, ``preds_b``
    are class indices [N] (item i is the same item in all three).

    For each of WA, UA and F1 (:data:`ITEM_METRICS`, computed by :mod:`multiturbo.metrics`):
    the difference B - A on the N items and its ``confidence`` percentile interval from a paired
    bootstrap over items (``resamples`` draws of N item indices with replacement, the same indices
    for A and B, from a numpy Generator seeded with ``seed``: deterministic). WA also gets the exact
    McNemar p-value (:func:`mcnemar_exact`). Returns {metric: ItemPairedStats}.

    The interval covers only the sampling of the test items: not the noise of training (another
    seed) nor of the split (another fold), so it is a lower bound on the uncertainty of B - A."""
    import torch

    from .metrics import METRIC_FUNCTIONS

    y, a, b = _check_item_arrays(labels, preds_a, preds_b, num_classes)
    diffs = _resampled_diffs(y, a, b, num_classes, _bootstrap_indices(y.size, resamples, seed))
    tail = (1 - confidence) / 2
    y_t, a_t, b_t = (torch.from_numpy(x) for x in (y, a, b))
    p, b_only, a_only = mcnemar_exact(a == y, b == y)
    out = {}
    for m in ITEM_METRICS:
        value_a, value_b = METRIC_FUNCTIONS[m](a_t, y_t, num_classes), METRIC_FUNCTIONS[m](b_t, y_t, num_classes)
        low, high = np.quantile(diffs[m], [tail, 1 - tail])
        wa = m == "wa"
        out[m] = ItemPairedStats(m, int(y.size), value_a, value_b, value_b - value_a, float(low), float(high),
                                 p if wa else math.nan, b_only if wa else None, a_only if wa else None)
    return out


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
