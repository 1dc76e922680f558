"""Intervals for the compare report: a Student-t interval over seeds and a paired bootstrap over
(client x seed) differences, both at 95% and reproducible (fixed resampling seed)."""

from __future__ import annotations

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 10_000


def t_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t interval; no half-width from a single value."""
    if not values:
        raise ValueError("t_interval: no values")
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x[0]), None
    sem = x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * sem)


def paired_bootstrap(differences: list[float], resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired differences and the 95% percentile interval of the mean over ``resamples``
    resamples of the pairs (numpy default_rng(seed), so a report reproduces)."""
    if not differences:
        raise ValueError("paired_bootstrap: no differences")
    d = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(d.mean()), float(lo), float(hi)
