"""Uncertainty of evaluation numbers: intervals for one variant's metric and tests of paired differences.

Every metric of the scorecard is a mean over items (a rate is a mean of 0/1 outcomes), and every variant is
scored on the same items, so two variants are compared item by item (paired), which is far more sensitive
than comparing two intervals.

- ``wilson_interval``: a rate k of n (good at 0/n and n/n, where the normal interval collapses);
- ``bootstrap_mean_interval``: percentile bootstrap of a mean over items (seeded);
- ``paired_bootstrap``: the difference of two means on the same items, resampling items;
- ``mcnemar_exact``: paired right/wrong items, two-sided exact binomial p on the discordant pairs;
- ``compare_paired``: McNemar + a paired bootstrap interval for 0/1 items, the paired bootstrap otherwise.

Pure Python + numpy; no scipy (the binomial tail is summed with math.comb).
"""

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A metric's value with a confidence interval [low, high] over ``n`` items."""

    value: float
    low: float
    high: float
    n: int
    method: str  # "wilson" | "bootstrap" | "none" (fewer than two items: low = high = value)
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) - mean(b) on the ``n`` items both were scored on, with its interval and a two-sided p."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    method: str  # "mcnemar" | "paired_bootstrap" | "none"
    significant: bool  # p < alpha and the interval excludes 0
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def is_binary(values) -> bool:
    """Every value is 0 or 1 (a right/wrong item)."""
    return all(float(v) in (0.0, 1.0) for v in values)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of the rate k/n; n = 0 gives nan bounds."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson", confidence)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is not between 0 and n={n}")
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact at the edges: 0/n has low 0 and n/n high 1 (rounding would leave 1e-17 on the wrong side).
    low = 0.0 if k == 0 else min(p, center - half)
    high = 1.0 if k == n else max(p, center + half)
    return Interval(p, low, high, n, "wilson", confidence)


def _resample_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_mean_interval(
    values, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (items resampled with replacement)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "bootstrap", confidence)
    mean = float(arr.mean())
    if arr.size < 2:
        return Interval(mean, mean, mean, int(arr.size), "none", confidence)
    means = _resample_means(arr, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(low), float(high), int(arr.size), "bootstrap", confidence)


