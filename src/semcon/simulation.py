"""The in-process federation: every client and the server in one process, moving encoded bytes.

The loop below is the protocol of DESIGN.md §1; the transport is two calls (``send_up``/``broadcast``)
that encode each message once, record it in the ledger and hand the bytes to the other side.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semcon.algorithms import Algorithm, FedAvg, LocalOnly, SemanticConsensus
from semcon.client import Client
from semcon.config import NetworkConfig, RunConfig
from semcon.data import Example, Prompt, build_splits
from semcon.embed import Embedder
from semcon.energy import EnergyMeter
from semcon.models import BackbonePool, pick_device, pick_dtype
from semcon.protocol import Download, Message, decode, encode
from semcon.rundir import RunDir
from semcon.server import Server

log = logging.getLogger(__name__)


class Phases:
    """Seconds and peak RSS per phase of one round, and a progress bar per phase (a rich Progress)."""

    def __init__(self, progress=None):
        self.progress = progress
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_rss_gb: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str, total: int | None = None, label: str = ""):
        task = self.progress.add_task(f"{name:<9} {label}", total=total) if self.progress else None
        start = time.perf_counter()
        reset_peak_rss()
        try:
            yield (lambda n=1: self.progress.advance(task, n)) if task is not None else (lambda n=1: None)
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.peak_rss_gb[name] = max(self.peak_rss_gb[name], round(phase_peak_rss_gb(), 3))
            if task is not None:
                self.progress.remove_task(task)


def peak_rss_gb() -> float:
    """Peak RSS of the whole process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: VmHWM is reset by writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def phase_peak_rss_gb() -> float:
    """Peak RSS since the last reset (VmHWM), else the process peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return peak_rss_gb()


def send_up(run: RunDir, msg: Message) -> bytes:
    payload = encode(msg)
    run.ledger(msg.round, msg.client, "up", msg, payload)
    return payload


def broadcast(run: RunDir, msg: Message, clients: list[str]) -> dict[str, Message]:
    """One encoding, delivered to (and counted for) every client; each decodes its own copy."""
    payload = encode(msg)
    received = {}
    for name in clients:
        run.ledger(msg.round, name, "down", msg, payload)
        received[name] = decode(payload)
    return received


@dataclass
class Federation:
    """Everything a run holds: clients (adapters on shared backbones), the method, prompts, eval sets."""

    clients: list[Client]
    algorithm: Algorithm
    prompts: list[Prompt]
    eval_sets: dict[str, list[Example]]
    embedder: Embedder


def setup(cfg: RunConfig) -> Federation:
    """Build the splits, load each distinct base model once, create the clients and the method."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = build_splits(cfg)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    backbones = BackbonePool([c.model for c in cfg.clients], dtype, device, cfg.resident_models, cfg.memory_budget_gb)
    embedder = Embedder(cfg.consensus.embedder, batch_size=cfg.consensus.embed_batch_size)
    if cfg.method == "centralized":  # one model on the pooled private data, the same total training budget
        pooled = [e for c in cfg.clients for e in splits.private[c.name]]
        clients = [Client(0, "centralized", backbones[cfg.clients[0].model], pooled, cfg,
                          steps=cfg.train.steps * len(cfg.clients))]
    else:
        common_init = cfg.seed if cfg.method in ("fedavg", "fedprox") else None
        clients = [Client(i, c.name, backbones[c.model], splits.private[c.name], cfg, adapter_seed=common_init)
                   for i, c in enumerate(cfg.clients)]
    names = [c.name for c in clients]
    algorithm: Algorithm = {
        "semantic_consensus": lambda: SemanticConsensus(Server(cfg.consensus, names, embedder), splits.public,
                                                        cfg.rounds),
        "fedavg": lambda: FedAvg(cfg.rounds, names),
        "fedprox": lambda: FedAvg(cfg.rounds, names, mu=cfg.train.prox_mu),
        "local": lambda: LocalOnly("local"),
        "centralized": lambda: LocalOnly("centralized"),
    }[cfg.method]()
    return Federation(clients, algorithm, splits.public, splits.eval, embedder)


def evaluate(fed: Federation, base: bool) -> dict[str, dict]:
    """Metrics per client per domain; the base model is evaluated once per shared backbone."""
    out, seen = {}, {}
    for c in fed.clients:
        key = id(c.backbone)
        if not (base and key in seen):
            seen[key] = c.evaluate(fed.eval_sets, base=base, embed=fed.embedder)
        out[c.name] = seen[key]
    return out


def run(cfg: RunConfig, out: Path, progress=None) -> dict:
    """Run the whole federation into ``out`` and return the summary (with its energy, where measurable)."""
    with EnergyMeter(cfg.eval.energy) as meter:
        summary = _run(cfg, out, progress)
    summary["energy_kwh"], summary["energy_method"] = meter.result.kwh, meter.result.method
    RunDir(out).summary(summary)
    return summary


