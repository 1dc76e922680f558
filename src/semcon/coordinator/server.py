"""Semantic consensus: the server validates uploads, embeds the candidate answers and picks one consensus
answer per prompt; clients answer the public prompts and train on the pseudo-labels they get back.

A candidate is an answer a client would want to learn from: not blank, and by default neither cut at the
length cap nor degenerate (one phrase repeated). Where a prompt has a held-back reference, the server also
measures how good the chosen pseudo-labels are against a client's own or a random client's answers.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from semcon.config import ConsensusConfig, PublicConfig
from semcon.consensus import (
    REFERENCE_BOUND,
    Ballot,
    Consensus,
    Round,
    agreement_with_others,
    ballot,
    defend,
    load_rule,
    medoid,
    rank_normalize,
    select,
    supported,
    update_reputation,
)
from semcon.data import Prompt
from semcon.embed import Embedder
from semcon.member.evaluate import rouge_l
from semcon.protocol import (
    Download,
    Message,
    ProtocolError,
    Upload,
    accept_uploads,
    is_blank,
    text_limits,
    upload_rows,
    validate_upload,
)
from semcon.rounds.federation import Schedule
from semcon.rounds.metrics import RoundResult

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class PseudoLabel:
    """One row of ``pseudo_labels/round_NN.jsonl``."""

    prompt_id: str
    prompt: str
    client: str  # whose answer was chosen
    text: str
    agreement: float  # mean cosine of the chosen answer to the other answers
    answers: int  # candidate answers that took part
    finished: bool  # the answer ended by itself (False only with consensus.truncated=keep)
    confidence: float | None  # the chosen answer's mean token log-probability, as uploaded


def is_degenerate(text: str, min_words: int = 12, coverage: float = 0.5, max_n: int = 8) -> bool:
    """One repeated n-gram (n <= ``max_n`` words or punctuation marks) covers at least ``coverage`` of the
    text, as in "I'm sorry, I'm sorry, I'm sorry...": a loop, not an answer."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < min_words:
        return False
    for n in range(1, max_n + 1):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        gram, times = grams.most_common(1)[0]
        if times >= 3 and times * n >= coverage * len(words) and len(set(gram)) == n:
            return True
    return False


@dataclass
class Answers:
    """One round's valid uploads as arrays over [prompts, clients] (client columns in client-id order): what
    every consensus rule reads, on the server and in ``semcon replay`` and ``semcon verify``."""

    names: list[str]
    texts: list[list[str]]
    finished: np.ndarray
    confidence: np.ndarray  # nan where not sent
    competence: dict[str, np.ndarray]  # signal -> [P, N] as sent

    @classmethod
    def of(cls, prompts: list[Prompt], uploads: dict[str, Upload], signals: list[str]) -> Answers:
        names = list(uploads)
        shape = (len(prompts), len(names))

        def table(value, dtype):
            return np.array([[value(uploads[n], p.id) for n in names] for p in prompts], dtype=dtype).reshape(shape)

        return cls(names, [[uploads[n].answers[p.id] for n in names] for p in prompts],
                   table(lambda u, pid: u.finished[pid], bool), table(lambda u, pid: u.confidence.get(pid, np.nan), float),
                   {s: table(lambda u, pid, s=s: u.competence[s][pid], float) for s in signals})

    @cached_property  # read by the candidates, the round's metrics and the kept rows: one pass over the texts
    def degenerate(self) -> np.ndarray:
        return np.array([[is_degenerate(t) for t in row] for row in self.texts], dtype=bool).reshape(self.finished.shape)

    @cached_property
    def looped(self) -> set[str]:
        """The degenerate texts among these answers (``degenerate``, not computed again)."""
        return {t for row, flags in zip(self.texts, self.degenerate) for t, f in zip(row, flags) if f}

    @cached_property
    def blank(self) -> np.ndarray:
        return np.array([[is_blank(t) for t in row] for row in self.texts], dtype=bool).reshape(self.finished.shape)

REFERENCE = "reference"  # who supplied a label under the references-only bound (oracle_reference)


@dataclass
class Choice:
    """What a rule chose, with what it saw: the candidates, their embeddings and the rule's consensus."""

    answers: Answers
    candidate: np.ndarray  # [P, N] answers that could become a pseudo-label
    consensus: Consensus
    vectors: np.ndarray  # embeddings of the distinct non-blank texts
    text_ids: np.ndarray  # [P, N] row of ``vectors`` of each answer (-1: blank)
    seconds_embed: float
    reputation: dict[str, float] | None = None  # each client's weight after this round (consensus.reputation)
    references: list[str | None] | None = None  # the references-only bound: each prompt's label (None: none)

    def label(self, k: int) -> tuple[str, str, bool, float] | None:
        """Prompt ``k``'s pseudo-label as (who, text, finished, confidence), or None."""
        if self.references is not None and self.references[k] is not None:
            return REFERENCE, self.references[k], True, np.nan
        c = int(self.consensus.choice[k])
        if c < 0:
            return None
        a = self.answers
        return a.names[c], a.texts[k][c], bool(a.finished[k, c]), float(a.confidence[k, c])


