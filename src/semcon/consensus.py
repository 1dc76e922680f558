"""Consensus rules: pure functions over embedding arrays (no torch, no transport).

Semantic medoid: c(p) = argmax_i Σ_j cos(e_i, e_j). With unit vectors Σ_j e_i·e_j = e_i·(Σ_j e_j), so
all prompts take one batched product with their centroid: the medoid is the answer nearest the centroid.
The competence-aware rules (``weighted_medoid``, ``gated``) read one number per answer that its client
computed from its own data; ``rank_normalize`` and ``supported`` bound what a client that lies about it
can take. ``oracle`` is a measurement bound, never a deployment. Two defences against adversarial members
change whose votes count: ``votes`` (each client's reputation, ``update_reputation``) and ``merge`` (near-
identical answers of different clients count as one voter, against sybils).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


TIE_TOLERANCE = 1e-5  # per answer summed over
COPY = 0.995  # cosine at which two clients' answers count as copies of one text (sybil_merge, reputation)


@dataclass(frozen=True)
class Consensus:
    choice: np.ndarray  # [P] chosen client index per prompt, -1 where no pseudo-label is given
    agreement: np.ndarray  # [P] mean cosine of the chosen answer to the other valid answers (nan if none)
    valid_count: np.ndarray  # [P] answers that took part


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def semantic_medoid(emb: np.ndarray, valid: np.ndarray | None = None, threshold: float | None = None, *,
                    text_ids: np.ndarray | None = None, confidence: np.ndarray | None = None,
                    tie_seed: tuple[int, ...] = (0,), votes: np.ndarray | None = None,
                    merge: float | None = None) -> Consensus:
    """Medoid per prompt over ``emb`` [prompts, clients, dim] (unit rows), ignoring invalid answers.

    Ties (within float32 rounding) between identical texts (same ``text_ids``; without them, the same
    embedding) go to the lowest client index;
    ties between different texts (always the case with two clients) go to the highest ``confidence``
    [prompts, clients] (mean token log-prob, nan when unknown), else to a random text drawn with
    ``tie_seed`` + the prompt index: never to a fixed client. With ``threshold`` τ, a prompt whose best mean
    similarity to the others is below τ gets no pseudo-label (choice -1). ``votes`` and ``merge``: see
    ``voted_scores``.
    """
    p, n, _ = emb.shape
    valid = np.ones((p, n), dtype=bool) if valid is None else valid.astype(bool)
    if n == 0:  # every upload was rejected
        return Consensus(np.full(p, -1), np.full(p, np.nan), np.zeros(p, dtype=int))
    if votes is not None or merge is not None:
        scores = voted_scores(emb, valid, votes, merge)
    else:
        e = emb if valid.all() else np.where(valid[..., None], emb, 0)
        # Σ_j e_i·e_j over valid j, minus the self term e_i·e_i: the similarity to the others.
        scores = np.matmul(e, e.sum(axis=1)[..., None])[..., 0] - np.einsum("pnd,pnd->pn", e, e)
    choice = pick(scores, valid, emb, text_ids, confidence, tie_seed)
    return finish(emb, valid, choice, threshold)


def voted_scores(emb: np.ndarray, valid: np.ndarray, votes: np.ndarray | None = None,
                 merge: float | None = None) -> np.ndarray:
    """The medoid's scores [P, N] with a vote per client: score_i = Σ_{j≠i} v_j cos(e_i, e_j) over valid j. With
    ``merge`` τ, answers at cosine >= τ to each other are copies: they count as one voter (each votes 1/copies)
    and give no vote to one another, so k sybils sending one text weigh as one client."""
    valid = valid.astype(bool)
    p, n, _ = emb.shape
    e = np.where(valid[..., None], emb, 0)
    sims = np.einsum("pid,pjd->pij", e, e)
    voters = valid[:, None, :] & ~np.eye(n, dtype=bool)[None]
    weight = np.ones((p, n)) if votes is None else np.broadcast_to(votes, (p, n)).astype(float)
    if merge is not None:
        same = (sims >= merge) & valid[:, None, :] & valid[:, :, None]
        weight = weight / np.maximum(same.sum(axis=2), 1)
        voters &= ~same
    return np.einsum("pij,pj->pi", np.where(voters, sims, 0.0), weight)


def copy_weights(emb: np.ndarray, valid: np.ndarray, merge: float) -> np.ndarray:
    """[P, N]: 1 / (the number of valid answers at cosine >= ``merge`` to each valid answer, itself included)."""
    e = np.where(valid[..., None], emb, 0)
    same = (np.einsum("pid,pjd->pij", e, e) >= merge) & valid[:, None, :] & valid[:, :, None]
    return np.where(valid, 1.0 / np.maximum(same.sum(axis=2), 1), 0.0)


def agreement_with_others(emb: np.ndarray, valid: np.ndarray, reputation: np.ndarray, copy: float = COPY
                          ) -> np.ndarray:
    """[N]: each client's mean cosine to the reputation-weighted centroid of the other clients' valid answers,
    over the prompts it answered; answers that are copies of its own (cosine >= ``copy``) are left out, so agreeing
    with a copy of oneself earns nothing. nan for a client with no such prompt."""
    valid = valid.astype(bool)
    n = emb.shape[1]
    e = np.where(valid[..., None], emb, 0)
    sims = np.einsum("pid,pjd->pij", e, e)
    others = valid[:, None, :] & valid[:, :, None] & ~np.eye(n, dtype=bool)[None] & (sims < copy)
    w = np.where(others, reputation[None, None, :], 0.0)
    total = w.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_prompt = np.where(total > 0, (w * sims).sum(axis=2) / total, np.nan)  # [P, N]
        counted = np.isfinite(per_prompt)
        return np.where(counted.any(axis=0), np.nansum(per_prompt, axis=0) / np.maximum(counted.sum(axis=0), 1), np.nan)


def update_reputation(reputation: np.ndarray, agreement: np.ndarray, beta: float) -> np.ndarray:
    """One round of reputation [N] in (0, 1]: each client's weight decays by exp(-β · d) with d its distance to
    the consensus (1 - ``agreement``) beyond the closest client's, then all are scaled so the best is 1. A client
    without evidence this round (nan) keeps its weight."""
    distance = 1.0 - agreement
    known = np.isfinite(distance)
    if not known.any():
        return reputation.copy()
    new = np.where(known, reputation * np.exp(-beta * (np.where(known, distance, 0) - distance[known].min())),
                   reputation)
    return np.maximum(new / new.max(), 1e-6)


def weighted_medoid(emb: np.ndarray, valid: np.ndarray, competence: np.ndarray, temperature: float, *,
                    threshold: float | None = None, text_ids: np.ndarray | None = None,
                    confidence: np.ndarray | None = None, tie_seed: tuple[int, ...] = (0,),
                    votes: np.ndarray | None = None, merge: float | None = None) -> Consensus:
    """Minimum Bayes risk with a prior: c(p) = argmax_i Σ_j w_j cos(e_i, e_j), the own term included, with vote
    weights w = softmax(competence / T) over the prompt's valid answers. Equal competence is the plain medoid;
    as T → 0 the most competent client's answer wins unless the others agree with it anyway. ``votes`` scale
    the weights; with ``merge``, copies share one weight (``copy_weights``)."""
    p, n, _ = emb.shape
    valid = valid.astype(bool)
    if n == 0:
        return Consensus(np.full(p, -1), np.full(p, np.nan), np.zeros(p, dtype=int))
    logits = np.where(valid, competence / temperature, -np.inf)
    logits = logits - np.where(valid.any(axis=1, keepdims=True), logits.max(axis=1, keepdims=True), 0)
    weights = np.where(valid, np.exp(logits), 0.0)
    if votes is not None:
        weights = weights * votes
    if merge is not None:
        weights = weights * copy_weights(emb, valid, merge)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)
    e = np.where(valid[..., None], emb, 0)
    scores = np.einsum("pnd,pd->pn", e, np.einsum("pn,pnd->pd", weights, e))
    return finish(emb, valid, pick(scores, valid, emb, text_ids, confidence, tie_seed), threshold)


def gated(emb: np.ndarray, valid: np.ndarray, competence: np.ndarray, gate: float, *, fallback: bool = False,
          threshold: float | None = None, text_ids: np.ndarray | None = None, confidence: np.ndarray | None = None,
          tie_seed: tuple[int, ...] = (0,), votes: np.ndarray | None = None, merge: float | None = None
          ) -> Consensus:
    """Selective-FD's rule for texts: only answers whose client's competence is at least ``gate`` are
    candidates, and the medoid runs among them. A prompt no answer passes gets no label, or (``fallback``) the
    medoid of all valid answers."""
    valid = valid.astype(bool)
    passing = valid & (competence >= gate)
    common = {"text_ids": text_ids, "confidence": confidence, "tie_seed": tie_seed, "votes": votes, "merge": merge}
    inner = semantic_medoid(emb, passing, **common)
    choice = inner.choice
    if fallback:
        plain = semantic_medoid(emb, valid, **common)
        choice = np.where(inner.valid_count > 0, choice, plain.choice)
    return finish(emb, valid, choice, threshold)


def oracle(valid: np.ndarray, expert: np.ndarray, emb: np.ndarray) -> Consensus:
    """A measurement bound: the answer of each prompt's ``expert`` [P] (client index, -1: none) where it is
    valid; -1 elsewhere."""
    p = len(expert)
    ok = (expert >= 0) & valid[np.arange(p), np.maximum(expert, 0)] if valid.shape[1] else np.zeros(p, dtype=bool)
    return finish(emb, valid.astype(bool), np.where(ok, expert, -1))


def rank_normalize(competence: np.ndarray) -> np.ndarray:
    """Each client's competence [prompts, clients] as its percentile rank over the round's prompts (mid-ranks
    for ties, in (0, 1)): every client's numbers then average 0.5, so one that claims the top on every prompt
    (all ties) ranks 0.5 everywhere and no client outranks the rest on more than its share of prompts."""
    p = competence.shape[0]
    out = np.empty(competence.shape, dtype=float)
    for i in range(competence.shape[1]):
        column = np.sort(competence[:, i])
        below = np.searchsorted(column, competence[:, i], side="left")
        equal = np.searchsorted(column, competence[:, i], side="right") - below
        out[:, i] = (below + equal / 2) / max(p, 1)
    return out


def supported(emb: np.ndarray, valid: np.ndarray, tau: float) -> np.ndarray:
    """[P, N]: valid answers that agree with at least one other client's valid answer at cosine >= ``tau``."""
    valid = valid.astype(bool)
    e = np.where(valid[..., None], emb, 0)
    sims = np.einsum("pid,pjd->pij", e, e)
    n = emb.shape[1]
    others = valid[:, None, :] & ~np.eye(n, dtype=bool)[None]
    return valid & ((sims >= tau) & others).any(axis=2)


