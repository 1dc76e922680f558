"""The in-process federation: every client and the server in one process, moving encoded bytes.

``setup`` builds the clients and the method from a config; ``LocalGroup`` is the in-process transport
for the round loop in ``federation.py``; ``run`` and ``resume`` drive a run directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from semcon.algorithms import Algorithm, make_algorithm
from semcon.client import Client
from semcon.config import RunConfig, load_config
from semcon.data import Example, Prompt, build_splits
from semcon.embed import Embedder
from semcon.energy import EnergyMeter
from semcon.federation import RunState, federate
from semcon.models import BackbonePool, pick_device, pick_dtype
from semcon.protocol import decode, encode
from semcon.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Federation:
    """Everything a run holds: clients (adapters on shared backbones), the method, prompts, eval sets."""

    clients: list[Client]
    algorithm: Algorithm
    prompts: list[Prompt]
    eval_sets: dict[str, list[Example]]
    embedder: Embedder


def setup(cfg: RunConfig, only: list[str] | None = None, prompts: list[Prompt] | None = None) -> Federation:
    """Build the splits, load each distinct base model once, create the clients and the method.

    ``only`` builds just those clients (a Flower node holds one; ids and seeds stay those of the config);
    ``prompts`` replaces the public prompts (a Flower node gets them from the server).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = build_splits(cfg)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    members = [(i, c) for i, c in enumerate(cfg.clients) if only is None or c.name in only]
    backbones = BackbonePool([c.model for _, c in members], dtype, device, cfg.resident_models, cfg.memory_budget_gb)
    embedder = Embedder(cfg.consensus.embedder, batch_size=cfg.consensus.embed_batch_size)
    if cfg.method == "centralized":  # one model on the pooled private data, the same total training budget
        pooled = [e for c in cfg.clients for e in splits.private[c.name]]
        clients = [Client(0, "centralized", backbones[cfg.clients[0].model], pooled, cfg,
                          steps=cfg.train.steps * len(cfg.clients))]
    else:
        common_init = cfg.seed if cfg.method in ("fedavg", "fedprox") else None
        clients = [Client(i, c.name, backbones[c.model], splits.private[c.name], cfg, adapter_seed=common_init)
                   for i, c in members]
    public = splits.public if prompts is None else prompts
    return Federation(clients, make_algorithm(cfg, public, embedder), public, splits.eval, embedder)


class LocalGroup:
    """The in-process transport: every client lives in this process and exchanges encoded bytes.

    Clients run their heavy phases one after another (two trainings at once do not fit in 24 GiB).
    """

    def __init__(self, fed: Federation, cfg: RunConfig, checkpoints: Path):
        self.fed, self.cfg, self.checkpoints = fed, cfg, checkpoints
        self.clients = fed.clients
        self.names = [c.name for c in fed.clients]
        self.train_units = sum(c.steps for c in fed.clients)

    def recipients(self) -> list[str]:
        return self.names

    def evaluate(self, base: bool) -> dict[str, dict]:
        """Metrics per client per domain. One model is evaluated once: the base model once per shared
        backbone, and clients whose adapters are equal (FedAvg's after its final averaging) once."""
        out, seen = {}, {}
        for c in self.clients:
            key = (id(c.backbone), None if base else c.adapter_digest())
            if key not in seen:
                seen[key] = c.evaluate(self.fed.eval_sets, base=base, embed=self.fed.embedder)
            out[c.name] = seen[key]
        return out

    def upload(self, t, tick):
        payloads = {}
        for c in self.clients:
            payloads[c.name] = encode(self.fed.algorithm.upload(c, t))
            tick()
        return payloads, {}

    def train(self, t, download, tick):
        return {c.name: client_phase(c, self.fed.algorithm, self.cfg, t, download, self.fed.eval_sets,
                                     on_step=lambda *_: tick()) for c in self.clients}, {}

    def checkpoint(self, t: int) -> None:
        for c in self.clients:
            c.save_state(self.checkpoints, t)

    def restore(self, t: int) -> None:
        for c in self.clients:
            if c.restore_state(self.checkpoints, t) != t:
                raise FileNotFoundError(f"{self.checkpoints}: no round-{t} adapter of client {c.name!r} to resume from")

    def save_adapters(self, directory: Path) -> None:
        for c in self.clients:
            c.backbone.save_adapter(c.name, directory)


def client_phase(client: Client, algo: Algorithm, cfg: RunConfig, t: int, download: bytes | None,
                 eval_sets: dict[str, list[Example]], on_step=None) -> dict:
    """A client's part of round ``t`` after the upload: take the download, train (rounds 0..R), and
    measure its held-out NLL. Returns a small JSON-able report; the same code runs behind Flower."""
    if download is not None:
        algo.receive(client, decode(download, algo.limits))
    report = asdict(algo.train(client, t, on_step=on_step)) if t <= cfg.rounds else {}
    if cfg.eval.every_round:
        report["reference"] = client.reference(eval_sets)
    return report


def run(cfg: RunConfig, out: Path, progress=None, overwrite: bool = False) -> dict:
    """Run the whole federation into ``out`` and return the summary (with its energy, where measurable).
    ``out`` must be new or empty, or an earlier semcon run with ``overwrite``."""
    return _session(cfg, RunDir.create(out, cfg, overwrite), progress)


def resume(out: Path, progress=None) -> dict:
    """Continue a crashed or killed run from its last completed round, with nothing lost or repeated."""
    run_dir = RunDir(out)
    cfg = load_config(run_dir.path / "config.yaml")
    if run_dir.has_state():
        return _session(cfg, run_dir, progress, resuming=True)
    log.info("%s has no completed round yet: starting it again", out)
    return run(cfg, out, progress, overwrite=True)


def _session(cfg: RunConfig, run_dir: RunDir, progress, resuming: bool = False) -> dict:
    with EnergyMeter(cfg.eval.energy) as meter:
        fed = setup(cfg)
        group = LocalGroup(fed, cfg, run_dir.path / "checkpoints" / "clients")
        state = None
        if resuming:
            state = RunState.load(run_dir)  # after setup, which seeds: this restores the RNG
            group.restore(state.next_round - 1)  # everything needed is checked before rewind changes files
            run_dir.rewind(state.next_round)
            log.info("resuming %s at round %d", run_dir.path, state.next_round)
        log.info("%s: %d clients, %d public prompts, eval domains: %s", fed.algorithm.name, len(fed.clients),
                 len(fed.prompts), ", ".join(fed.eval_sets))
        summary = federate(cfg, run_dir, fed.algorithm, group, progress, state)
    summary["energy_kwh"], summary["energy_method"] = meter.result.kwh, meter.result.method
    run_dir.summary(summary)
    return summary


def default_out(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