def choose(cfg: ConsensusConfig, prompts: list[Prompt], answers: Answers, embedder: Embedder,
           experts: dict[str, str] | None, tie_seed: tuple[int, ...], reputation: dict[str, float] | None = None
           ) -> Choice:
    """One consensus step over a round's valid answers under ``cfg.rule``: candidates, one batched embedding of
    the distinct texts, the defences' votes, then the rule and ``select`` (``consensus.py``). ``reputation``: each
    client's weight after the rounds before (absent: 1). The server, replay and verify all call this."""
    blank = answers.blank
    candidate = ~blank
    if cfg.truncated == "drop":
        candidate &= answers.finished
    if cfg.degenerate == "drop":
        candidate &= ~answers.degenerate

    start = time.perf_counter()
    texts = answers.texts  # every non-blank answer is embedded once: the candidates, and the others for answer_quality
    unique = sorted({t for row, ok in zip(texts, ~blank) for t, v in zip(row, ok) if v})
    vectors = embedder(unique)
    index = {t: i for i, t in enumerate(unique)}
    text_ids = np.array([[index.get(t, -1) for t in row] for row in texts], dtype=int).reshape(candidate.shape)
    emb = np.zeros((*candidate.shape, embedder.dim), dtype=np.float32)
    emb[candidate] = vectors[text_ids[candidate]]
    seconds = time.perf_counter() - start

    names = answers.names
    signal = answers.competence[cfg.used_signal] if cfg.used_signal else None
    expert = np.array([names.index(experts[p.domain]) if experts and experts.get(p.domain) in names else -1
                       for p in prompts], dtype=int)
    rnd = Round.of(emb, candidate, text_ids=text_ids, confidence=answers.confidence, expert=expert,
                   competence=rank_normalize(signal) if signal is not None and cfg.competence_norm == "rank" else signal)
    if cfg.support is not None:
        rnd = rnd.only(supported(rnd, cfg.support))
    carried, votes = None, None
    if cfg.reputation is not None:  # this round's evidence first, so that round 1 is defended too
        before = np.array([(reputation or {}).get(n, 1.0) for n in names])
        votes = update_reputation(before, agreement_with_others(rnd, before), cfg.reputation)
        carried = {n: round_float(v) for n, v in zip(names, votes)}
    plain = defend(rnd, medoid(rnd.valid), votes, cfg.sybil_merge) if cfg.fallback == "medoid" else None
    if cfg.rule == REFERENCE_BOUND:
        refs = [p.reference if p.reference and not is_blank(p.reference) and
                not (cfg.degenerate == "drop" and is_degenerate(p.reference)) else None for p in prompts]
        result = reference_bound(rnd, refs, embedder, tie_seed, cfg.threshold, plain)  # no defence reaches the references
        return Choice(answers, rnd.valid, result, vectors, text_ids, seconds, carried, refs)
    rule = defend(rnd, ballot(load_rule(cfg.rule), rnd, cfg.model_dump()), votes, cfg.sybil_merge, cfg.corroborate)
    result = select(rnd, rule, tie_seed, cfg.threshold, plain, cfg.tie_break == "confidence", cfg.max_share)
    return Choice(answers, rnd.valid, result, vectors, text_ids, seconds, carried)


def reference_bound(rnd: Round, refs: list[str | None], embedder: Embedder, tie_seed: tuple[int, ...],
                    threshold: float | None, fallback: Ballot | None) -> Consensus:
    """The references-only bound's consensus: each reference's agreement with the candidates (it took part with
    them), and the ``fallback`` choice where a prompt has no reference."""
    none = Ballot(np.zeros_like(rnd.valid), np.zeros(rnd.valid.shape))
    result = select(rnd, none, tie_seed, threshold, fallback)
    have = np.array([r is not None for r in refs], dtype=bool)
    if not have.any():
        return result
    ref = np.zeros((len(refs), rnd.emb.shape[2]), dtype=rnd.emb.dtype)
    ref[have] = embedder([r for r in refs if r is not None])
    count = rnd.valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(count > 0, np.einsum("pnd,pd->p", rnd.emb, ref) / np.maximum(count, 1), 1.0)
    return Consensus(np.where(have, -1, result.choice), np.where(have, agreement, result.agreement),
                     np.where(have, count + 1, result.valid_count))


