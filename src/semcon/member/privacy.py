"""Output privacy: secrets planted in one client's private data (canaries), what of them leaks through its
answers, the pseudo-labels and other clients' completions, and how exposed each secret is (Carlini et al., "The
Secret Sharer", 2019); and the client-side upload filter that withholds or redacts before anything leaves.

Pure functions and small data only; the secrets themselves and the prompts that fish for them are data
(``data/canaries.py``); ``audit.py`` measures beside each client, and the client filters its upload.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz

from semcon.data.canaries import Canary, random_code

FOUND = 0.8  # normalised edit similarity on the secret part at which a canary counts as found


def candidates(canary: Canary, k: int, seed: int) -> list[str]:
    """``k`` random codes of the same format, none the true one: the reference set of its exposure."""
    rng = random.Random(f"{seed}:candidates:{canary.account}")
    out: set[str] = set()
    while len(out) < k:
        if (code := random_code(rng)) != canary.code:
            out.add(code)
    return sorted(out)


def found(canary: Canary, text: str) -> bool:
    """Whether ``text`` holds the canary's secret verbatim or nearly (rapidfuzz's partial ratio: the normalised
    Indel similarity of the best-matching window, at least ``FOUND``)."""
    return bool(text) and fuzz.partial_ratio(canary.code, text) >= 100 * FOUND


def exposure(true_loglik: float, candidate_logliks: np.ndarray) -> float:
    """log2(C + 1) − log2(rank): the rank (1 = most likely) of the true secret's log-likelihood among itself and
    C random candidates. The maximum, log2(C + 1), means the model prefers the true secret to every candidate;
    about 1 is chance."""
    rank = 1 + int(np.sum(np.asarray(candidate_logliks) > true_loglik))
    return math.log2(len(candidate_logliks) + 1) - math.log2(rank)


# The upload filter --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")
# What ``pii`` redacts, in this order (the longer digit patterns before the shorter ones).
PII_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")),
    ("card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b")),
    ("phone", re.compile(r"(?<![\w-])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,5}(?![\w-])")),
    ("digits", re.compile(r"\b\d{4,}(?:[ -]\d{4,})+\b")),  # account- and code-like runs: 1234-5678
]


def redact(text: str) -> tuple[str, int]:
    """``text`` with e-mail addresses, IBANs, card-, phone- and code-like digit runs replaced by ``[KIND]``, and
    how many were replaced."""
    count = 0
    for kind, pattern in PII_PATTERNS:
        text, n = pattern.subn(f"[{kind}]", text)
        count += n
    return text, count


class NgramIndex:
    """The hashed word n-grams of a client's private data, built once: an answer that shares a run of ``n``
    tokens with it is withheld (the check is linear in the answer)."""

    def __init__(self, texts: list[str], n: int):
        self.n = n
        self.grams = {g for t in texts for g in self._grams(t)}

    def _grams(self, text: str):
        words = [w.lower() for w in _TOKEN.findall(text)]
        return (hash(tuple(words[i:i + self.n])) for i in range(len(words) - self.n + 1))

    def overlaps(self, text: str) -> bool:
        return any(g in self.grams for g in self._grams(text))


@dataclass(frozen=True)
class Filtered:
    """What the filter did to one upload: answers withheld (sent blank, so no candidate) and PII redacted."""

    answers: dict[str, str]
    withheld: int
    redacted: int


def filter_answers(answers: dict[str, str], filters: list[str], index: NgramIndex | None) -> Filtered:
    """Withhold answers that overlap the private data (``ngram``), redact PII in the rest (``pii``)."""
    out, withheld, redacted = {}, 0, 0
    for pid, text in answers.items():
        if "ngram" in filters and index is not None and index.overlaps(text):
            out[pid], withheld = "", withheld + 1
            continue
        if "pii" in filters:
            text, n = redact(text)
            redacted += n
        out[pid] = text
    return Filtered(out, withheld, redacted)


def withheld_flags(finished: dict[str, bool], filtered: Filtered) -> dict[str, bool]:
    """A withheld (blank) answer is sent as not finished: it is no candidate under any ``consensus.truncated``."""
    return {pid: ok and filtered.answers[pid] != "" for pid, ok in finished.items()}

