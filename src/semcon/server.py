"""The server: decodes and validates uploads, embeds the answers, picks one consensus answer per prompt."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from semcon.config import ConsensusConfig
from semcon.consensus import semantic_medoid
from semcon.data import Prompt
from semcon.embed import Embedder
from semcon.protocol import Download, Message, ProtocolError, Upload, accept_uploads, is_blank, validate_upload


@dataclass(frozen=True)
class PseudoLabel:
    """One row of ``pseudo_labels/round_NN.jsonl``."""

    prompt_id: str
    prompt: str
    client: str  # whose answer was chosen
    text: str
    agreement: float  # mean cosine of the chosen answer to the other answers
    answers: int  # valid answers that took part


@dataclass
class RoundResult:
    download: Download
    labels: list[PseudoLabel]
    accepted: list[str]
    rejected: dict[str, str] = field(default_factory=dict)  # client -> reason
    unlabelled: list[str] = field(default_factory=list)  # prompt ids without a pseudo-label
    seconds_embed: float = 0.0
    seconds_consensus: float = 0.0

    @property
    def mean_agreement(self) -> float:
        scores = [lab.agreement for lab in self.labels if lab.answers > 1]
        return float(np.mean(scores)) if scores else float("nan")


class Server:
    """Holds the embedder and the consensus rule; keeps no model of its own."""

    def __init__(self, cfg: ConsensusConfig, clients: list[str], embedder: Embedder | None = None):
        self.cfg = cfg
        self.clients = clients  # client id = position; ties go to the lowest id
        self.embedder = embedder or Embedder(cfg.embedder, batch_size=cfg.embed_batch_size)

    def accept(self, round: int, prompts: list[Prompt], messages: dict[str, Message]) -> tuple[dict[str, Upload], dict[str, str]]:
        """Validate every decoded upload; an invalid one is rejected for this round with its reason."""
        ids = {p.id for p in prompts}

        def valid(msg, name: str) -> Upload:
            if problems := validate_upload(msg, client=name, round=round, prompt_ids=ids,
                                           max_chars=self.cfg.max_answer_chars):
                raise ProtocolError("; ".join(problems))
            return msg

        return accept_uploads(round, self.clients, messages, valid)

    def aggregate(self, round: int, prompts: list[Prompt], messages: dict[str, Message]) -> RoundResult:
        """One consensus step: validate, embed all answers in one batch, medoid for all prompts at once."""
        uploads, rejected = self.accept(round, prompts, messages)
        names = list(uploads)  # in client-id order
        texts = [[uploads[n].answers[p.id] for n in names] for p in prompts]
        valid = np.array([[not is_blank(t) for t in row] for row in texts], dtype=bool).reshape(len(prompts), len(names))

        start = time.perf_counter()
        unique = sorted({t for row, ok in zip(texts, valid) for t, v in zip(row, ok) if v})
        vectors = self.embedder(unique)
        index = {t: i for i, t in enumerate(unique)}
        emb = np.zeros((len(prompts), len(names), self.embedder.dim), dtype=np.float32)
        for pi, row in enumerate(texts):
            for ci, t in enumerate(row):
                if valid[pi, ci]:
                    emb[pi, ci] = vectors[index[t]]
        seconds_embed = time.perf_counter() - start

        start = time.perf_counter()
        result = semantic_medoid(emb, valid, threshold=self.cfg.threshold)
        seconds_consensus = time.perf_counter() - start

        labels, unlabelled = [], []
        for pi, p in enumerate(prompts):
            c = int(result.choice[pi])
            if c < 0:
                unlabelled.append(p.id)
                continue
            labels.append(PseudoLabel(p.id, p.instruction, names[c], texts[pi][c],
                                      round_float(result.agreement[pi]), int(result.valid_count[pi])))
        download = Download(round=round, labels={lab.prompt_id: lab.text for lab in labels})
        return RoundResult(download, labels, names, rejected, unlabelled, seconds_embed, seconds_consensus)


def round_float(x: float, digits: int = 6) -> float:
    return float(round(float(x), digits))