def interval(
    values, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Wilson for 0/1 items, the bootstrap of the mean for anything else."""
    values = [float(v) for v in values]
    if values and is_binary(values):
        return wilson_interval(int(sum(values)), len(values), confidence)
    return bootstrap_mean_interval(values, confidence, n_resamples, seed)


def _paired_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired vectors differ in length: {a_arr.size} vs {b_arr.size}")
    return a_arr, b_arr


def _bootstrap_diff(
    d: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float, float]:
    """(low, high, two-sided p) of the mean of the per-item differences ``d``."""
    means = _resample_means(d, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    # How often the resampled mean falls on the other side of 0 (ties count for both sides).
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1))
    return float(low), float(high), p


def _significant(p: float, low: float, high: float, alpha: float) -> bool:
    return bool(p < alpha and not (low <= 0.0 <= high))


def paired_bootstrap(
    a, b, alpha: float = 0.05, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> PairedDiff:
    """mean(a) - mean(b) over paired items, with a (1 - alpha) percentile interval from resampling items and
    a two-sided bootstrap p (share of resampled differences on the other side of 0, doubled)."""
    a_arr, b_arr = _paired_arrays(a, b)
    n, confidence = int(a_arr.size), 1 - alpha
    if n == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 1.0, 0, "none", False, confidence)
    d = a_arr - b_arr
    diff = float(d.mean())
    if n < 2 or not d.any():
        return PairedDiff(diff, diff, diff, 1.0, n, "paired_bootstrap", False, confidence)
    low, high, p = _bootstrap_diff(d, confidence, n_resamples, seed)
    return PairedDiff(
        diff, low, high, p, n, "paired_bootstrap", _significant(p, low, high, alpha), confidence
    )


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar p for paired 0/1 outcomes: under H0 the discordant pairs split 50/50, so
    p = 2 * P(Binomial(n_discordant, 1/2) <= min(only_a, only_b)), capped at 1; 1.0 without discordant pairs."""
    a_arr, b_arr = _paired_arrays(a, b)
    only_a = int(((a_arr == 1) & (b_arr == 0)).sum())
    only_b = int(((a_arr == 0) & (b_arr == 1)).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_paired(
    a, b, alpha: float = 0.05, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> PairedDiff:
    """mean(a) - mean(b) on paired items: for 0/1 items the exact McNemar p with a paired bootstrap interval,
    otherwise the paired bootstrap's own p and interval. Significant = p < alpha and 0 outside the interval."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    boot = paired_bootstrap(a, b, alpha, n_resamples, seed)
    if not a or not (is_binary(a) and is_binary(b)):
        return boot
    p = mcnemar_exact(a, b)
    significant = _significant(p, boot.low, boot.high, alpha)
    return PairedDiff(boot.diff, boot.low, boot.high, p, boot.n, "mcnemar", significant, boot.confidence)


# Live traffic (phases.serving.ab_report) is not paired: each variant answers other users' requests.


def two_proportions(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float = 0.05) -> PairedDiff:
    """k_a/n_a - k_b/n_b for two independent samples: Newcombe's hybrid score interval (from the two Wilson
    intervals) and the pooled two-proportion z test's two-sided p. ``n`` is n_a + n_b."""
    confidence = 1 - alpha
    if n_a <= 0 or n_b <= 0:
        return PairedDiff(
            math.nan, math.nan, math.nan, 1.0, max(n_a, 0) + max(n_b, 0), "none", False, confidence
        )
    a, b = wilson_interval(k_a, n_a, confidence), wilson_interval(k_b, n_b, confidence)
    diff = a.value - b.value
    low = diff - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = diff + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p = 1.0 if se == 0 else min(1.0, 2 * (1 - NormalDist().cdf(abs(diff) / se)))
    return PairedDiff(
        diff, low, high, p, n_a + n_b, "newcombe", _significant(p, low, high, alpha), confidence
    )


def quantile_interval(
    values, q: float, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """The ``q`` quantile (0..1) of ``values`` with a percentile-bootstrap interval (a latency p95)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "bootstrap", confidence)
    value = float(np.quantile(arr, q))
    if arr.size < 2:
        return Interval(value, value, value, int(arr.size), "none", confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    resampled = np.quantile(arr[idx], q, axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(value, float(low), float(high), int(arr.size), "bootstrap", confidence)


def bootstrap_diff_of_quantiles(
    a, b, q: float, alpha: float = 0.05, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> PairedDiff:
    """quantile_q(a) - quantile_q(b) for two independent samples: each resampled on its own; the interval
    and a two-sided p from the resampled differences."""
    a_arr, b_arr = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    confidence, n = 1 - alpha, int(a_arr.size + b_arr.size)
    if a_arr.size < 2 or b_arr.size < 2:
        return PairedDiff(math.nan, math.nan, math.nan, 1.0, n, "none", False, confidence)
    diff = float(np.quantile(a_arr, q) - np.quantile(b_arr, q))
    rng = np.random.default_rng(seed)
    da = np.quantile(a_arr[rng.integers(0, a_arr.size, size=(n_resamples, a_arr.size))], q, axis=1)
    db = np.quantile(b_arr[rng.integers(0, b_arr.size, size=(n_resamples, b_arr.size))], q, axis=1)
    d = da - db
    tail = alpha / 2 * 100
    low, high = (float(x) for x in np.percentile(d, [tail, 100 - tail]))
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (n_resamples + 1))
    return PairedDiff(diff, low, high, p, n, "bootstrap", _significant(p, low, high, alpha), confidence)
