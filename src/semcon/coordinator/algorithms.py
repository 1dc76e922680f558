"""The baselines beside semantic consensus (``server.py``), and the schedule every method follows.

A method is a small object split like Flower's Strategy into client-side work (``upload``, ``receive``,
``train``) and server-side work (``aggregate``), with a ``schedule``. They share data, models, rounds and
the local training budget; only what crosses the wire differs.
"""

from __future__ import annotations

import math

import torch
from safetensors.torch import save as save_tensors

from semcon.config import LOCAL_PLUS, ConfigError, RunConfig, method_problem
from semcon.coordinator.server import SemanticConsensus
from semcon.data import Prompt
from semcon.embed import Embedder
from semcon.protocol import AdapterUpdate, accept_uploads, adapter_limits, check_adapter
from semcon.rounds.federation import Schedule
from semcon.rounds.metrics import RoundResult


class FedAvg:
    """LoRA-FedAvg (FedIT): train, upload adapters, average them weighted by example count, download.

    With ``mu`` > 0 it is FedProx: local training adds (μ/2)||w - w_global||². A final averaging after
    the last training round makes the evaluated model the global one.
    """

    upload_phase = "upload"

    def __init__(self, rounds: int, clients: list[str], mu: float = 0.0, max_adapter_bytes: int = 256 << 20):
        self.schedule, self.prompts = Schedule(rounds, final_average=True), []
        self.clients, self.mu = clients, mu
        self.limits = adapter_limits(max_adapter_bytes)
        self.name = "fedprox" if mu > 0 else "fedavg"
        self.reference: dict[str, torch.Tensor] | None = None  # keys and shapes every upload must have

    def restore(self, rounds):  # nothing is carried: each round averages what arrives
        pass

    def asked(self, t):  # no public prompts
        return []

    def upload(self, client, t, on_progress=None):
        return client.adapter_update(t)

    def aggregate(self, t, messages):
        def check(msg, name):
            state = check_adapter(msg, name, t, self.reference)
            self.reference = self.reference or state
            return state, msg.num_examples

        updates, rejected = accept_uploads(t, self.clients, messages, check)
        if not updates:
            return RoundResult(None, accepted=[], rejected=rejected)
        averaged = average_states([s for s, _ in updates.values()], [n for _, n in updates.values()])
        download = AdapterUpdate(round=t, client="server", tensors=save_tensors(averaged))
        return RoundResult(download, accepted=list(updates), rejected=rejected)

    def receive(self, client, msg):
        client.load_adapter(msg)

    def train(self, client, t, on_step=None):
        return client.train(t, [], prox_mu=self.mu, on_step=on_step)


class LocalOnly:
    """Each client trains on its private data only and never communicates (also used for centralized,
    whose single client holds the pooled private data)."""

    def __init__(self, rounds: int, name: str = "local"):
        self.name, self.schedule, self.prompts = name, Schedule(rounds, communicating=False), []

    def restore(self, rounds):  # nothing is carried
        pass

    def asked(self, t):  # no public prompts
        return []

    def upload(self, client, t, on_progress=None):
        raise RuntimeError(f"{self.name} exchanges nothing: it has no upload")

    def receive(self, client, msg):
        raise RuntimeError(f"{self.name} exchanges nothing: it receives no download")

    def train(self, client, t, on_step=None):
        return client.train(t, [], on_step=on_step)


def average_states(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of tensors with the same keys (FedAvg), in float32."""
    total = float(sum(weights))
    if not states or not math.isfinite(total) or total <= 0:
        raise ValueError("nothing to average")
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)).contiguous() for k in states[0]}


def make_algorithm(cfg: RunConfig, prompts: list[Prompt], embedder: Embedder | None = None,
                   experts: dict[str, str] | None = None):
    """The method of ``cfg``; the server side of semantic consensus embeds with ``embedder`` and knows each
    domain's ``experts`` for measurement (``data.experts_of``). Raises ConfigError when the method cannot run on
    these clients (see ``method_problem``)."""
    if problem := method_problem(cfg):
        raise ConfigError(problem)
    names = [c.name for c in cfg.clients]
    if cfg.method == "semantic_consensus":
        return SemanticConsensus(cfg.consensus, names, prompts, cfg.rounds, embedder, seed=cfg.seed,
                                 experts=experts, public=cfg.public)
    if cfg.method in ("fedavg", "fedprox"):
        return FedAvg(cfg.rounds, names, mu=cfg.train.prox_mu if cfg.method == "fedprox" else 0.0,
                      max_adapter_bytes=int(cfg.train.max_adapter_mb * 2**20))
    return LocalOnly(cfg.rounds, LOCAL_PLUS if cfg.method == "local" and cfg.train.extra_steps else cfg.method)
