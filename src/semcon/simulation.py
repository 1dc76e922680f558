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
from pathlib import Path

import numpy as np
import torch

from semcon.client import Client
from semcon.config import RunConfig
from semcon.data import build_splits
from semcon.models import Backbone, pick_device, pick_dtype
from semcon.protocol import Download, Upload, decode, encode
from semcon.rundir import RunDir
from semcon.server import Server

log = logging.getLogger(__name__)


class Phases:
    """Seconds per phase of one round, and a progress bar per phase (``progress`` is a rich Progress)."""

    def __init__(self, progress=None):
        self.progress = progress
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str, total: int | None = None, label: str = ""):
        task = self.progress.add_task(f"{name:<9} {label}", total=total) if self.progress else None
        start = time.perf_counter()
        try:
            yield (lambda n=1: self.progress.advance(task, n)) if task is not None else (lambda n=1: None)
        finally:
            self.seconds[name] += time.perf_counter() - start
            if task is not None:
                self.progress.remove_task(task)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def send_up(run: RunDir, msg: Upload) -> bytes:
    payload = encode(msg)
    run.ledger(msg.round, msg.client, "up", msg, payload)
    return payload


def broadcast(run: RunDir, msg: Download, clients: list[str]) -> dict[str, Download]:
    """One encoding, delivered to (and counted for) every client; each decodes its own copy."""
    payload = encode(msg)
    received = {}
    for name in clients:
        run.ledger(msg.round, name, "down", msg, payload)
        received[name] = decode(payload)
    return received


def setup(cfg: RunConfig) -> tuple[list[Client], Server, list, dict]:
    """Build the data splits, load each distinct base model once, and create clients and server."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = build_splits(cfg)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    backbones = {spec: Backbone.load(spec, dtype, device) for spec in dict.fromkeys(c.model for c in cfg.clients)}
    clients = [Client(i, c.name, backbones[c.model], splits.private[c.name], cfg) for i, c in enumerate(cfg.clients)]
    server = Server(cfg.consensus, [c.name for c in clients])
    return clients, server, splits.public, splits.eval


def evaluate(clients: list[Client], eval_sets: dict, base: bool) -> dict[str, dict[str, float]]:
    """NLL per client per domain; the base model is evaluated once per shared backbone."""
    out, seen = {}, {}
    for c in clients:
        key = id(c.backbone)
        if base and key in seen:
            out[c.name] = seen[key]
            continue
        out[c.name] = seen[key] = c.evaluate(eval_sets, base=base)
    return out


def run(cfg: RunConfig, out: Path, progress=None) -> dict:
    """Run the whole federation into ``out`` and return the summary."""
    run_dir = RunDir.create(out, cfg)
    started = time.perf_counter()
    clients, server, prompts, eval_sets = setup(cfg)
    names = [c.name for c in clients]
    log.info("%d clients, %d public prompts, eval domains: %s", len(clients), len(prompts), ", ".join(eval_sets))

    phases = Phases(progress)
    with phases("evaluate", label="base models"):
        before = evaluate(clients, eval_sets, base=True) if cfg.eval.before else {}
    rounds = []
    pseudo: dict[str, Download | None] = {n: None for n in names}
    for t in range(cfg.rounds + 1):
        phases = Phases(progress)
        result = None
        if t > 0:  # round 0 has no consensus yet: private data only
            with phases("generate", total=len(clients) * len(prompts), label=f"round {t}") as tick:
                uploads = [c.answer(t, prompts, on_batch=tick) for c in clients]
            with phases("transfer"):
                payloads = {u.client: send_up(run_dir, u) for u in uploads}
            with phases("consensus", label=f"round {t}"):
                result = server.aggregate(t, prompts, payloads)
            with phases("transfer"):
                pseudo = broadcast(run_dir, result.download, names)
            run_dir.pseudo_labels(t, result.labels)
        with phases("train", total=len(clients) * cfg.train.steps, label=f"round {t}") as tick:
            stats = {c.name: c.train(t, pseudo[c.name], prompts, on_step=lambda *_: tick()) for c in clients}
        rounds.append(round_metrics(run_dir, t, phases, stats, result, len(prompts)))
        log.info(round_line(rounds[-1]))

    with phases("evaluate", label="after training"):
        after = evaluate(clients, eval_sets, base=False)
    for c in clients:
        c.backbone.save_adapter(c.name, run_dir.adapters)
    for stage, table in (("before", before), ("after", after)):
        for client, per_domain in table.items():
            run_dir.metric("eval", stage=stage, client=client, nll=per_domain)
    summary = {
        "name": cfg.name, "rounds": cfg.rounds, "clients": names, "seconds": round(time.perf_counter() - started, 2),
        "own_domain": {c.name: cfg.clients[c.cid].data.domain if cfg.clients[c.cid].data else None for c in clients},
        "nll_before": before, "nll_after": after, "per_round": rounds,
        "bytes_up": sum(r["bytes_up"] for r in rounds), "bytes_down": sum(r["bytes_down"] for r in rounds),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    run_dir.summary(summary)
    return summary


def round_metrics(run_dir: RunDir, t: int, phases: Phases, stats: dict, result, num_prompts: int) -> dict:
    """One ``metrics.jsonl`` row per round: traffic, seconds per phase, agreement, losses, memory."""
    ledger = [r for r in run_dir.rows("ledger.jsonl") if r["round"] == t]
    row = {
        "round": t,
        "bytes_up": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up"),
        "bytes_down": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "down"),
        "raw_bytes_up": sum(r["raw_bytes"] for r in ledger if r["direction"] == "up"),
        "seconds": {k: round(v, 3) for k, v in phases.seconds.items()},
        "train_loss": {n: [round(s.loss_first, 4), round(s.loss_last, 4)] for n, s in stats.items()},
        "train_tokens": {n: s.tokens for n, s in stats.items()},
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    if result is not None:
        row["seconds"]["embed"] = round(result.seconds_embed, 3)
        row.update(mean_agreement=round(result.mean_agreement, 4) if not np.isnan(result.mean_agreement) else None,
                   pseudo_labels=len(result.labels), unlabelled=len(result.unlabelled),
                   rejected=result.rejected, accepted=result.accepted, prompts=num_prompts)
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