class SemanticConsensus:
    """Round 0 private only; round t: answers up, consensus, pseudo-labels down, train on the union.
    The server side holds the embedder and the consensus rule, and no model of its own. ``experts`` (each
    domain's expert client, for measurement: the oracle bound and the expert share of the labels)."""

    name = "semantic_consensus"

    def __init__(self, cfg: ConsensusConfig, clients: list[str], prompts: list[Prompt], rounds: int,
                 embedder: Embedder | None = None, seed: int = 0, experts: dict[str, str] | None = None,
                 public: PublicConfig | None = None):
        self.cfg, self.seed, self.prompts, self.experts = cfg, seed, prompts, experts or {}
        self.public = public or PublicConfig(num_prompts=max(len(prompts), 1))
        self.clients = clients  # client id = position; identical texts go to the lowest id
        self.embedder = embedder or Embedder(cfg.embedder, batch_size=cfg.embed_batch_size)
        self.schedule = Schedule(rounds)
        # the references-only bound's labels do not depend on any answer: nothing is answered or uploaded
        self.upload_phase = None if cfg.rule == "oracle_reference" else "generate"
        self.limits = text_limits(len(self.asked(1)), cfg.max_answer_chars)
        self.reputation: dict[str, float] = {}  # carried across rounds (consensus.reputation); in each round's row

    def asked(self, t: int) -> list[Prompt]:
        """The public prompts of round ``t`` (all the run's under ``public.per_round: fixed``)."""
        return self.public.asked(self.prompts, t)

    def restore(self, rounds: list[dict]) -> None:
        """Take up the state carried across rounds from a resumed run's completed rows (the last reputation)."""
        self.reputation = next((r["reputation"] for r in reversed(rounds) if r.get("reputation")), {})

    # the client side
    def upload(self, client, t, on_progress=None):
        return client.answer(t, self.asked(t), on_batch=on_progress)

    def receive(self, client, msg):
        client.pseudo = msg

    def train(self, client, t, on_step=None):
        return client.train(t, self.prompts, on_step=on_step)

    # the server side

    def accept(self, round: int, messages: dict[str, Message]) -> tuple[dict[str, Upload], dict[str, str]]:
        """Validate every decoded upload; an invalid one is rejected for this round with its reason."""
        ids = {p.id for p in self.asked(round)}

        def valid(msg, name: str) -> Upload:
            if problems := validate_upload(msg, client=name, round=round, prompt_ids=ids,
                                           max_chars=self.cfg.max_answer_chars, signals=self.cfg.signals):
                raise ProtocolError("; ".join(problems))
            return msg

        return accept_uploads(round, self.clients, messages, valid)

    def aggregate(self, round: int, messages: dict[str, Message]) -> RoundResult:
        """One consensus step: validate, embed all answers in one batch, the rule over the candidates of all
        prompts at once; the valid uploads are kept as rows (``uploads/round_NN.jsonl``)."""
        uploads, rejected = self.accept(round, messages)
        prompts = self.asked(round)
        answers = Answers.of(prompts, uploads, self.cfg.signals)
        picked = choose(self.cfg, prompts, answers, self.embedder, self.experts, (self.seed % 2**32, round),
                        self.reputation)
        self.reputation = picked.reputation or {}
        labels = pseudo_labels(prompts, picked)
        download = Download(round=round, labels={lab.prompt_id: lab.text for lab in labels},
                            finished={lab.prompt_id: lab.finished for lab in labels})
        metrics = round_metrics(prompts, picked, labels, self.experts, self.embedder)
        return RoundResult(download, answers.names, rejected, labels, metrics, seconds={"embed": picked.seconds_embed},
                           uploads=upload_rows(uploads, [p.id for p in prompts], self.cfg.signals, answers.looped.__contains__))


def pseudo_labels(prompts: list[Prompt], picked: Choice) -> list[PseudoLabel]:
    """The rows of ``pseudo_labels/round_NN.jsonl``: each labelled prompt's chosen answer and who gave it."""
    result, labels = picked.consensus, []
    for k, p in enumerate(prompts):
        if (label := picked.label(k)) is None:
            continue
        who, text, finished, conf = label
        labels.append(PseudoLabel(p.id, p.instruction, who, text, round_float(result.agreement[k]),
                                  int(result.valid_count[k]), finished, round_float(conf) if np.isfinite(conf) else None))
    return labels


