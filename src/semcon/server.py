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

import numpy as np

from semcon.config import ConsensusConfig, PublicConfig
from semcon.consensus import (
    Consensus,
    agreement_with_others,
    finish,
    gated,
    oracle,
    rank_normalize,
    semantic_medoid,
    supported,
    update_reputation,
    weighted_medoid,
)
from semcon.data import Prompt
from semcon.embed import Embedder
from semcon.evaluate import rouge_l
from semcon.federation import Schedule
from semcon.metrics import RoundResult
from semcon.protocol import (
    Download,
    Message,
    ProtocolError,
    Upload,
    accept_uploads,
    is_blank,
    text_limits,
    validate_upload,
)

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

    @property
    def degenerate(self) -> np.ndarray:
        return np.array([[is_degenerate(t) for t in row] for row in self.texts], dtype=bool).reshape(self.finished.shape)

    @property
    def blank(self) -> np.ndarray:
        return np.array([[is_blank(t) for t in row] for row in self.texts], dtype=bool).reshape(self.finished.shape)

    def with_reference(self, prompts: list[Prompt]) -> Answers:
        """These answers plus the held-back references as one more column, ``reference`` (for the oracle bound;
        blank where a prompt has none)."""
        def column(table: np.ndarray, value) -> np.ndarray:
            return np.concatenate([table, np.full((len(prompts), 1), value)], axis=1)

        return Answers([*self.names, REFERENCE], [[*row, q.reference or ""] for row, q in zip(self.texts, prompts)],
                       column(self.finished, True), column(self.confidence, np.nan),
                       {s: column(c, 1.0) for s, c in self.competence.items()})


REFERENCE = "reference"  # the column of held-back references under rule oracle_reference


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


def choose(cfg: ConsensusConfig, prompts: list[Prompt], answers: Answers, embedder: Embedder,
           experts: dict[str, str] | None, tie_seed: tuple[int, ...], reputation: dict[str, float] | None = None
           ) -> Choice:
    """One consensus step over a round's valid answers under ``cfg.rule``: candidates, one batched embedding of
    the distinct texts, the defences' votes, then the rule (``consensus.py``). ``reputation``: each client's weight
    after the rounds before (absent: 1). The server, replay and verify all call this."""
    if cfg.rule == "oracle_reference":
        answers = answers.with_reference(prompts)
    blank = answers.blank
    candidate = ~blank
    if cfg.truncated == "drop":
        candidate &= answers.finished
    if cfg.degenerate == "drop":
        candidate &= ~answers.degenerate

    start = time.perf_counter()
    texts = answers.texts
    unique = sorted({t for row, ok in zip(texts, ~blank) for t, v in zip(row, ok) if v})
    vectors = embedder(unique)
    index = {t: i for i, t in enumerate(unique)}
    shape = candidate.shape
    text_ids = np.array([[index.get(t, -1) for t in row] for row in texts], dtype=int).reshape(shape)
    emb = np.zeros((*shape, embedder.dim), dtype=np.float32)
    emb[candidate] = vectors[text_ids[candidate]]
    seconds = time.perf_counter() - start

    if cfg.support is not None:
        candidate = supported(emb, candidate, cfg.support)
    votes, carried = None, None
    if cfg.reputation is not None:  # this round's evidence first, so that round 1 is defended too
        before = np.array([(reputation or {}).get(n, 1.0) for n in answers.names])
        votes = update_reputation(before, agreement_with_others(emb, candidate, before), cfg.reputation)
        carried = {n: round_float(v) for n, v in zip(answers.names, votes) if n != REFERENCE}
    common = {"threshold": cfg.threshold, "text_ids": text_ids, "confidence": answers.confidence, "tie_seed": tie_seed,
              "votes": votes, "merge": cfg.sybil_merge}
    if cfg.used_signal is not None:  # a rule that reads competence
        comp = answers.competence[cfg.used_signal]
        comp = rank_normalize(comp) if cfg.competence_norm == "rank" else comp
        if cfg.rule == "weighted_medoid":
            result = weighted_medoid(emb, candidate, comp, cfg.temperature, **common)
        else:
            result = gated(emb, candidate, comp, cfg.gate, fallback=cfg.fallback == "medoid", **common)
    elif cfg.oracle:
        names = answers.names
        if cfg.rule == "oracle_reference":
            expert = np.full(len(prompts), names.index(REFERENCE))
        else:
            expert = np.array([names.index(experts[p.domain]) if experts and experts.get(p.domain) in names else -1
                               for p in prompts], dtype=int)
        result = oracle(candidate, expert, emb)
        if cfg.fallback == "medoid":
            plain = semantic_medoid(emb, candidate, **common)
            result = finish(emb, candidate, np.where(result.choice >= 0, result.choice, plain.choice), cfg.threshold)
    else:
        result = semantic_medoid(emb, candidate, **common)
    return Choice(answers, candidate, result, vectors, text_ids, seconds, carried)


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
                           uploads=upload_rows(prompts, answers))


def pseudo_labels(prompts: list[Prompt], picked: Choice) -> list[PseudoLabel]:
    """The rows of ``pseudo_labels/round_NN.jsonl``: each labelled prompt's chosen answer and who gave it."""
    a, result = picked.answers, picked.consensus
    labels = []
    for pi, p in enumerate(prompts):
        c = int(result.choice[pi])
        if c < 0:
            continue
        conf = a.confidence[pi, c]
        labels.append(PseudoLabel(p.id, p.instruction, a.names[c], a.texts[pi][c], round_float(result.agreement[pi]),
                                  int(result.valid_count[pi]), bool(a.finished[pi, c]),
                                  round_float(conf) if np.isfinite(conf) else None))
    return labels


