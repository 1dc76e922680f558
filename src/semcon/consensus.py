"""Consensus rules: pure functions over embedding arrays (no torch, no transport).

One round's candidate answers are a ``Round``: arrays over [prompts P, clients N], their pairwise cosines computed
once. A rule is a function of the arrays it names (any of ``ROUND_ARRAYS``) and of the consensus settings it names
after ``*`` (``gate``, ``temperature``); it returns a ``Ballot``: which answers may become the pseudo-label, and how
much each answer's vote weighs. Defences rescale the votes (``reputation``, ``merge_copies``). ``select`` does the
rest once for every rule: each eligible answer's score Σ_j w_j cos(e_i, e_j) over the other voters (or all of them,
``own_vote``), the tie-break, the threshold and the fallback. Adding a rule is one function and one line in
``RULES``; a user's own rule is the same function, named in the config as ``package.module:function``.

The semantic medoid c(p) = argmax_i Σ_{j≠i} cos(e_i, e_j) is the rule ``medoid``: every candidate eligible, every
vote 1. The competence-aware rules read one number per answer that its client computed from its own data;
``rank_normalize`` and ``supported`` bound what a client that lies about it can take. ``oracle_expert`` is a
measurement bound, never a deployment.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np


TIE_TOLERANCE = 1e-5  # per answer summed over
COPY = 0.995  # cosine at which two clients' answers count as copies of one text (sybil_merge, reputation)
ROUND_ARRAYS = ("valid", "sims", "emb", "competence", "confidence", "text_ids", "expert")  # what a rule may read


@dataclass(frozen=True)
class Round:
    """One round's candidate answers, as every rule sees them."""

    emb: np.ndarray  # [P, N, D] unit rows, zero where not a candidate
    valid: np.ndarray  # [P, N] the candidates (answers that may become a pseudo-label)
    sims: np.ndarray  # [P, N, N] cosine between candidates, 0 where either is not one
    text_ids: np.ndarray | None = None  # [P, N] equal ids: identical texts (None: equal embeddings)
    confidence: np.ndarray | None = None  # [P, N] mean token log-prob as sent (nan: not sent)
    competence: np.ndarray | None = None  # [P, N] the signal the rule reads, as the server compares it
    expert: np.ndarray | None = None  # [P] each prompt's expert client (-1: none), for the measurement bound

    @classmethod
    def of(cls, emb: np.ndarray, valid: np.ndarray | None = None, **arrays) -> Round:
        valid = np.ones(emb.shape[:2], dtype=bool) if valid is None else valid.astype(bool)
        e = np.where(valid[..., None], emb, 0).astype(emb.dtype)
        return cls(e, valid, np.einsum("pid,pjd->pij", e, e), **arrays)

    def only(self, valid: np.ndarray) -> Round:
        """The same round with fewer candidates (a defence's filter), without computing the cosines again."""
        valid = valid & self.valid
        pair = valid[:, :, None] & valid[:, None, :]
        return replace(self, emb=np.where(valid[..., None], self.emb, 0).astype(self.emb.dtype), valid=valid,
                       sims=np.where(pair, self.sims, 0).astype(self.sims.dtype))


@dataclass(frozen=True)
class Ballot:
    """What a rule decides: who may win, and whose vote counts how much."""

    eligible: np.ndarray  # [P, N] answers that may become the pseudo-label
    weights: np.ndarray  # [P, N] each answer's vote (0: none)
    own_vote: bool = False  # an answer's own vote counts for it (minimum Bayes risk with a prior)
    together: np.ndarray | None = None  # [P, N, N] answers that vote as one and not for each other (copies)


@dataclass(frozen=True)
class Consensus:
    choice: np.ndarray  # [P] chosen client index per prompt, -1 where no pseudo-label is given
    agreement: np.ndarray  # [P] mean cosine of the chosen answer to the other valid answers (nan if none)
    valid_count: np.ndarray  # [P] answers that took part


# The rules. Each says who is eligible and how the votes weigh; select does the scoring.

def medoid(valid: np.ndarray) -> Ballot:
    """The semantic medoid: every candidate eligible, every candidate one vote."""
    return Ballot(valid, valid.astype(float))


