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

from semcon.config import ConsensusConfig
from semcon.consensus import semantic_medoid
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


class SemanticConsensus:
    """Round 0 private only; round t: answers up, semantic medoid, pseudo-labels down, train on the union.
    The server side holds the embedder and the consensus rule, and no model of its own."""

    name, upload_phase = "semantic_consensus", "generate"

    def __init__(self, cfg: ConsensusConfig, clients: list[str], prompts: list[Prompt], rounds: int,
                 embedder: Embedder | None = None, seed: int = 0):
        self.cfg, self.seed, self.prompts = cfg, seed, prompts
        self.clients = clients  # client id = position; identical texts go to the lowest id
        self.embedder = embedder or Embedder(cfg.embedder, batch_size=cfg.embed_batch_size)
        self.schedule = Schedule(rounds)
        self.limits = text_limits(len(prompts), cfg.max_answer_chars)

    # the client side
    def upload(self, client, t, on_progress=None):
        return client.answer(t, self.prompts, on_batch=on_progress)

    def receive(self, client, msg):
        client.pseudo = msg

    def train(self, client, t, on_step=None):
        return client.train(t, self.prompts, on_step=on_step)

    # the server side

    def accept(self, round: int, messages: dict[str, Message]) -> tuple[dict[str, Upload], dict[str, str]]:
        """Validate every decoded upload; an invalid one is rejected for this round with its reason."""
        ids = {p.id for p in self.prompts}

        def valid(msg, name: str) -> Upload:
            if problems := validate_upload(msg, client=name, round=round, prompt_ids=ids,
                                           max_chars=self.cfg.max_answer_chars):
                raise ProtocolError("; ".join(problems))
            return msg

        return accept_uploads(round, self.clients, messages, valid)

    def aggregate(self, round: int, messages: dict[str, Message]) -> RoundResult:
        """One consensus step: validate, embed all answers in one batch, medoid over the candidates of all
        prompts at once."""
        prompts = self.prompts
        uploads, rejected = self.accept(round, messages)
        names = list(uploads)  # in client-id order
        shape = (len(prompts), len(names))
        texts = [[uploads[n].answers[p.id] for n in names] for p in prompts]
        finished = np.array([[uploads[n].finished[p.id] for n in names] for p in prompts], dtype=bool).reshape(shape)
        degenerate = np.array([[is_degenerate(t) for t in row] for row in texts], dtype=bool).reshape(shape)
        blank = np.array([[is_blank(t) for t in row] for row in texts], dtype=bool).reshape(shape)
        confidence = np.array([[uploads[n].confidence.get(p.id, np.nan) for n in names] for p in prompts],
                              dtype=float).reshape(shape)
        candidate = ~blank
        if self.cfg.truncated == "drop":
            candidate &= finished
        if self.cfg.degenerate == "drop":
            candidate &= ~degenerate

        start = time.perf_counter()
        unique = sorted({t for row, ok in zip(texts, ~blank) for t, v in zip(row, ok) if v})
        vectors = self.embedder(unique)
        index = {t: i for i, t in enumerate(unique)}
        text_ids = np.array([[index.get(t, -1) for t in row] for row in texts], dtype=int).reshape(shape)
        emb = np.zeros((*shape, self.embedder.dim), dtype=np.float32)
        emb[candidate] = vectors[text_ids[candidate]]
        seconds_embed = time.perf_counter() - start

        result = semantic_medoid(emb, candidate, threshold=self.cfg.threshold, text_ids=text_ids,
                                 confidence=confidence, tie_seed=(self.seed % 2**32, round))

        labels, unlabelled = [], []
        for pi, p in enumerate(prompts):
            c = int(result.choice[pi])
            if c < 0:
                unlabelled.append(p.id)
                continue
            conf = confidence[pi, c]
            labels.append(PseudoLabel(p.id, p.instruction, names[c], texts[pi][c], round_float(result.agreement[pi]),
                                      int(result.valid_count[pi]), bool(finished[pi, c]),
                                      round_float(conf) if np.isfinite(conf) else None))
        download = Download(round=round, labels={lab.prompt_id: lab.text for lab in labels},
                            finished={lab.prompt_id: lab.finished for lab in labels})
        agreement = [lab.agreement for lab in labels if lab.answers > 1]
        metrics = {
            "mean_agreement": round_float(np.mean(agreement), 4) if agreement else None,
            "pseudo_labels": len(labels), "unlabelled": len(unlabelled), "prompts": len(prompts),
            "cut_share": {n: round_float(1 - finished[:, i].mean()) for i, n in enumerate(names)},
            "cut_share_by_domain": share_by_domain(prompts, names, ~finished),
            "degenerate_share": {n: round_float(degenerate[:, i].mean()) for i, n in enumerate(names)},
            "answer_quality": answer_quality(prompts, names, texts, result.choice, vectors, text_ids, self.embedder),
        }
        return RoundResult(download, names, rejected, labels, metrics, seconds={"embed": seconds_embed})


def share_by_domain(prompts: list[Prompt], names: list[str], flags: np.ndarray) -> dict[str, dict[str, float]]:
    """Per client and prompt domain, the share of answers with ``flags`` [prompts, clients] set."""
    domains = sorted({p.domain for p in prompts})
    rows = {d: [k for k, p in enumerate(prompts) if p.domain == d] for d in domains}
    return {n: {d: round_float(flags[rows[d], i].mean()) for d in domains} for i, n in enumerate(names)}


def answer_quality(prompts: list[Prompt], names: list[str], texts: list[list[str]], choice: np.ndarray,
                   vectors: np.ndarray, text_ids: np.ndarray, embedder: Embedder) -> dict | None:
    """ROUGE-L and embedding cosine to the held-back references, on the labelled prompts that have one: of the
    chosen pseudo-labels, of each client's own answers and of a uniformly random client's answer (its
    expectation: the mean over clients). The direct check that consensus picks better answers than a client."""
    rows = [k for k, p in enumerate(prompts) if p.reference is not None and choice[k] >= 0]
    if not rows or not names:
        return None
    refs = embedder([prompts[k].reference for k in rows])
    rouge = np.array([[rouge_l(texts[k][i], prompts[k].reference) for i in range(len(names))] for k in rows])
    cos = np.array([[float(vectors[text_ids[k, i]] @ refs[r]) if text_ids[k, i] >= 0 else 0.0
                     for i in range(len(names))] for r, k in enumerate(rows)])
    chosen = np.array([choice[k] for k in rows])
    at = np.arange(len(rows))

    def scores(r: np.ndarray, c: np.ndarray) -> dict[str, float]:
        return {"rouge_l": round_float(r.mean(), 4), "cosine": round_float(c.mean(), 4)}

    return {"prompts": len(rows), "consensus": scores(rouge[at, chosen], cos[at, chosen]),
            "random": scores(rouge.mean(1), cos.mean(1)),
            "clients": {n: scores(rouge[:, i], cos[:, i]) for i, n in enumerate(names)}}


def round_float(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))
