"""The report's intervals on fixed numbers: Student-t over seeds and the paired bootstrap."""

import math

import pytest

from semcon.stats import paired_bootstrap, t_interval


def test_t_interval_of_one_two_three():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_one_seed_has_no_interval():
    assert t_interval([0.7]) == (0.7, None)
    with pytest.raises(ValueError):
        t_interval([])


def test_bootstrap_of_constant_differences_has_zero_width():
    assert paired_bootstrap([-0.25] * 6) == pytest.approx((-0.25, -0.25, -0.25))


def test_bootstrap_of_two_pairs_spans_both_and_reproduces():
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% are 0 and 1.
    assert paired_bootstrap([0.0, 1.0]) == (0.5, 0.0, 1.0)
    assert paired_bootstrap([0.1, 0.4, 0.2, 0.9]) == paired_bootstrap([0.1, 0.4, 0.2, 0.9])
