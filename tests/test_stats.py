"""The report's intervals on fixed numbers: Student-t over seeds and the two-level bootstrap."""

import math

import pytest

from semcon.studies.stats import budget_to_reach, budget_trend, seed_level, t_interval, two_level_bootstrap


def test_t_interval_of_one_two_three():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_one_seed_has_no_interval():
    assert t_interval([0.7]) == (0.7, None)
    with pytest.raises(ValueError):
        t_interval([])


def test_two_level_bootstrap_of_constant_seeds_spans_the_seed_means():
    # clients within a seed agree, so only the seeds' resampling moves the mean: of [0, 1], 2.5% and 97.5% are 0 and 1
    assert two_level_bootstrap([[0.0, 0.0, 0.0], [1.0, 1.0]]) == (0.0, 1.0)
    assert two_level_bootstrap([[0.5, 0.5]] * 3) == (0.5, 0.5)


def test_two_level_bootstrap_resamples_the_clients_within_a_seed():
    # one seed: only its clients are resampled; means of two draws from [0, 1] run from 0 to 1
    assert two_level_bootstrap([[0.0, 1.0]]) == (0.0, 1.0)
    wide = two_level_bootstrap([[-1.0, 1.0]] * 5)
    narrow = two_level_bootstrap([[0.0, 0.0]] * 5)
    assert wide[0] < 0 < wide[1] and narrow == (0.0, 0.0)


def test_seed_level_difference_is_the_mean_of_seed_means_with_intervals_from_five_seeds():
    by_hand = [float(sum(v) / len(v)) for v in ([0.1, 0.3], [0.2], [0.0, 0.2, 0.4])]
    three = seed_level({0: [0.1, 0.3], 1: [0.2], 2: [0.0, 0.2, 0.4]})
    assert three["seed_means"] == pytest.approx(by_hand) and three["mean"] == pytest.approx(0.2)
    assert three["t"] is None and three["bootstrap"] is None  # fewer than 5 seeds: no interval
    five = seed_level({s: [0.1 * s, 0.1 * s + 0.02] for s in range(5)})
    mean, half = t_interval([0.1 * s + 0.01 for s in range(5)])
    assert five["mean"] == pytest.approx(mean) and five["t"] == pytest.approx((mean - half, mean + half))
    lo, hi = five["bootstrap"]
    assert 0.0 <= lo < mean < hi <= 0.42


def test_budget_trend_recovers_a_curve_and_where_it_reaches_a_target():
    # gain = 0.05 - 0.4/sqrt(m) at m = 64, 256, 576: 0.0, 0.025, 0.0333...
    budgets = [64, 256, 576]
    a, b = budget_trend(budgets, [0.05 - 0.4 / math.sqrt(m) for m in budgets])
    assert (a, b) == (pytest.approx(0.05), pytest.approx(0.4))
    assert budget_to_reach(a, b, 0.04) == pytest.approx((0.4 / 0.01) ** 2)  # 0.05 - 0.4/40 = 0.04 at m = 1600
    assert budget_to_reach(a, b, 0.06) is None  # above the ceiling
    assert budget_to_reach(0.05, -0.1, 0.0) is None  # a trend that falls with the budget never gets there
    assert budget_trend([64, 64], [0.0, 0.1]) is None  # one budget: no trend
