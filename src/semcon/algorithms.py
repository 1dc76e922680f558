"""The methods compared in one harness: semantic consensus and the baselines.

Each is a small object with the same five calls, split like Flower's Strategy into client-side work
(``upload``, ``receive``, ``train``) and server-side work (``aggregate``), plus ``communicates(t)``.
They share data, models, rounds and the local training budget; only what crosses the wire differs.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from semcon.client import Client
from semcon.config import RunConfig
from semcon.data import Prompt
from semcon.embed import Embedder
from semcon.protocol import AdapterUpdate, Limits, Message, accept_uploads, adapter_limits, text_limits
from semcon.server import RoundResult, Server
from semcon.train import TrainStats


class FederationError(RuntimeError):
    """The run cannot go on (too few clients answered); its state up to the last round is intact."""


class Algorithm(Protocol):
    name: str
    upload_phase: str  # the phase that produces the upload: "generate" or "upload"
    limits: Limits  # what its messages may hold, either way; the codec refuses more before allocating it

    def communicates(self, t: int) -> bool: ...
    def upload(self, client: Client, t: int, on_progress=None) -> Message: ...
    def aggregate(self, t: int, messages: dict[str, Message]) -> RoundResult: ...
    def receive(self, client: Client, msg: Message) -> None: ...
    def train(self, client: Client, t: int, on_step=None) -> TrainStats: ...


class SemanticConsensus:
    """Round 0 private only; round t: answers up, semantic medoid, pseudo-labels down, train on the union."""

    name, upload_phase = "semantic_consensus", "generate"

    def __init__(self, server: Server, prompts: list[Prompt], rounds: int):
        self.server, self.prompts, self.rounds = server, prompts, rounds
        self.limits = text_limits(len(prompts), server.cfg.max_answer_chars)

    def communicates(self, t: int) -> bool:
        return 1 <= t <= self.rounds

    def upload(self, client, t, on_progress=None):
        return client.answer(t, self.prompts, on_batch=on_progress)

    def aggregate(self, t, messages):
        return self.server.aggregate(t, self.prompts, messages)

    def receive(self, client, msg):
        client.pseudo = msg

    def train(self, client, t, on_step=None):
        return client.train(t, self.prompts, on_step=on_step)


class FedAvg:
    """LoRA-FedAvg (FedIT): train, upload adapters, average them weighted by example count, download.

    With ``mu`` > 0 it is FedProx: local training adds (μ/2)||w - w_global||². A final averaging after
    the last training round makes the evaluated model the global one.
    """

    upload_phase = "upload"

    def __init__(self, rounds: int, clients: list[str], mu: float = 0.0, max_adapter_bytes: int = 256 << 20):
        self.rounds, self.clients, self.mu = rounds, clients, mu
        self.limits = adapter_limits(max_adapter_bytes)
        self.name = "fedprox" if mu > 0 else "fedavg"
        self.reference: dict[str, torch.Tensor] | None = None  # keys and shapes every upload must have

    def communicates(self, t: int) -> bool:
        return 1 <= t <= self.rounds + 1

    def upload(self, client, t, on_progress=None):
        return client.adapter_update(t)

    def aggregate(self, t, messages):
        updates, rejected = accept_uploads(t, self.clients, messages,
                                           lambda msg, name: (self._check(msg, name, t), msg.num_examples))
        if not updates:
            raise FederationError(f"round {t}: no valid adapter upload; rejected: {rejected}")
        averaged = average_states([s for s, _ in updates.values()], [n for _, n in updates.values()])
        download = AdapterUpdate(round=t, client="server", tensors=save_tensors(averaged))
        return RoundResult(download, labels=[], accepted=list(updates), rejected=rejected)

    def _check(self, msg, name: str, t: int) -> dict[str, torch.Tensor]:
        if not isinstance(msg, AdapterUpdate) or msg.client != name or msg.round != t:
            raise ValueError(f"expected the round-{t} adapter of {name!r}, got {msg.kind} for "
                             f"{getattr(msg, 'client', '?')!r}, round {msg.round}")
        try:
            state = load_tensors(msg.tensors)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt bytes
            raise ValueError(f"adapter tensors do not parse ({type(e).__name__})") from None
        if self.reference is None:
            self.reference = {k: v for k, v in state.items()}
        if set(state) != set(self.reference) or any(state[k].shape != v.shape for k, v in self.reference.items()):
            raise ValueError("adapter keys or shapes differ from the federation's")
        if not all(torch.isfinite(v).all() for v in state.values()) or msg.num_examples <= 0:
            raise ValueError("adapter has non-finite values or no examples")
        return state

    def receive(self, client, msg):
        client.load_adapter(msg)

    def train(self, client, t, on_step=None):
        return client.train(t, [], prox_mu=self.mu, on_step=on_step)


class LocalOnly:
    """Each client trains on its private data only and never communicates (also used for centralized,
    whose single client holds the pooled private data)."""

    upload_phase = "upload"

    def __init__(self, name: str = "local"):
        self.name = name
        self.limits = adapter_limits(0)  # nothing is ever sent

    def communicates(self, t: int) -> bool:
        return False

    def upload(self, client, t, on_progress=None):
        raise NotImplementedError("local training never communicates")

    def aggregate(self, t, payloads):
        raise NotImplementedError("local training never communicates")

    def receive(self, client, msg):
        raise NotImplementedError("local training never communicates")

    def train(self, client, t, on_step=None):
        return client.train(t, [], on_step=on_step)


def average_states(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of tensors with the same keys (FedAvg), in float32."""
    total = float(sum(weights))
    if not states or not math.isfinite(total) or total <= 0:
        raise ValueError("nothing to average")
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)).contiguous() for k in states[0]}


def make_algorithm(cfg: RunConfig, prompts: list[Prompt], embedder: Embedder | None = None) -> Algorithm:
    """The method of ``cfg``; the server side of semantic consensus embeds with ``embedder``."""
    names = [c.name for c in cfg.clients]
    if cfg.method == "semantic_consensus":
        return SemanticConsensus(Server(cfg.consensus, names, embedder, seed=cfg.seed), prompts, cfg.rounds)
    if cfg.method in ("fedavg", "fedprox"):
        return FedAvg(cfg.rounds, names, mu=cfg.train.prox_mu if cfg.method == "fedprox" else 0.0,
                      max_adapter_bytes=int(cfg.train.max_adapter_mb * 2**20))
    return LocalOnly(cfg.method)