def upload_rows(prompts: list[Prompt], answers: Answers) -> list[dict]:
    """The rows of ``uploads/round_NN.jsonl``: every valid answer with its flags and numbers, client by client."""
    degenerate = answers.degenerate
    rows = []
    for i, name in enumerate(answers.names):
        for pi, p in enumerate(prompts):
            conf = answers.confidence[pi, i]
            rows.append({"prompt_id": p.id, "client": name, "text": answers.texts[pi][i],
                         "finished": bool(answers.finished[pi, i]), "degenerate": bool(degenerate[pi, i]),
                         "confidence": float(conf) if np.isfinite(conf) else None,
                         "competence": {s: float(c[pi, i]) for s, c in answers.competence.items()}})
    return rows


def uploads_from_rows(round: int, rows: list[dict]) -> dict[str, Upload]:
    """The uploads that ``upload_rows`` wrote, as the server accepted them (client order kept)."""
    out: dict[str, dict] = {}
    for r in rows:
        u = out.setdefault(r["client"], {"answers": {}, "finished": {}, "confidence": {}, "competence": {}})
        u["answers"][r["prompt_id"]] = r["text"]
        u["finished"][r["prompt_id"]] = r["finished"]
        if r.get("confidence") is not None:
            u["confidence"][r["prompt_id"]] = r["confidence"]
        for signal, value in (r.get("competence") or {}).items():
            u["competence"].setdefault(signal, {})[r["prompt_id"]] = value
    return {name: Upload(round=round, client=name, **fields) for name, fields in out.items()}


def round_metrics(prompts: list[Prompt], picked: Choice, labels: list[PseudoLabel], experts: dict[str, str],
                  embedder: Embedder) -> dict:
    """The consensus fields of the round's metrics row: agreement, labels given, cut and degenerate answers,
    whose answers became labels (per client, and per domain the expert's share) and the labels' quality."""
    a, choice = picked.answers, picked.consensus.choice
    names = [n for n in a.names if n != REFERENCE]
    real = len(names)
    agreement = [lab.agreement for lab in labels if lab.answers > 1]
    degenerate = a.degenerate[:, :real]
    return {
        **({"reputation": picked.reputation} if picked.reputation is not None else {}),
        "mean_agreement": round_float(np.mean(agreement), 4) if agreement else None,
        "pseudo_labels": len(labels), "unlabelled": len(prompts) - len(labels), "prompts": len(prompts),
        "cut_share": {n: round_float(1 - a.finished[:, i].mean()) for i, n in enumerate(names)},
        "cut_share_by_domain": share_by_domain(prompts, names, ~a.finished[:, :real]),
        "degenerate_share": {n: round_float(degenerate[:, i].mean()) for i, n in enumerate(names)},
        "label_share": label_share(labels, a.names),
        "expert_share": expert_share(prompts, labels, experts),
        "answer_quality": answer_quality(prompts, a.names[:real], a.texts, choice, picked.vectors, picked.text_ids,
                                         embedder),
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


def share_by_domain(prompts: list[Prompt], names: list[str], flags: np.ndarray) -> dict[str, dict[str, float]]:
    """Per client and prompt domain, the share of answers with ``flags`` [prompts, clients] set."""
    domains = sorted({p.domain for p in prompts})
    rows = {d: [k for k, p in enumerate(prompts) if p.domain == d] for d in domains}
    return {n: {d: round_float(flags[rows[d], i].mean()) for d in domains} for i, n in enumerate(names)}


def answer_quality(prompts: list[Prompt], names: list[str], texts: list[list[str]], choice: np.ndarray,
                   vectors: np.ndarray, text_ids: np.ndarray, embedder: Embedder) -> dict | None:
    """ROUGE-L and embedding cosine to the held-back references, on the labelled prompts that have one: of the
    chosen pseudo-labels, of each client's own answers and of a uniformly random client's answer (its
    expectation: the mean over clients). The direct check that consensus picks better answers than a client.
    ``texts`` may hold more columns than ``names`` (the reference itself, under oracle_reference)."""
    rows = [k for k, p in enumerate(prompts) if p.reference is not None and choice[k] >= 0]
    if not rows or not names:
        return None
    columns = range(len(texts[rows[0]]))
    refs = embedder([prompts[k].reference for k in rows])
    rouge = np.array([[rouge_l(texts[k][i], prompts[k].reference) for i in columns] for k in rows])
    cos = np.array([[float(vectors[text_ids[k, i]] @ refs[r]) if text_ids[k, i] >= 0 else 0.0 for i in columns]
                    for r, k in enumerate(rows)])
    chosen = np.array([choice[k] for k in rows])
    at, own = np.arange(len(rows)), len(names)

    def scores(r: np.ndarray, c: np.ndarray) -> dict[str, float]:
        return {"rouge_l": round_float(r.mean(), 4), "cosine": round_float(c.mean(), 4)}

    return {"prompts": len(rows), "consensus": scores(rouge[at, chosen], cos[at, chosen]),
            "random": scores(rouge[:, :own].mean(1), cos[:, :own].mean(1)),
            "clients": {n: scores(rouge[:, i], cos[:, i]) for i, n in enumerate(names)}}


def round_float(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))
