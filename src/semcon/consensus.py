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


def semantic_medoid(emb: np.ndarray, valid: np.ndarray | None = None, threshold: float | None = None, *,
                    text_ids: np.ndarray | None = None, confidence: np.ndarray | None = None,
                    tie_seed: tuple[int, ...] = (0,)) -> Consensus:
    """Medoid per prompt over ``emb`` [prompts, clients, dim] (unit rows), ignoring invalid answers.

    Ties (within float32 rounding) between identical texts (same ``text_ids``; without them, the same
    embedding) go to the lowest client index;
    ties between different texts (always the case with two clients) go to the highest ``confidence``
    [prompts, clients] (mean token log-prob, nan when unknown), else to a random text drawn with
    ``tie_seed`` + the prompt index: never to a fixed client. With ``threshold`` τ, a prompt whose best mean
    similarity to the others is below τ gets no pseudo-label (choice -1).
    """
    p, n, _ = emb.shape
    valid = np.ones((p, n), dtype=bool) if valid is None else valid.astype(bool)
    if n == 0:  # every upload was rejected
        return Consensus(np.full(p, -1), np.full(p, np.nan), np.zeros(p, dtype=int))
    confidence = np.full((p, n), np.nan) if confidence is None else confidence
    e = emb if valid.all() else np.where(valid[..., None], emb, 0)
    total = e.sum(axis=1)  # [P, D]
    # Σ_j e_i·e_j over valid j, minus the self term e_i·e_i: the similarity to the others.
    scores = np.matmul(e, total[..., None])[..., 0] - np.einsum("pnd,pnd->pn", e, e)
    scores = np.where(valid, scores, -np.inf)
    best = scores.max(axis=1, keepdims=True)
    tied = valid & (scores >= best - TIE_TOLERANCE * max(n, 1))
    choice = np.argmax(tied, axis=1)
    for k in np.flatnonzero(tied.sum(axis=1) > 1):
        same = text_ids[k] if text_ids is not None else np.unique(emb[k], axis=0, return_inverse=True)[1].ravel()
        choice[k] = break_tie(np.flatnonzero(tied[k]), same, confidence[k], (*tie_seed, int(k)))
    count = valid.sum(axis=1)
    best = scores[np.arange(p), choice]
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(count > 1, best / np.maximum(count - 1, 1), np.where(count == 1, 1.0, np.nan))
    choice = np.where(count > 0, choice, -1)
    if threshold is not None:
        choice = np.where((count > 1) & (agreement < threshold), -1, choice)
    return Consensus(choice=choice, agreement=agreement, valid_count=count)


def break_tie(candidates: np.ndarray, text_ids: np.ndarray, confidence: np.ndarray, seed: tuple[int, ...]) -> int:
    """One of the tied ``candidates`` (client indices, ascending): the most confident text when every
    candidate has a confidence, else a seeded random text; a text given by several clients goes to the lowest."""
    conf = confidence[candidates]
    if np.isfinite(conf).all():
        candidates = candidates[conf >= conf.max() - 1e-9]
    texts = np.unique(text_ids[candidates])
    text = texts[np.random.default_rng(seed).integers(len(texts))] if len(texts) > 1 else texts[0]
    return int(candidates[text_ids[candidates] == text][0])


def medoid_loop(emb: np.ndarray) -> np.ndarray:
    """Reference medoid with a Python loop over prompts and pairs (for tests and benchmarks only)."""
    p, n, _ = emb.shape
    out = np.empty(p, dtype=int)
    for k in range(p):
        scores = [sum(float(np.dot(emb[k, i], emb[k, j])) for j in range(n) if j != i) for i in range(n)]
        best = max(scores)
        out[k] = next(i for i, s in enumerate(scores) if s >= best - TIE_TOLERANCE * n)  # the same tie rule
    return out