def _run(cfg: RunConfig, out: Path, progress=None) -> dict:
    run_dir = RunDir.create(out, cfg)
    started = time.perf_counter()
    fed = setup(cfg)
    algo, clients = fed.algorithm, fed.clients
    names = [c.name for c in clients]
    log.info("%s: %d clients, %d public prompts, eval domains: %s", algo.name, len(clients), len(fed.prompts),
             ", ".join(fed.eval_sets))

    phases = Phases(progress)
    with phases("evaluate", label="base models"):
        before = evaluate(fed, base=True) if cfg.eval.before else {}
    rounds = []
    for t in range(cfg.rounds + 2):  # round 0 trains on private data only; the extra round is a final averaging
        phases, result = Phases(progress), None
        if algo.communicates(t):
            with phases(algo.upload_phase, total=len(clients), label=f"round {t}") as tick:
                uploads = []
                for c in clients:
                    uploads.append(algo.upload(c, t))
                    tick()
            with phases("transfer"):
                payloads = {u.client: send_up(run_dir, u) for u in uploads}
            with phases("aggregate", label=f"round {t}"):
                result = algo.aggregate(t, payloads)
            with phases("transfer"):
                received = broadcast(run_dir, result.download, names)
            for c in clients:
                algo.receive(c, received[c.name])
            if result.labels:
                run_dir.pseudo_labels(t, result.labels)
        stats, quality = {}, {}
        if t <= cfg.rounds:
            with phases("train", total=sum(c.steps for c in clients), label=f"round {t}") as tick:
                stats = {c.name: algo.train(c, t, on_step=lambda *_: tick()) for c in clients}
        if cfg.eval.every_round and (stats or result):
            with phases("evaluate", label=f"round {t}"):
                quality = {c.name: c.nll(fed.eval_sets) for c in clients}
        if stats or result:
            rounds.append(round_metrics(run_dir, t, phases, stats, result, quality, len(fed.prompts), cfg.network))
            log.info(round_line(rounds[-1]))

    with phases("evaluate", label="after training"):
        after = evaluate(fed, base=False)
    for c in clients:
        c.backbone.save_adapter(c.name, run_dir.adapters)
    for stage, table in (("before", before), ("after", after)):
        for client, per_domain in table.items():
            run_dir.metric("eval", stage=stage, client=client, metrics=per_domain)
    return {
        "name": cfg.name, "method": algo.name, "rounds": cfg.rounds, "clients": names,
        "seconds": round(time.perf_counter() - started, 2),
        "own_domain": {c.name: c.private[0].domain if c.private and cfg.data.partition == "category"
                       and cfg.method != "centralized" else None for c in clients},
        "eval_before": before, "eval_after": after, "per_round": rounds,
        "bytes_up": sum(r["bytes_up"] for r in rounds), "bytes_down": sum(r["bytes_down"] for r in rounds),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def modelled_transfer_s(ledger: list[dict], net: NetworkConfig) -> float:
    """Transfer time of one round under the link model: clients send in parallel, then receive in
    parallel; each message costs the latency plus its encoded bytes over the link."""
    def slowest(direction: str, mbps: float) -> float:
        times = [net.latency_ms / 1e3 + r["encoded_bytes"] * 8 / (mbps * 1e6) for r in ledger
                 if r["direction"] == direction]
        return max(times, default=0.0)

    return slowest("up", net.uplink_mbps) + slowest("down", net.downlink_mbps)


def round_metrics(run_dir: RunDir, t: int, phases: Phases, stats: dict, result, quality: dict, num_prompts: int,
                  net: NetworkConfig) -> dict:
    """One ``metrics.jsonl`` row per round: traffic, seconds per phase, agreement, losses, memory."""
    ledger = [r for r in run_dir.rows("ledger.jsonl") if r["round"] == t]
    row = {
        "round": t,
        "bytes_up": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up"),
        "bytes_down": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "down"),
        "raw_bytes_up": sum(r["raw_bytes"] for r in ledger if r["direction"] == "up"),
        "seconds": {k: round(v, 3) for k, v in phases.seconds.items()},
        "phase_peak_rss_gb": dict(phases.peak_rss_gb),
        "train_loss": {n: [round(s.loss_first, 4), round(s.loss_last, 4)] for n, s in stats.items()},
        "modelled_transfer_s": round(modelled_transfer_s(ledger, net), 3),
        "train_tokens": {n: s.tokens for n, s in stats.items()},
        "eval_nll": quality,
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    if result is not None:
        row.update(rejected=result.rejected, accepted=result.accepted)
    if result is not None and isinstance(result.download, Download):  # semantic consensus
        # phases are disjoint: "aggregate" keeps decoding, validation and the medoid, "embed" the embedder
        row["seconds"]["embed"] = round(result.seconds_embed, 3)
        row["seconds"]["aggregate"] = round(max(row["seconds"]["aggregate"] - result.seconds_embed, 0.0), 3)
        row.update(mean_agreement=round(result.mean_agreement, 4) if not np.isnan(result.mean_agreement) else None,
                   pseudo_labels=len(result.labels), unlabelled=len(result.unlabelled), prompts=num_prompts)
    run_dir.metric("round", **row)
    return row


def round_line(r: dict) -> str:
    s = r["seconds"]
    parts = [f"round {r['round']}", f"up {r['bytes_up']:,} B", f"down {r['bytes_down']:,} B"]
    parts += [f"{k} {v:.1f}s" for k, v in s.items()]
    if r.get("mean_agreement") is not None:
        parts.append(f"agreement {r['mean_agreement']:.3f}")
    if r.get("rejected"):
        parts.append(f"rejected {', '.join(r['rejected'])}")
    return " | ".join(parts)


def default_out(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
