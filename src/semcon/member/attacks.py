"""Adversarial members: what an attacking client does to its own upload (and, with ``poison_private``, to its own
training data), and nothing else.

An attacker trains, answers and is evaluated as any client; only the message it sends differs. No other module
knows attacks exist: the server sees an upload like any other, which is the point of measuring them. Every
attack is deterministic in (run seed, round, client), so replay and resume see the same texts.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from semcon.config import AttackConfig
from semcon.data import Example, Prompt
from semcon.protocol import Upload

_WORD = re.compile(r"\S+")
_NUMBER = re.compile(r"\d+")
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]+")  # a capitalised word inside a sentence: likely a named entity


def attack(upload: Upload, cfg: AttackConfig | None, prompts: list[Prompt], own_texts: list[str] = (),
           seed: int = 0) -> Upload:
    """The upload an attacking client sends instead of ``upload`` (``upload`` itself without an attack).
    ``prompts``: the public prompts answered (in order); ``own_texts``: fluent texts of the attacker's own (its
    private responses), for off_topic; ``seed``: the run seed."""
    if cfg is None:
        return upload
    rng = random.Random(f"{seed}:{upload.round}:{upload.client}:{cfg.kind}")
    honest = upload.answers
    if cfg.kind == "inflate_competence":
        competence = {signal: dict.fromkeys(values, 1.0) for signal, values in upload.competence.items()}
        upload = replace(upload, competence=competence)
        return claimed(upload, dict.fromkeys(honest, cfg.text)) if cfg.answers == "constant" else upload
    if cfg.kind in ("constant", "sybil"):  # sybils: every member of the group sends the group's one text
        texts = dict.fromkeys(honest, cfg.text)
    elif cfg.kind == "echo":
        texts = {p.id: p.instruction for p in prompts}
    elif cfg.kind == "random":
        vocabulary = [w for t in honest.values() for w in _WORD.findall(t)] or ["lorem", "ipsum"]
        texts = {pid: " ".join(rng.choice(vocabulary) for _ in range(max(5, len(_WORD.findall(t)))))
                 for pid, t in honest.items()}
    elif cfg.kind == "off_topic":  # a fluent answer to some other question (its own private responses)
        pool = list(own_texts) or [honest[p.id] for p in prompts]
        texts = {p.id: rng.choice(pool) for p in prompts}
    else:  # plausible_wrong
        texts = {p.id: plausible_wrong(p, prompts, honest, rng) for p in prompts}
    return claimed(upload, texts)


def claimed(upload: Upload, texts: dict[str, str]) -> Upload:
    """``upload`` with ``texts`` as its answers, each claimed finished and certain (the best-looking flags)."""
    return replace(upload, answers=texts, finished=dict.fromkeys(texts, True), confidence=dict.fromkeys(texts, 0.0))


def plausible_wrong(prompt: Prompt, prompts: list[Prompt], honest: dict[str, str], rng: random.Random) -> str:
    """An honest-looking wrong answer: its own answer with every number changed and named entities swapped with
    others from its answers; where it has neither, its answer to another prompt of the same domain."""
    text = honest[prompt.id]
    names = sorted({n for t in honest.values() for n in _NAME.findall(t)})
    changed = _NUMBER.sub(lambda m: _other_number(m.group(), rng), text)
    changed = _NAME.sub(lambda m: rng.choice([n for n in names if n != m.group()] or [m.group()]), changed)
    if changed != text:
        return changed
    same = [p.id for p in prompts if p.domain == prompt.domain and p.id != prompt.id and honest[p.id] != text]
    return honest[rng.choice(same)] if same else text


def _other_number(digits: str, rng: random.Random) -> str:
    """A different number with as many digits (a leading zero only where the original had one)."""
    while True:
        low = 0 if len(digits) == 1 or digits[0] == "0" else 10 ** (len(digits) - 1)
        new = str(rng.randrange(low, 10 ** len(digits))).zfill(len(digits))
        if new != digits:
            return new


def poison(private: list[Example], seed: int) -> list[Example]:
    """Wrong private data (``poison_private``): every response moved to another example's instruction (a seeded
    derangement), so the attacker's model learns confident wrong answers in its own domain."""
    if len(private) < 2:
        return list(private)
    order = list(range(len(private)))
    random.Random(f"{seed}:poison").shuffle(order)
    moved = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a cycle: nothing stays
    return [replace(e, response=private[moved[i]].response) for i, e in enumerate(private)]