def round_metrics(prompts: list[Prompt], picked: Choice, labels: list[PseudoLabel], experts: dict[str, str],
                  embedder: Embedder) -> dict:
    """The consensus fields of the round's metrics row: agreement, labels given, cut and degenerate answers,
    whose answers became labels (per client, and per domain the expert's share) and the labels' quality."""
    a, names = picked.answers, picked.answers.names
    agreement = [lab.agreement for lab in labels if lab.answers > 1]
    return {
        **({"reputation": picked.reputation} if picked.reputation is not None else {}),
        "mean_agreement": round_float(np.mean(agreement), 4) if agreement else None,
        "pseudo_labels": len(labels), "unlabelled": len(prompts) - len(labels), "prompts": len(prompts),
        "cut_share": {n: round_float(1 - a.finished[:, i].mean()) for i, n in enumerate(names)},
        "cut_share_by_domain": share_by_domain(prompts, names, ~a.finished),
        "degenerate_share": {n: round_float(a.degenerate[:, i].mean()) for i, n in enumerate(names)},
        "label_share": label_share(labels, [*names, REFERENCE] if picked.references is not None else names),
        "expert_share": expert_share(prompts, labels, experts),
        "answer_quality": answer_quality(prompts, picked, embedder),
    }


def label_share(labels: list[PseudoLabel], names: list[str]) -> dict[str, float]:
    """The share of this round's pseudo-labels that each client (or the reference) supplied."""
    counts = Counter(lab.client for lab in labels)
    return {n: round_float(counts[n] / len(labels)) if labels else 0.0 for n in names}


def expert_share(prompts: list[Prompt], labels: list[PseudoLabel], experts: dict[str, str]) -> dict[str, float]:
    """Per domain with an expert, the share of its labelled prompts whose label is the expert's own answer."""
    domain = {p.id: p.domain for p in prompts}
    out = {}
    for d in sorted({p.domain for p in prompts if p.domain in experts}):
        mine = [lab for lab in labels if domain[lab.prompt_id] == d]
        if mine:
            out[d] = round_float(sum(lab.client == experts[d] for lab in mine) / len(mine))
    return out


def expert_labelled(prompts: list[Prompt], labels: list[PseudoLabel], experts: dict[str, str]) -> dict[str, float]:
    """Per domain with an expert, the share of all its prompts labelled with the expert's own answer: how much
    expertise travelled (a defence that withholds labels lowers it, where ``expert_share`` would not show it)."""
    by_prompt = {lab.prompt_id: lab.client for lab in labels}
    out = {}
    for d in sorted({p.domain for p in prompts if p.domain in experts}):
        mine = [p.id for p in prompts if p.domain == d]
        out[d] = round_float(sum(by_prompt.get(pid) == experts[d] for pid in mine) / len(mine))
    return out


def share_by_domain(prompts: list[Prompt], names: list[str], flags: np.ndarray) -> dict[str, dict[str, float]]:
    """Per client and prompt domain, the share of answers with ``flags`` [prompts, clients] set."""
    domains = sorted({p.domain for p in prompts})
    rows = {d: [k for k, p in enumerate(prompts) if p.domain == d] for d in domains}
    return {n: {d: round_float(flags[rows[d], i].mean()) for d in domains} for i, n in enumerate(names)}


def answer_quality(prompts: list[Prompt], picked: Choice, embedder: Embedder) -> dict | None:
    """ROUGE-L and embedding cosine to the held-back references, on the labelled prompts that have one: of the
    chosen pseudo-labels, of each client's own answers and of a uniformly random client's answer (its
    expectation: the mean over clients). The direct check that consensus picks better answers than a client."""
    a, choice = picked.answers, picked.consensus.choice
    rows = [k for k, p in enumerate(prompts) if p.reference is not None and picked.label(k) is not None]
    if not rows or not a.names:
        return None
    refs = embedder([prompts[k].reference for k in rows])

    def cosine(k: int, i: int, r: int) -> float:  # answer i of prompt k (-1: the reference) to reference r
        if i < 0:
            return float(refs[r] @ refs[r])
        return float(picked.vectors[picked.text_ids[k, i]] @ refs[r]) if picked.text_ids[k, i] >= 0 else 0.0

    rouge = np.array([[rouge_l(t, prompts[k].reference) for t in a.texts[k]] for k in rows])
    cos = np.array([[cosine(k, i, r) for i in range(len(a.names))] for r, k in enumerate(rows)])
    label_rouge = np.array([rouge_l(picked.label(k)[1], prompts[k].reference) for k in rows])
    label_cos = np.array([cosine(k, int(choice[k]), r) for r, k in enumerate(rows)])

    def scores(r: np.ndarray, c: np.ndarray) -> dict[str, float]:
        return {"rouge_l": round_float(r.mean(), 4), "cosine": round_float(c.mean(), 4)}

    return {"prompts": len(rows), "consensus": scores(label_rouge, label_cos),
            "random": scores(rouge.mean(1), cos.mean(1)),
            "clients": {n: scores(rouge[:, i], cos[:, i]) for i, n in enumerate(a.names)}}


def round_float(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))
