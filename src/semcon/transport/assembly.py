"""Building a federation from a config, for either transport: the splits, the base models loaded once,
the clients with their resolved settings, and the method; and a client's part of a round after the upload.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from semcon.config import RunConfig
from semcon.coordinator.algorithms import make_algorithm
from semcon.data import Example, Prompt, build_splits, experts_of
from semcon.data.canaries import canaries, plant
from semcon.embed import Embedder
from semcon.member.attacks import poison
from semcon.member.audit import privacy_report
from semcon.member.client import Client, client_seed
from semcon.member.models import BackbonePool, pick_device, pick_dtype
from semcon.protocol import decode
from semcon.rounds.federation import Method


@dataclass
class Federation:
    """Everything a run holds: clients (adapters on shared backbones), the method, prompts, eval sets."""

    clients: list[Client]
    algorithm: Method  # SemanticConsensus | FedAvg | LocalOnly
    prompts: list[Prompt]
    eval_sets: dict[str, list[Example]]
    embedder: Embedder


def assemble(cfg: RunConfig, prompts: list[Prompt] | None = None, node: str | None = None) -> Federation:
    """Build the splits, load each distinct base model once, create the clients and the method.

    ``prompts``: the public prompts already drawn (kept in the run directory, or sent by the server).
    ``node``: build only that client, from its own data (a Flower node; ids and seeds stay the config's).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = build_splits(cfg, prompts, node)
    if (owner := cfg.canary_client) in splits.private:  # the audit's secrets, planted before any method sees the data
        splits.private[owner] = plant(splits.private[owner], canaries(cfg.privacy.canaries, cfg.seed),
                                      cfg.privacy.repeats)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    members = [(i, c) for i, c in enumerate(cfg.clients) if node is None or c.name == node]
    backbones = BackbonePool([c.model for _, c in members], dtype, device, cfg.resident_models, cfg.memory_budget_gb)
    embedder = Embedder(cfg.consensus.embedder, batch_size=cfg.consensus.embed_batch_size)
    if cfg.method == "centralized":  # one model on the pooled private data, the same total training budget
        pooled = [e for c in cfg.clients for e in splits.private[c.name]]
        clients = [Client(0, "centralized", backbones[cfg.clients[0].model], pooled,
                          cfg.client_settings(None, steps=cfg.train.steps * len(cfg.clients)))]
    else:
        common_init = cfg.seed if cfg.method in ("fedavg", "fedprox") else None
        clients = [Client(i, c.name, backbones[c.model], trained_on(cfg, i, c.name, splits.private[c.name]),
                          cfg.client_settings(c.name), adapter_seed=common_init, embedder=embedder) for i, c in members]
    algorithm = make_algorithm(cfg, splits.public, embedder, experts=None if node else experts_of(cfg, splits))
    return Federation(clients, algorithm, splits.public, splits.eval, embedder)


def trained_on(cfg: RunConfig, cid: int, name: str, private: list[Example]) -> list[Example]:
    """Client ``name``'s private rows as it trains on them: an attacker with ``poison_private`` swaps responses."""
    attack = cfg.attack_of(name)
    return poison(private, client_seed(cfg.seed, 0, cid)) if attack is not None and attack.poison_private else private


def client_round(client: Client, algo: Method, t: int, download: bytes | None, eval_sets: dict[str, list[Example]],
                 on_step=None) -> dict:
    """A client's part of round ``t`` after the upload: take the download, train where the schedule says
    so, and measure its held-out reference scores. A small JSON-able report; the same code runs behind Flower."""
    if download is not None:
        algo.receive(client, decode(download, algo.limits))
    report = asdict(algo.train(client, t, on_step=on_step)) if algo.schedule.trains(t) else {}
    if client.settings.eval.every_round:
        report["reference"] = client.reference(eval_sets)
    if privacy := privacy_report(client):
        report["privacy"] = privacy
    return report
