"""A client: its own model (a LoRA adapter on a shared base), its private data, and the three things it does."""

from __future__ import annotations

import torch

from semcon.config import RunConfig
from semcon.data import Example, Prompt
from semcon.generate import generate
from semcon.models import Backbone
from semcon.protocol import Download, Upload
from semcon.train import TokenizedExample, TrainStats, mean_nll, tokenize, train_lora


class Client:
    """Trains on private data plus pseudo-labels, answers public prompts, evaluates itself.

    Holds no weights of its own beyond its adapter: ``backbone`` may be shared with other clients.
    """

    def __init__(self, cid: int, name: str, backbone: Backbone, private: list[Example], cfg: RunConfig):
        self.cid, self.name, self.backbone, self.cfg = cid, name, backbone, cfg
        self.private = private
        self.fmt = backbone.fmt
        self._private_tok = self._tokenize([(e.instruction, e.response, 1.0) for e in private])
        if name not in backbone.adapters:
            backbone.add_adapter(name, cfg.train.lora, seed=self.seed(0))

    def seed(self, round: int) -> int:
        return self.cfg.seed * 1_000_003 + round * 1_009 + self.cid

    def _tokenize(self, triples: list[tuple[str, str, float]]) -> list[TokenizedExample]:
        return tokenize(self.fmt, triples, self.cfg.train.max_length)

    def train(self, round: int, pseudo: Download | None, prompts: list[Prompt], on_step=None) -> TrainStats:
        """Fine-tune the adapter on private data ∪ pseudo-labelled public prompts (a plain union, weight λ)."""
        examples = list(self._private_tok)
        if pseudo is not None:
            by_id = {p.id: p.instruction for p in prompts}
            lam = self.cfg.train.pseudo_label_weight
            examples += self._tokenize([(by_id[pid], text, lam) for pid, text in pseudo.labels.items()
                                        if pid in by_id and lam > 0])
        torch.manual_seed(self.seed(round))
        t = self.cfg.train
        with self.backbone.active(self.name) as model:
            return train_lora(model, self.fmt, examples, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                              seed=self.seed(round), device=self.backbone.device, dtype=self.backbone.dtype,
                              micro_batch_tokens=t.micro_batch_tokens, on_step=on_step)

    def answer(self, round: int, prompts: list[Prompt], on_batch=None) -> Upload:
        """Greedy answers to every public prompt, as text."""
        g = self.cfg.generate
        with self.backbone.active(self.name) as model:
            outs = generate(model, self.fmt, [p.instruction for p in prompts], max_new_tokens=g.max_new_tokens,
                            batch_size=g.batch_size, device=self.backbone.device, dtype=self.backbone.dtype,
                            on_batch=on_batch)
        return Upload(round=round, client=self.name, answers={p.id: o.text for p, o in zip(prompts, outs)})

    def evaluate(self, eval_sets: dict[str, list[Example]], base: bool = False) -> dict[str, float]:
        """Held-out reference NLL per domain (teacher forced, response tokens only); ``base``: no adapter."""
        out = {}
        with self.backbone.active(None if base else self.name) as model:
            for domain, rows in eval_sets.items():
                toks = self._tokenize([(e.instruction, e.response, 1.0) for e in rows])
                out[domain] = round(mean_nll(model, self.fmt, toks, batch_size=self.cfg.eval.batch_size,
                                             device=self.backbone.device, dtype=self.backbone.dtype), 5)
        return out
