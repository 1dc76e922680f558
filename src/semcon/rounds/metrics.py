"""What a run measures and writes about itself: seconds and peak memory per phase, one metrics row per
round, the log line and the summary. The round loop calls these; it computes none of it."""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from semcon.comm import adapter_bytes
from semcon.config import NetworkConfig, RunConfig
from semcon.protocol import Message
from semcon.provenance import provenance

if TYPE_CHECKING:
    from semcon.rounds.rundir import RunState

log = logging.getLogger(__name__)


@dataclass
class RoundResult:
    """What the server side of a round produced: the download, and the method's own account of it."""

    download: Message | None  # None only when no upload was valid (the quorum check stops the run)
    accepted: list[str]
    rejected: dict[str, str] = field(default_factory=dict)  # client -> reason
    labels: list = field(default_factory=list)  # pseudo-labels to write for this round
    metrics: dict = field(default_factory=dict)  # method-specific fields of the round's metrics row
    seconds: dict[str, float] = field(default_factory=dict)  # parts of the aggregate phase timed apart
    uploads: list = field(default_factory=list)  # the valid uploads as rows, kept in uploads/round_NN.jsonl


class Phases:
    """Seconds and peak RSS per phase of one round, and a progress bar per phase (a rich Progress)."""

    def __init__(self, progress=None, round: int | None = None):
        self.progress, self.round = progress, round
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_rss_gb: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str, total: int | None = None, label: str = ""):
        fault_point(self.round, name)
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


def fault_point(round: int | None, phase: str) -> None:
    """Fault injection for the crash/resume tests: ``SEMCON_KILL_AT=ROUND:PHASE`` SIGKILLs this process
    as that phase starts, as a power cut or OOM kill would."""
    if os.environ.get("SEMCON_KILL_AT") == f"{round}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)


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


def modelled_transfer_s(ledger: list[dict], net: NetworkConfig) -> float:
    """Transfer time of one round under the link model: clients send in parallel, then receive in
    parallel; each message costs the latency plus its encoded bytes over the link."""
    def slowest(direction: str, mbps: float) -> float:
        times = [net.latency_ms / 1e3 + r["encoded_bytes"] * 8 / (mbps * 1e6) for r in ledger
                 if r["direction"] == direction]
        return max(times, default=0.0)

    return slowest("up", net.uplink_mbps) + slowest("down", net.downlink_mbps)


def round_row(t: int, phases: Phases, ledger: list[dict], reports: dict[str, dict], failures: dict[str, str],
              result: RoundResult | None, net: NetworkConfig, cohort: list[str]) -> dict:
    """One ``metrics.jsonl`` row per round (``ledger``: this round's rows; ``cohort``: the clients that took
    part): traffic, seconds per phase, losses, memory, failures, and what the method's result reports."""
    trained = {n: r for n, r in reports.items() if r.get("steps") is not None}
    row = {
        "round": t,
        "cohort": cohort,
        "bytes_up": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up"),
        "bytes_down": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "down"),
        "raw_bytes_up": sum(r["raw_bytes"] for r in ledger if r["direction"] == "up"),
        "seconds": {k: round(v, 3) for k, v in phases.seconds.items()},
        "phase_peak_rss_gb": dict(phases.peak_rss_gb),
        "train_loss": {n: [round(x, 4) for x in r["losses"]] for n, r in trained.items()},  # per step
        "modelled_transfer_s": round(modelled_transfer_s(ledger, net), 3),
        "train_tokens": {n: r["tokens"] for n, r in trained.items()},
        "completed": list(reports),  # clients that finished the train phase (their adapter of this round is saved)
        "reference": {n: r["reference"] for n, r in reports.items() if r.get("reference")},
        "privacy": {n: r["privacy"] for n, r in reports.items() if r.get("privacy")},  # the audit, per client
        "dropped_too_long": {n: r["dropped_too_long"] for n, r in trained.items()},
        "failed": failures,
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    if result is not None:
        # parts of the aggregate phase timed apart (semantic consensus: the embedder) are their own phases
        for part, seconds in result.seconds.items():
            row["seconds"][part] = round(seconds, 3)
            row["seconds"]["aggregate"] = round(max(row["seconds"]["aggregate"] - seconds, 0.0), 3)
        row.update(rejected=result.rejected, accepted=result.accepted, **result.metrics)
    return row


def round_line(r: dict) -> str:
    s = r["seconds"]
    parts = [f"round {r['round']}", f"up {r['bytes_up']:,} B", f"down {r['bytes_down']:,} B"]
    parts += [f"{k} {v:.1f}s" for k, v in s.items()]
    if r.get("mean_agreement") is not None:
        parts.append(f"agreement {r['mean_agreement']:.3f}")
    if r.get("rejected"):
        parts.append(f"rejected {', '.join(r['rejected'])}")
    if r.get("failed"):
        parts.append(f"failed {', '.join(r['failed'])}")
    return " | ".join(parts)


def own_domain(cfg: RunConfig, name: str) -> str | None:
    """The client's private domain when each client has one (partition=category)."""
    if cfg.data.partition != "category" or cfg.method == "centralized":
        return None
    return next((c.data.domain for c in cfg.clients if c.name == name and c.data), None)


def summarize(cfg: RunConfig, method: str, clients: list[str], state: RunState, after: dict, seconds: float) -> dict:
    """``summary.json``: the run's traffic, time, memory, failures and every client's final evaluation."""
    rounds = state.rounds
    return {
        "name": cfg.name, "method": method, "rounds": cfg.rounds, "clients": clients,
        "attackers": cfg.attackers,  # for measurement only: the attackers' share of the labels, honest quality
        "canary_client": cfg.canary_client,  # the privacy audit's planting client (per_round[...]["privacy"])
        "seconds": round(seconds, 2),
        "own_domain": {name: own_domain(cfg, name) for name in clients},
        "eval_before": state.before, "eval_after": after, "per_round": rounds,
        "bytes_up": sum(r["bytes_up"] for r in rounds), "bytes_down": sum(r["bytes_down"] for r in rounds),
        "failures": {r["round"]: r["failed"] for r in rounds if r.get("failed")},
        "peak_rss_gb": round(peak_rss_gb(), 3), "seed": cfg.seed,
        # examples (private + pseudo-labels) left out of the last round's training for exceeding train.max_length
        "dropped_too_long": next((r["dropped_too_long"] for r in reversed(rounds) if r.get("dropped_too_long")), {}),
        "provenance": provenance(),  # of the session that finished the run
        # an fp32 LoRA adapter of this run's model, for the reports' LoRA-FedAvg comparison (None: unknown shape)
        "adapter_bytes": adapter_bytes(cfg.clients[0].model, cfg.train.lora.r, cfg.train.lora.target_modules),
    }
