"""phases.evaluation.stats: intervals and paired tests against answers worked out by hand."""

import math

import numpy as np
import pytest

from finetune_assets.phases.evaluation import stats


@pytest.mark.parametrize(
    ("k", "low", "high"),
    [
        # z = 1.959964, n = 10: center = (k + z^2/2) / (n + z^2), half = z sqrt(k(n-k)/n + z^2/4) / (n + z^2)
        (0, 0.0, 0.277533),
        (5, 0.236593, 0.763407),
        (10, 0.722467, 1.0),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k, low, high):
    iv = stats.wilson_interval(k, 10)
    assert iv.value == k / 10 and iv.n == 10 and iv.method == "wilson"
    assert iv.low == pytest.approx(low, abs=1e-6) and iv.high == pytest.approx(high, abs=1e-6)


def test_wilson_interval_edges():
    assert math.isnan(stats.wilson_interval(0, 0).value)
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)
    assert stats.wilson_interval(50, 100, confidence=0.99).low < stats.wilson_interval(50, 100).low


def test_mcnemar_exact_on_a_known_table():
    # 1 item only a got right, 9 only b got right, 5 both, 5 neither: p = 2 * (C(10,0) + C(10,1)) / 2^10
    a = [1] * 1 + [0] * 9 + [1] * 5 + [0] * 5
    b = [0] * 1 + [1] * 9 + [1] * 5 + [0] * 5
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 * 11 / 1024)
    assert stats.mcnemar_exact(b, a) == pytest.approx(2 * 11 / 1024)  # two-sided: symmetric
    assert stats.mcnemar_exact([1, 0], [1, 0]) == 1.0  # no discordant pair
    assert stats.mcnemar_exact([1, 0, 1], [0, 1, 1]) == 1.0  # a 1-1 split: capped at 1


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    samples = [rng.normal(loc=0.4, scale=0.2, size=40) for _ in range(200)]
    hits = [
        iv.low < 0.4 < iv.high for iv in (stats.bootstrap_mean_interval(s, n_resamples=500) for s in samples)
    ]
    assert 0.88 <= sum(hits) / len(hits) <= 0.99  # percentile bootstrap at n=40 runs a little under 95 %


def test_bootstrap_interval_narrows_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (30, 300, 3000):
        iv = stats.bootstrap_mean_interval(rng.normal(loc=0.4, scale=0.2, size=n), n_resamples=2000, seed=0)
        assert iv.low < iv.value < iv.high and iv.method == "bootstrap" and iv.n == n
        widths.append(iv.high - iv.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(math.sqrt(10), rel=0.25)  # ~ 1/sqrt(n)


def test_bootstrap_interval_is_seeded():
    values = [0.1, 0.5, 0.2, 0.9, 0.3]
    assert stats.bootstrap_mean_interval(values, seed=3) == stats.bootstrap_mean_interval(values, seed=3)
    one = stats.bootstrap_mean_interval([0.7])
    assert (one.value, one.low, one.high, one.method) == (0.7, 0.7, 0.7, "none")


def test_interval_picks_wilson_for_rates_and_bootstrap_for_means():
    assert stats.interval([1, 0, 1, 1]).method == "wilson"
    assert stats.interval([0.2, 0.5, 1.0]).method == "bootstrap"


def test_paired_diff_of_identical_vectors_is_zero_and_not_significant():
    rates = [1, 0, 1, 1, 0, 0, 1, 0] * 5
    same = stats.compare_paired(rates, rates)
    assert same.diff == 0.0 and same.p_value == 1.0 and not same.significant and same.method == "mcnemar"
    scores = [0.1, 0.4, 0.35, 0.8, 0.2] * 4
    cont = stats.compare_paired(scores, scores)
    assert cont.diff == 0.0 and not cont.significant and cont.method == "paired_bootstrap"


def test_a_clearly_better_vector_is_significant_a_slightly_better_one_is_not():
    base = [0] * 40 + [1] * 20  # 60 items, 20 right
    better = [1] * 30 + [0] * 10 + [1] * 20  # 30 more right, none lost
    diff = stats.compare_paired(better, base)
    assert diff.diff == pytest.approx(0.5) and diff.significant and diff.p_value < 1e-6
    assert 0 < diff.low < 0.5 < diff.high
    slightly = [1] * 2 + [0] * 38 + [1] * 19 + [0]  # 2 gained, 1 lost
    small = stats.compare_paired(slightly, base)
    assert small.diff == pytest.approx(1 / 60) and not small.significant and small.low <= 0 <= small.high
    # continuous scores: a constant shift of +0.2 on noisy items
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.6, size=50)
    shifted = stats.compare_paired(scores + 0.2, scores)
    assert shifted.significant and shifted.diff == pytest.approx(0.2) and shifted.method == "paired_bootstrap"
    worse = stats.compare_paired(scores, scores + 0.2)
    assert worse.significant and worse.diff == pytest.approx(-0.2) and worse.high < 0


def test_paired_vectors_must_have_the_same_length():
    with pytest.raises(ValueError):
        stats.compare_paired([1, 0], [1])
    empty = stats.compare_paired([], [])
    assert empty.n == 0 and not empty.significant


@pytest.mark.parametrize("n", [1, 3, 7, 10, 49, 300])
def test_wilson_bounds_are_exact_at_the_edges(n):
    assert stats.wilson_interval(0, n).low == 0.0 and stats.wilson_interval(n, n).high == 1.0
    for k in range(n + 1):
        iv = stats.wilson_interval(k, n)
        assert 0.0 <= iv.low <= iv.value <= iv.high <= 1.0