def weighted_medoid(valid: np.ndarray, competence: np.ndarray, *, temperature: float) -> Ballot:
    """Minimum Bayes risk with a prior: votes softmax(competence / T) over the prompt's candidates, the own vote
    included. Equal competence is the plain medoid; as T → 0 the most competent client's answer wins unless the
    others agree with it anyway."""
    logits = np.where(valid, competence / temperature, -np.inf)
    logits = logits - np.where(valid.any(axis=1, keepdims=True), logits.max(axis=1, keepdims=True), 0)
    weights = np.where(valid, np.exp(logits), 0.0)
    return Ballot(valid, weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300), own_vote=True)


def gated(valid: np.ndarray, competence: np.ndarray, *, gate: float) -> Ballot:
    """Selective-FD's rule for texts: the medoid among the answers whose client's competence is at least
    ``gate``; only they vote."""
    passing = valid & (competence >= gate)
    return Ballot(passing, passing.astype(float))


def oracle_expert(valid: np.ndarray, expert: np.ndarray) -> Ballot:
    """A measurement bound: each prompt's domain expert's answer where it is a candidate."""
    eligible = valid & (np.arange(valid.shape[1])[None, :] == expert[:, None])
    return Ballot(eligible, eligible.astype(float))


RULES: dict[str, Callable[..., Ballot]] = {"medoid": medoid, "weighted_medoid": weighted_medoid, "gated": gated,
                                           "oracle_expert": oracle_expert}
REFERENCE_BOUND = "oracle_reference"  # labels are the held-back references: no answer is chosen (server.choose)


def load_rule(name: str) -> Callable[..., Ballot]:
    """A rule by its name in ``RULES`` or as ``package.module:function``; ValueError (one line) when the module
    does not import, has no such function, or the function's parameters are not a rule's."""
    if name in RULES:
        return RULES[name]
    module, sep, function = name.partition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(f"unknown rule {name!r}: one of {', '.join([*RULES, REFERENCE_BOUND])}, or your own as "
                         "package.module:function")
    try:
        rule = getattr(importlib.import_module(module), function)
    except ImportError as e:
        raise ValueError(f"rule {name!r}: cannot import module {module!r} ({e})") from None
    except AttributeError:
        raise ValueError(f"rule {name!r}: module {module!r} has no {function!r}") from None
    rule_inputs(rule, name)
    return rule


def rule_inputs(rule: Callable, name: str = "") -> tuple[list[str], list[str]]:
    """The arrays a rule reads (its positional parameters, each one of ``ROUND_ARRAYS``) and the consensus
    settings it reads (its keyword-only parameters)."""
    try:
        params = list(inspect.signature(rule).parameters.values())
    except (TypeError, ValueError):
        raise ValueError(f"rule {name!r} is not a function") from None
    arrays = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    knobs = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
    if unknown := [a for a in arrays if a not in ROUND_ARRAYS]:
        raise ValueError(f"rule {name!r}: parameter {unknown[0]!r} is none of the arrays a rule reads "
                         f"({', '.join(ROUND_ARRAYS)}); settings go after '*'")
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise ValueError(f"rule {name!r}: name the arrays and settings it reads (no *args or **kwargs)")
    return arrays, knobs


def ballot(rule: Callable[..., Ballot], rnd: Round, settings: dict | None = None) -> Ballot:
    """Call ``rule`` with the arrays and settings it names; a wrong return is a one-line ValueError."""
    arrays, knobs = rule_inputs(rule, getattr(rule, "__name__", ""))
    if missing := [a for a in arrays if getattr(rnd, a) is None]:
        raise ValueError(f"rule {rule.__name__!r} reads {missing[0]!r}, which this round does not have")
    out = rule(*(getattr(rnd, a) for a in arrays), **{k: (settings or {})[k] for k in knobs})
    if not isinstance(out, Ballot) or out.eligible.shape != rnd.valid.shape or out.weights.shape != rnd.valid.shape:
        raise ValueError(f"rule {rule.__name__!r} must return a Ballot with eligible and weights of shape "
                         f"{rnd.valid.shape} [prompts, clients]")
    return replace(out, eligible=out.eligible.astype(bool) & rnd.valid, weights=np.where(rnd.valid, out.weights, 0.0))


