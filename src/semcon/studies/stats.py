"""Intervals for the reports, at 95% and reproducible (fixed resampling seed): a Student-t interval over seeds and a
two-level bootstrap (seeds, then clients within a seed). The seed is the replicate: the clients of one seed share one
label set, so they are not independent, and no interval is taken over client-seed pairs."""

from __future__ import annotations

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 10_000
MIN_SEEDS = 5  # with fewer seeds a difference prints its values and claims no interval


def t_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t interval; no half-width from a single value."""
    if not values:
        raise ValueError("t_interval: no values")
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x[0]), None
    sem = x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * sem)


def two_level_bootstrap(groups: list[list[float]], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of group means, resampling the groups (seeds) and then the values
    (clients) within each drawn group, each with replacement (numpy default_rng(seed))."""
    if not groups or not all(groups):
        raise ValueError("two_level_bootstrap: every group needs a value")
    counts = np.array([len(g) for g in groups])
    padded = np.zeros((len(groups), counts.max()))
    for k, g in enumerate(groups):
        padded[k, :len(g)] = g
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(groups), size=(resamples, len(groups)))  # [R, S]
    n = counts[drawn]  # [R, S]
    within = (rng.random((resamples, len(groups), counts.max())) * n[..., None]).astype(int)  # [R, S, C]
    used = np.arange(counts.max()) < n[..., None]
    means = ((padded[drawn[..., None], within] * used).sum(-1) / n).mean(-1)
    lo, hi = np.percentile(means, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def seed_level(per_seed: dict[int, list[float]]) -> dict:
    """A paired difference with the seed as the replicate: each seed's mean over its clients, their mean, and,
    from ``MIN_SEEDS`` seeds on, the t-interval over the seed means and the two-level bootstrap interval (None
    below that: too few replicates to claim one)."""
    seeds = sorted(per_seed)
    means = [float(np.mean(per_seed[s])) for s in seeds]
    out = {"seeds": seeds, "seed_means": means, "mean": float(np.mean(means)), "t": None, "bootstrap": None}
    if len(seeds) >= MIN_SEEDS:
        mean, half = t_interval(means)
        out["t"] = (mean - half, mean + half)
        out["bootstrap"] = two_level_bootstrap([list(per_seed[s]) for s in seeds])
    return out


def budget_trend(budgets: list[float], gains: list[float]) -> tuple[float, float] | None:
    """Least-squares fit of gain(m) = a − b/√m over public budgets m (prompts a round), the form in which a bound on
    federated distillation shrinks with the public budget (FPLD, arXiv 2605.29642): (a, b), or None below two
    distinct budgets. An extrapolation's basis, not a measurement."""
    if len(set(budgets)) < 2:
        return None
    slope, a = np.polyfit(1 / np.sqrt(np.asarray(budgets, dtype=float)), np.asarray(gains, dtype=float), 1)
    return float(a), float(-slope)


def budget_to_reach(a: float, b: float, target: float) -> float | None:
    """The budget m at which a − b/√m reaches target; None where the trend never does (its ceiling a is not above
    target, or it does not rise with the budget)."""
    return (b / (a - target)) ** 2 if a > target and b > 0 else None