def pick(scores: np.ndarray, valid: np.ndarray, emb: np.ndarray, text_ids: np.ndarray | None,
         confidence: np.ndarray | None, tie_seed: tuple[int, ...]) -> np.ndarray:
    """The valid answer with the highest score per prompt, ties broken as ``semantic_medoid`` says (-1: none)."""
    p, n = scores.shape
    confidence = np.full((p, n), np.nan) if confidence is None else confidence
    scores = np.where(valid, scores, -np.inf)
    best = scores.max(axis=1, keepdims=True)
    tied = valid & (scores >= best - TIE_TOLERANCE * max(n, 1))
    choice = np.argmax(tied, axis=1)
    for k in np.flatnonzero(tied.sum(axis=1) > 1):
        same = text_ids[k] if text_ids is not None else np.unique(emb[k], axis=0, return_inverse=True)[1].ravel()
        choice[k] = break_tie(np.flatnonzero(tied[k]), same, confidence[k], (*tie_seed, int(k)))
    return np.where(valid.any(axis=1), choice, -1)


def finish(emb: np.ndarray, valid: np.ndarray, choice: np.ndarray, threshold: float | None = None) -> Consensus:
    """The consensus of ``choice``: each chosen answer's mean cosine to the other valid answers (1 when it is
    the only one, nan without a choice); with ``threshold`` τ, a choice below it is withdrawn."""
    p = len(choice)
    count = valid.sum(axis=1)
    at = np.maximum(choice, 0)
    e = np.where(valid[..., None], emb, 0)
    chosen = e[np.arange(p), at]  # [P, D]
    others = np.einsum("pnd,pd->p", e, chosen) - np.einsum("pd,pd->p", chosen, chosen)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(count > 1, others / np.maximum(count - 1, 1), 1.0)
    agreement = np.where(choice >= 0, agreement, np.nan)
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