# The defences: they change whose votes count, for any rule.

def reputation_votes(ballot: Ballot, reputation: np.ndarray) -> Ballot:
    """Each client's vote scaled by its reputation [N] (``update_reputation``)."""
    return replace(ballot, weights=ballot.weights * reputation[None, :])


def merge_copies(rnd: Round, ballot: Ballot, merge: float) -> Ballot:
    """Voters whose answers are at cosine >= ``merge`` to each other are copies: they count as one voter (each
    votes 1/copies) and, unless the rule counts an answer's own vote, give no vote to one another; so k sybils
    sending one text weigh as one client."""
    voters = ballot.weights > 0
    same = (rnd.sims >= merge) & voters[:, None, :] & voters[:, :, None]
    return replace(ballot, weights=ballot.weights / np.maximum(same.sum(axis=2), 1), together=same)


def corroborated(rnd: Round, ballot: Ballot, tau: float) -> Ballot:
    """On the prompts where more than one answer is eligible, only those that another client's candidate agrees
    with at cosine >= ``tau`` stay eligible: two competing claims need a witness, a lone expert does not."""
    n = rnd.valid.shape[1]
    witnessed = ((rnd.sims >= tau) & rnd.valid[:, None, :] & ~np.eye(n, dtype=bool)[None]).any(axis=2)
    contested = ballot.eligible.sum(axis=1, keepdims=True) > 1
    return replace(ballot, eligible=ballot.eligible & (~contested | witnessed))


def defend(rnd: Round, ballot: Ballot, reputation: np.ndarray | None = None, merge: float | None = None,
           corroborate: float | None = None) -> Ballot:
    """The defences a run asks for, applied to a rule's ballot: each client's vote scaled by its ``reputation``
    [N], copies at cosine >= ``merge`` counted as one voter, and contested eligibility needing a witness."""
    ballot = ballot if reputation is None else reputation_votes(ballot, reputation)
    ballot = ballot if merge is None else merge_copies(rnd, ballot, merge)
    return ballot if corroborate is None else corroborated(rnd, ballot, corroborate)


def select(rnd: Round, ballot: Ballot, tie_seed: tuple[int, ...] = (0,), threshold: float | None = None,
           fallback: Ballot | None = None, trust_confidence: bool = True, max_share: float | None = None
           ) -> Consensus:
    """The eligible answer with the highest weighted vote per prompt. Ties (within float32 rounding) between
    identical texts go to the lowest client index; between different texts to the highest ``confidence`` (unless
    not ``trust_confidence``), else to a random text drawn with ``tie_seed`` + the prompt index: never to a fixed
    client. A prompt with no eligible answer takes the ``fallback`` ballot's choice, if one is given. With
    ``max_share``, no client keeps more than that share of the labels (``capped``). With ``threshold`` τ, a choice
    whose mean cosine to the other candidates is below τ is withdrawn."""
    p, n = rnd.valid.shape
    if n == 0:  # every upload was rejected
        return Consensus(np.full(p, -1), np.full(p, np.nan), np.zeros(p, dtype=int))
    apart = ~np.eye(n, dtype=bool)[None] if ballot.together is None else ~ballot.together & ~np.eye(n, dtype=bool)
    votes = rnd.sims if ballot.own_vote else np.where(apart, rnd.sims, 0)
    scores = np.einsum("pij,pj->pi", votes, ballot.weights)
    confidence = rnd.confidence if trust_confidence else None
    choice = pick(scores, ballot.eligible, rnd.emb, rnd.text_ids, confidence, tie_seed)
    if fallback is not None:
        plain = select(rnd, fallback, tie_seed, trust_confidence=trust_confidence).choice
        choice = np.where(ballot.eligible.any(axis=1), choice, plain)
    if max_share is not None:
        choice = capped(scores, ballot.eligible, choice, max_share,
                        lambda s, e: pick(s, e, rnd.emb, rnd.text_ids, confidence, tie_seed))
    return finish(rnd.emb, rnd.valid, choice, threshold)


