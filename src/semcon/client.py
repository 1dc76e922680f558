"""A client: its own model (a LoRA adapter on a shared base), its private data, and the things it does."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_tensors

from semcon.config import RunConfig
from semcon.data import Example, Prompt
from semcon.evaluate import evaluate_client
from semcon.generate import generate
from semcon.models import Backbone
from semcon.names import child
from semcon.protocol import AdapterUpdate, Download, Upload
from semcon.train import TokenizedExample, TrainStats, mean_nll, tokenize, train_lora


class Client:
    """Trains on private data plus the pseudo-labels it last received, answers public prompts, evaluates itself.

    Holds no weights of its own beyond its adapter: ``backbone`` may be shared with other clients.
    ``adapter_seed`` makes adapters start identical (parameter averaging needs a common start).
    """

    def __init__(self, cid: int, name: str, backbone: Backbone, private: list[Example], cfg: RunConfig,
                 adapter_seed: int | None = None, steps: int | None = None):
        self.cid, self.name, self.backbone, self.cfg = cid, name, backbone, cfg
        self.private = private
        self.steps = cfg.train.steps if steps is None else steps
        own = next((c for c in cfg.clients if c.name == name), None)  # None for the centralized model
        self.lora = own.lora if own and own.lora else cfg.train.lora
        self.lr = own.lr if own and own.lr else cfg.train.lr
        self.batch_size = own.batch_size if own and own.batch_size else cfg.train.batch_size
        self.max_new_tokens = own.max_new_tokens if own and own.max_new_tokens else cfg.generate.max_new_tokens
        self.fmt = backbone.fmt
        self.pseudo: Download | None = None
        self._private_tok = self._tokenize([(e.instruction, e.response, 1.0) for e in private])
        if name not in backbone.adapters:
            backbone.add_adapter(name, self.lora, seed=self.seed(0) if adapter_seed is None else adapter_seed)

    def seed(self, round: int) -> int:
        return self.cfg.seed * 1_000_003 + round * 1_009 + self.cid

    def _tokenize(self, triples: list[tuple[str, str, float]]) -> list[TokenizedExample]:
        return tokenize(self.fmt, triples, self.cfg.train.max_length)

    def train(self, round: int, prompts: list[Prompt], prox_mu: float = 0.0, on_step=None) -> TrainStats:
        """Fine-tune the adapter on private data ∪ pseudo-labelled public prompts (a plain union, weight λ)."""
        import torch

        examples = list(self._private_tok)
        lam = self.cfg.train.pseudo_label_weight
        if self.pseudo is not None and lam > 0:
            by_id = {p.id: p.instruction for p in prompts}
            examples += self._tokenize([(by_id[pid], text, lam) for pid, text in self.pseudo.labels.items()
                                        if pid in by_id])
        torch.manual_seed(self.seed(round))
        t = self.cfg.train
        with self.backbone.active(self.name) as model:
            return train_lora(model, self.fmt, examples, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                              seed=self.seed(round), device=self.backbone.device, dtype=self.backbone.dtype,
                              micro_batch_tokens=t.micro_batch_tokens, prox_mu=prox_mu, on_step=on_step)

    def answer(self, round: int, prompts: list[Prompt], on_batch=None) -> Upload:
        """Greedy answers to every public prompt, as text."""
        g = self.cfg.generate
        with self.backbone.active(self.name) as model:
            outs = generate(model, self.fmt, [p.instruction for p in prompts], max_new_tokens=self.max_new_tokens,
                            batch_size=g.batch_size, device=self.backbone.device, dtype=self.backbone.dtype,
                            on_batch=on_batch)
        return Upload(round=round, client=self.name, answers={p.id: o.text for p, o in zip(prompts, outs)})

    def adapter_update(self, round: int) -> AdapterUpdate:
        """This client's adapter tensors, for the parameter-averaging baselines."""
        return AdapterUpdate(round=round, client=self.name, tensors=save_tensors(self._adapter_tensors()),
                             num_examples=len(self.private))

    def _adapter_tensors(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.backbone.adapter_state(self.name).items()}

    def load_adapter(self, msg: AdapterUpdate) -> None:
        self.backbone.load_adapter_state(self.name, load_tensors(msg.tensors))

    def nll(self, eval_sets: dict[str, list[Example]]) -> dict[str, float]:
        """Held-out reference NLL per domain (teacher forced, response tokens only): cheap, every round."""
        with self.backbone.active(self.name) as model:
            return {d: round(mean_nll(model, self.fmt, self._tokenize([(e.instruction, e.response, 1.0) for e in rows]),
                                      batch_size=self.cfg.eval.batch_size, device=self.backbone.device,
                                      dtype=self.backbone.dtype), 5) for d, rows in eval_sets.items()}

    def evaluate(self, eval_sets: dict[str, list[Example]], base: bool = False, embed=None) -> dict:
        """Every held-out metric per domain (see ``evaluate.py``); ``base``: the model without adapter."""
        e, g = self.cfg.eval, self.cfg.generate
        with self.backbone.active(None if base else self.name) as model:
            return evaluate_client(model, self.fmt, eval_sets, embed=embed, max_length=self.cfg.train.max_length,
                                   batch_size=e.batch_size, generate_answers=e.generate,
                                   max_new_tokens=e.max_new_tokens or self.max_new_tokens, gen_batch_size=g.batch_size,
                                   device=self.backbone.device, dtype=self.backbone.dtype)

    def save_state(self, directory: Path, round: int, keep: int = 2) -> Path:
        """Write the adapter as it stands after ``round`` (atomically) and keep only the last ``keep``."""
        folder = child(directory, self.name, "client name")
        folder.mkdir(parents=True, exist_ok=True)
        path, tmp = folder / f"round_{round:02d}.safetensors", folder / f".round_{round:02d}.tmp"
        save_file(self._adapter_tensors(), tmp)
        os.replace(tmp, path)
        for old in sorted(folder.glob("round_*.safetensors"))[:-keep]:
            old.unlink()
        return path

    def restore_state(self, directory: Path, upto: int) -> int | None:
        """Load the newest saved adapter of a round <= ``upto``; None (fresh adapter) when there is none."""
        folder = child(directory, self.name, "client name")
        saved = {int(p.stem.split("_")[1]): p for p in folder.glob("round_*.safetensors")}
        rounds = [r for r in saved if r <= upto]
        if not rounds:
            return None
        self.backbone.load_adapter_state(self.name, load_file(saved[max(rounds)]))
        return max(rounds)
