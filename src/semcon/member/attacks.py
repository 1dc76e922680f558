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
           seed: int = 0, own_domain: str | None = None) -> Upload:
    """The upload an attacking client sends instead of ``upload`` (``upload`` itself without an attack).
    ``prompts``: the public prompts answered (in order); ``own_texts``: fluent texts of the attacker's own (its
    private responses), for off_topic; ``seed``: the run seed; ``own_domain``: the domain of most of its private
    rows (``target: own``, expert_liar). Only the targeted prompts (``targeted``) are attacked."""
    if cfg is None:
        return upload
    rng = random.Random(f"{seed}:{upload.round}:{upload.client}:{cfg.kind}")
    aimed = targeted(cfg, prompts, upload, seed, own_domain)
    honest = upload.answers
    if cfg.kind in ("inflate_competence", "claim_finished"):
        if cfg.kind == "inflate_competence":
            upload = replace(upload, competence={s: {pid: 1.0 if pid in aimed else v for pid, v in values.items()}
                                                 for s, values in upload.competence.items()})
        else:
            upload = replace(upload, finished={pid: True if pid in aimed else f for pid, f in upload.finished.items()})
        if cfg.answers == "constant":
            return claimed(upload, {pid: cfg.text if pid in aimed else t for pid, t in honest.items()}, aimed, cfg)
        return sure(upload, aimed) if cfg.confidence == "max" else upload
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
    else:  # plausible_wrong, expert_liar (on its own domain, where its honest competence is high)
        texts = {p.id: plausible_wrong(p, prompts, honest, rng) for p in prompts}
    if cfg.kind == "sybil" and (cfg.target or cfg.share or cfg.part):  # a targeted group claims its prompts
        upload = replace(upload, competence={s: {pid: 1.0 if pid in aimed else v for pid, v in values.items()}
                                             for s, values in upload.competence.items()})
    return claimed(upload, {pid: texts[pid] if pid in aimed else t for pid, t in honest.items()}, aimed, cfg)


def described(cfg: AttackConfig) -> str:
    """The attack in a table cell: its kind, and what it was set to beyond the defaults."""
    parts = [f"{cfg.answers} answers" if cfg.answers != "honest" else "",
             *(f"{k} {getattr(cfg, k)}" for k in ("target", "share", "part") if getattr(cfg, k) is not None),
             f"{cfg.confidence} confidence" if cfg.confidence else ""]
    return cfg.kind + (f" ({', '.join(p for p in parts if p)})" if any(parts) else "")


def targeted(cfg: AttackConfig, prompts: list[Prompt], upload: Upload, seed: int, own_domain: str | None) -> set[str]:
    """The ids of the prompts the attack acts on: those of ``cfg.target``'s domain (``own``: ``own_domain``;
    ``next``: the domain after it among the prompts'; none: every prompt), then this member's ``part`` of them (a
    group's members share one seeded order), then a ``share`` of them drawn by the attacker for this round."""
    domain = own_domain if cfg.target == "own" or (cfg.target is None and cfg.kind == "expert_liar") else cfg.target
    if domain == "next":
        domains = sorted({p.domain for p in prompts})
        domain = domains[(domains.index(own_domain) + 1) % len(domains)] if own_domain in domains else domains[0]
    ids = [p.id for p in prompts if domain is None or p.domain == domain]
    if cfg.part is not None:
        i, k = (int(x) for x in cfg.part.split("/"))
        random.Random(f"{seed}:{upload.round}:{cfg.group}:part").shuffle(ids)
        ids = ids[i - 1::k]
    if cfg.share is not None:
        ids = random.Random(f"{seed}:{upload.round}:{upload.client}:share").sample(ids, round(cfg.share * len(ids)))
    return set(ids)


def claimed(upload: Upload, texts: dict[str, str], aimed: set[str] | None = None, cfg: AttackConfig | None = None
            ) -> Upload:
    """``upload`` with ``texts`` as its answers, each attacked one (``aimed``; default all) claimed finished and,
    unless ``cfg.confidence`` is honest, certain: the best-looking flags."""
    aimed = set(texts) if aimed is None else aimed
    upload = replace(upload, answers=texts, finished={pid: True if pid in aimed else upload.finished[pid] for pid in texts})
    return upload if cfg is not None and cfg.confidence == "honest" else sure(upload, aimed)


def sure(upload: Upload, aimed: set[str]) -> Upload:
    """``upload`` claiming the highest confidence (mean token log-probability 0) on the ``aimed`` prompts."""
    return replace(upload, confidence={pid: 0.0 if pid in aimed else upload.confidence[pid]
                                       for pid in upload.answers if pid in aimed or pid in upload.confidence})


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