def capped(scores: np.ndarray, eligible: np.ndarray, choice: np.ndarray, max_share: float, repick) -> np.ndarray:
    """``choice`` with no client holding more than ``max_share`` of the labelled prompts (at least one): a client
    over it keeps the prompts where its score leads the next eligible answer's the most; its other prompts go to
    the next eligible answer (``repick``), or get no label where there is none. Repeated until no client is over."""
    n = eligible.shape[1]
    cap = max(1, int(np.floor(max_share * (choice >= 0).sum())))
    eligible, choice = eligible.copy(), choice.copy()
    for _ in range(n):
        over = np.flatnonzero(np.bincount(choice[choice >= 0], minlength=n) > cap)
        if not len(over):
            break
        moved = []
        for c in over:
            mine = np.flatnonzero(choice == c)
            rival = np.where(eligible[mine] & (np.arange(n) != c), scores[mine], -np.inf).max(axis=1)
            dropped = mine[np.argsort(-(scores[mine, c] - rival), kind="stable")[cap:]]
            eligible[dropped, c] = False
            moved += list(dropped)
        choice[moved] = repick(scores, eligible)[moved]
    return choice


def decide(emb: np.ndarray, valid: np.ndarray | None = None, rule: Callable[..., Ballot] = medoid, *,
           tie_seed: tuple[int, ...] = (0,), threshold: float | None = None, fallback: bool = False,
           reputation: np.ndarray | None = None, merge: float | None = None, corroborate: float | None = None,
           trust_confidence: bool = True, max_share: float | None = None, **arrays_and_settings) -> Consensus:
    """The whole consensus over arrays in one call: ``rule``'s ballot, the defences, ``select`` (with the
    medoid, under the same defences, where no answer is eligible and ``fallback``). Keywords that are
    ``ROUND_ARRAYS`` go to the round, the others are the rule's settings."""
    arrays = {k: v for k, v in arrays_and_settings.items() if k in ROUND_ARRAYS}
    settings = {k: v for k, v in arrays_and_settings.items() if k not in ROUND_ARRAYS}
    rnd = Round.of(emb, valid, **arrays)
    plain = defend(rnd, medoid(rnd.valid), reputation, merge) if fallback else None
    chosen = defend(rnd, ballot(rule, rnd, settings), reputation, merge, corroborate)
    return select(rnd, chosen, tie_seed, threshold, plain, trust_confidence, max_share)


def semantic_medoid(emb: np.ndarray, valid: np.ndarray | None = None, threshold: float | None = None,
                    **kw) -> Consensus:
    """The medoid per prompt over ``emb`` [prompts, clients, dim] (unit rows), ignoring invalid answers."""
    return decide(emb, valid, medoid, threshold=threshold, **kw)


# What the server measures and bounds around the rules.

def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def agreement_with_others(rnd: Round, reputation: np.ndarray, copy: float = COPY) -> np.ndarray:
    """[N]: each client's mean cosine to the reputation-weighted centroid of the other clients' candidates,
    over the prompts it answered; answers that are copies of its own (cosine >= ``copy``) are left out, so agreeing
    with a copy of oneself earns nothing. nan for a client with no such prompt."""
    n = rnd.valid.shape[1]
    others = rnd.valid[:, None, :] & rnd.valid[:, :, None] & ~np.eye(n, dtype=bool)[None] & (rnd.sims < copy)
    w = np.where(others, reputation[None, None, :], 0.0)
    total = w.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_prompt = np.where(total > 0, (w * rnd.sims).sum(axis=2) / total, np.nan)  # [P, N]
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


def supported(rnd: Round, tau: float) -> np.ndarray:
    """[P, N]: candidates that agree with at least one other client's candidate at cosine >= ``tau``."""
    n = rnd.valid.shape[1]
    others = rnd.valid[:, None, :] & ~np.eye(n, dtype=bool)[None]
    return rnd.valid & ((rnd.sims >= tau) & others).any(axis=2)


def pick(scores: np.ndarray, valid: np.ndarray, emb: np.ndarray, text_ids: np.ndarray | None,
         confidence: np.ndarray | None, tie_seed: tuple[int, ...]) -> np.ndarray:
    """The valid answer with the highest score per prompt, ties broken as ``select`` says (-1: none)."""
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
