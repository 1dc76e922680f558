"""Consensus rules: pure functions over embedding arrays (no torch, no transport).

Semantic medoid: c(p) = argmax_i Σ_j cos(e_i, e_j). With unit vectors Σ_j e_i·e_j = e_i·(Σ_j e_j), so
all prompts take one batched product with their centroid: the medoid is the answer nearest the centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


TIE_TOLERANCE = 1e-5  # per answer summed over


@dataclass(frozen=True)
class Consensus:
    choice: np.ndarray  # [P] chosen client index per prompt, -1 where no pseudo-label is given
    agreement: np.ndarray  # [P] mean cosine of the chosen answer to the other valid answers (nan if none)
    valid_count: np.ndarray  # [P] answers that took part


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def semantic_medoid(emb: np.ndarray, valid: np.ndarray | None = None, threshold: float | None = None) -> Consensus:
    """Medoid per prompt over ``emb`` [prompts, clients, dim] (unit rows), ignoring invalid answers.

    Ties go to the lowest client index (``argmax`` returns the first maximum). With ``threshold`` τ, a
    prompt whose best mean similarity to the others is below τ gets no pseudo-label (choice -1).
    """
    p, n, _ = emb.shape
    valid = np.ones((p, n), dtype=bool) if valid is None else valid.astype(bool)
    if n == 0:  # every upload was rejected
        return Consensus(np.full(p, -1), np.full(p, np.nan), np.zeros(p, dtype=int))
    e = emb if valid.all() else np.where(valid[..., None], emb, 0)
    total = e.sum(axis=1)  # [P, D]
    # Σ_j e_i·e_j over valid j, minus the self term e_i·e_i: the similarity to the others.
    scores = np.matmul(e, total[..., None])[..., 0] - np.einsum("pnd,pnd->pn", e, e)
    scores = np.where(valid, scores, -np.inf)
    # Ties (within float32 rounding, as for identical texts) go to the lowest index.
    best = scores.max(axis=1, keepdims=True)
    choice = np.argmax(scores >= best - TIE_TOLERANCE * max(n, 1), axis=1)
    count = valid.sum(axis=1)
    best = scores[np.arange(p), choice]
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(count > 1, best / np.maximum(count - 1, 1), np.where(count == 1, 1.0, np.nan))
    choice = np.where(count > 0, choice, -1)
    if threshold is not None:
        choice = np.where((count > 1) & (agreement < threshold), -1, choice)
    return Consensus(choice=choice, agreement=agreement, valid_count=count)


def medoid_loop(emb: np.ndarray) -> np.ndarray:
    """Reference medoid with a Python loop over prompts and pairs (for tests and benchmarks only)."""
    p, n, _ = emb.shape
    out = np.empty(p, dtype=int)
    for k in range(p):
        scores = [sum(float(np.dot(emb[k, i], emb[k, j])) for j in range(n) if j != i) for i in range(n)]
        best = max(scores)
        out[k] = next(i for i, s in enumerate(scores) if s >= best - TIE_TOLERANCE * n)  # the same tie rule
    return out
