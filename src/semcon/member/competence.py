"""What a client knows about its own competence on each public prompt, from its own data only: the math.

Every signal is calibrated against the client's own data into a share in [0, 1] (the empirical CDF of the
same measurement on its private rows), so that clients with different data and models report on one scale:
0.9 means "more typical of what I was trained on than 90% of my own examples". ``quantize`` coarsens the number
before it leaves the client. The model passes ``gain`` needs live in ``client.py``; these are pure functions.
"""

from __future__ import annotations

import numpy as np


def ecdf(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The share of ``reference`` at or below each of ``values`` (0.5 everywhere without a reference)."""
    reference = np.sort(np.asarray(reference, dtype=float).ravel())
    values = np.asarray(values, dtype=float)
    if not len(reference):
        return np.full(values.shape, 0.5)
    return np.searchsorted(reference, values, side="right") / len(reference)


def knn_similarity(queries: np.ndarray, keys: np.ndarray, k: int, leave_one_out: bool = False) -> np.ndarray:
    """Mean cosine of each of ``queries`` [Q, D] (unit rows) to its ``k`` nearest ``keys`` [K, D];
    ``leave_one_out``: queries are the keys themselves and a row is not its own neighbour."""
    sims = queries @ keys.T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    k = min(k, keys.shape[0] - int(leave_one_out))
    if k <= 0:
        return np.full(len(queries), np.nan)
    top = -np.sort(-sims, axis=1)[:, :k]
    return top.mean(axis=1)


def knn_competence(private: np.ndarray, prompts: np.ndarray, k: int) -> np.ndarray:
    """Selective-FD's signal: how close each public prompt is to the client's private instructions (mean cosine
    to the ``k`` nearest), as the share of its own instructions that are no closer to the rest of its data
    (leave-one-out), so that a prompt like its own data scores about uniformly in [0, 1]."""
    calibration = knn_similarity(private, private, k, leave_one_out=True)
    return ecdf(calibration[np.isfinite(calibration)], knn_similarity(prompts, private, k))


def gain_competence(answer_gain: np.ndarray, private_gain: np.ndarray) -> np.ndarray:
    """How much more the client's adapter than the frozen base model likes each of its answers (mean log-ratio
    per token), as the share of its own private responses it likes no more than that."""
    return ecdf(private_gain, answer_gain)


def quantize(values: np.ndarray, levels: int | None) -> np.ndarray:
    """Round shares in [0, 1] to ``levels`` evenly spaced values (0 and 1 included); None: unchanged."""
    if levels is None:
        return np.asarray(values, dtype=float)
    return np.round(np.clip(values, 0, 1) * (levels - 1)) / (levels - 1)
