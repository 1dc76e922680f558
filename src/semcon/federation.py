"""The round loop of DESIGN.md §1, shared by every transport (in-process and Flower).

A transport is a ``ClientGroup``: it runs the clients' side of a phase and hands back encoded
payloads or small reports. The loop owns the server side: aggregation, the ledger, pseudo-labels,
metrics and checkpoints, so both transports write the same run directory and can resume it.
"""

from __future__ import annotations

import base64
import logging
import os
import resource
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from semcon.algorithms import Algorithm, FederationError
from semcon.config import NetworkConfig, RunConfig
from semcon.protocol import Download, Limits, Message, decode_all, encode
from semcon.rundir import RunDir, RunDirError

log = logging.getLogger(__name__)
Tick = Callable[..., None]


class ClientGroup(Protocol):
    """The clients' side of each phase, behind some transport. Failures are reported, not raised."""

    names: list[str]
    train_units: int  # progress ticks of a training phase

    def recipients(self) -> list[str]: ...  # clients a broadcast reaches now
    def evaluate(self, base: bool) -> dict[str, dict]: ...
    def upload(self, t: int, tick: Tick) -> tuple[dict[str, bytes], dict[str, str]]: ...
    def train(self, t: int, download: bytes | None, tick: Tick) -> tuple[dict[str, dict], dict[str, str]]: ...
    def checkpoint(self, t: int) -> None: ...
    def save_adapters(self, directory: Path) -> None: ...


@dataclass
class RunState:
    """What a resumed run needs besides the files it appends to: the next round, the per-round rows,
    the base-model evaluation and the RNG. Written atomically after every completed round."""

    next_round: int = 0
    rounds: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the completed rounds, over every session
    torch_rng: str = ""

    def save(self, run_dir: RunDir) -> None:
        self.torch_rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
        run_dir.save_state(asdict(self))

    @classmethod
    def load(cls, run_dir: RunDir) -> RunState | None:
        """The state after the last completed round (restoring the RNG), or None before the first."""
        saved = run_dir.load_state()
        if saved is None:
            return None
        try:
            state = cls(**saved)
            if state.torch_rng:
                rng = np.frombuffer(base64.b64decode(state.torch_rng), dtype=np.uint8).copy()
                torch.set_rng_state(torch.from_numpy(rng))
        except (TypeError, ValueError, RuntimeError) as e:
            raise RunDirError(f"{run_dir.state_path}: not a semcon checkpoint state ({e})") from None
        return state


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


def receive_uploads(run_dir: RunDir, t: int, payloads: dict[str, bytes], limits: Limits
                    ) -> tuple[dict[str, Message], dict[str, str], list[dict]]:
    """Decode every upload once, within ``limits``, and record each in the ledger from the bytes that
    actually moved (one that does not decode counts as raw bytes and is rejected with its reason)."""
    messages, undecodable = decode_all(payloads, limits)
    rows = []
    for name, payload in payloads.items():
        if name in messages:
            rows.append(run_dir.ledger(t, name, "up", messages[name], payload))
        else:
            rows.append(run_dir.ledger_row(t, name, "up", "invalid", len(payload), len(payload)))
            log.warning("round %d: rejected the upload of client %r: %s", t, name, undecodable[name])
    return messages, undecodable, rows


def quorum(cfg: RunConfig, t: int, what: str, ok: list[str], failures: dict[str, str], run_dir: RunDir) -> None:
    need = cfg.needed_clients
    if len(ok) < need:
        why = "; ".join(f"{n}: {r}" for n, r in failures.items()) or "no reason reported"
        raise FederationError(f"round {t}: only {len(ok)} client(s) completed {what} ({', '.join(ok) or 'none'}), "
                              f"min_clients={need} ({why}); state kept up to round {t - 1}: "
                              f"`semcon resume {run_dir.path}` continues from there")


def federate(cfg: RunConfig, run_dir: RunDir, algo: Algorithm, group: ClientGroup, progress=None,
             state: RunState | None = None) -> dict:
    """Run (or continue) the rounds and the final evaluation; return the summary."""
    state = state or RunState()
    started, earlier = time.perf_counter(), state.seconds
    n = len(group.names)
    if state.next_round == 0 and cfg.eval.before:
        with Phases(progress)("evaluate", label="base models"):
            state.before = group.evaluate(base=True)
    for t in range(state.next_round, cfg.rounds + 2):  # round 0: private data only; the extra round: final averaging
        phases, result, download, failures, ledger = Phases(progress, t), None, None, {}, []
        if algo.communicates(t):
            with phases(algo.upload_phase, total=n, label=f"round {t}") as tick:
                payloads, failures = group.upload(t, tick)
            quorum(cfg, t, "the upload", list(payloads), failures, run_dir)
            with phases("aggregate", label=f"round {t}"):
                messages, undecodable, ledger = receive_uploads(run_dir, t, payloads, algo.limits)
                result = algo.aggregate(t, messages)
                result.rejected = {**undecodable, **result.rejected}
            quorum(cfg, t, "a valid upload", result.accepted, {**failures, **result.rejected}, run_dir)
            with phases("transfer"):
                download = encode(result.download)  # one encoding, broadcast to every client
                ledger += [run_dir.ledger(t, name, "down", result.download, download) for name in group.recipients()]
            if result.labels:
                run_dir.pseudo_labels(t, result.labels)
        reports = {}
        if t <= cfg.rounds or download is not None:
            with phases("train", total=group.train_units, label=f"round {t}") as tick:
                reports, train_failures = group.train(t, download, tick)
            failures |= train_failures
            if t <= cfg.rounds:
                quorum(cfg, t, "training", list(reports), failures, run_dir)
        if reports or result:
            state.rounds.append(round_metrics(run_dir, t, phases, ledger, reports, result, failures, cfg))
            log.info(round_line(state.rounds[-1]))
        group.checkpoint(t)
        state.next_round, state.seconds = t + 1, earlier + time.perf_counter() - started
        state.save(run_dir)

    with Phases(progress)("evaluate", label="after training"):
        after = group.evaluate(base=False)
    group.save_adapters(run_dir.adapters)
    for stage, table in (("before", state.before), ("after", after)):
        for client, per_domain in table.items():
            run_dir.metric("eval", stage=stage, client=client, metrics=per_domain)
    rounds = state.rounds
    return {
        "name": cfg.name, "method": algo.name, "rounds": cfg.rounds, "clients": group.names,
        "seconds": round(earlier + time.perf_counter() - started, 2),
        "own_domain": {name: own_domain(cfg, name) for name in group.names},
        "eval_before": state.before, "eval_after": after, "per_round": rounds,
        "bytes_up": sum(r["bytes_up"] for r in rounds), "bytes_down": sum(r["bytes_down"] for r in rounds),
        "failures": {r["round"]: r["failed"] for r in rounds if r.get("failed")},
        "peak_rss_gb": round(peak_rss_gb(), 3), "seed": cfg.seed,
        # examples (private + pseudo-labels) left out of the last round's training for exceeding train.max_length
        "dropped_too_long": next((r["dropped_too_long"] for r in reversed(rounds) if r.get("dropped_too_long")), {}),
    }


def own_domain(cfg: RunConfig, name: str) -> str | None:
    """The client's private domain when each client has one (partition=category)."""
    if cfg.data.partition != "category" or cfg.method == "centralized":
        return None
    return next((c.data.domain for c in cfg.clients if c.name == name and c.data), None)


def modelled_transfer_s(ledger: list[dict], net: NetworkConfig) -> float:
    """Transfer time of one round under the link model: clients send in parallel, then receive in
    parallel; each message costs the latency plus its encoded bytes over the link."""
    def slowest(direction: str, mbps: float) -> float:
        times = [net.latency_ms / 1e3 + r["encoded_bytes"] * 8 / (mbps * 1e6) for r in ledger
                 if r["direction"] == direction]
        return max(times, default=0.0)

    return slowest("up", net.uplink_mbps) + slowest("down", net.downlink_mbps)


def round_metrics(run_dir: RunDir, t: int, phases: Phases, ledger: list[dict], reports: dict[str, dict], result,
                  failures: dict[str, str], cfg: RunConfig) -> dict:
    """One ``metrics.jsonl`` row per round (``ledger``: this round's rows): traffic, seconds per phase,
    agreement, losses, memory, failures."""
    trained = {n: r for n, r in reports.items() if r.get("steps") is not None}
    row = {
        "round": t,
        "bytes_up": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up"),
        "bytes_down": sum(r["encoded_bytes"] for r in ledger if r["direction"] == "down"),
        "raw_bytes_up": sum(r["raw_bytes"] for r in ledger if r["direction"] == "up"),
        "seconds": {k: round(v, 3) for k, v in phases.seconds.items()},
        "phase_peak_rss_gb": dict(phases.peak_rss_gb),
        "train_loss": {n: [round(r["loss_first"], 4), round(r["loss_last"], 4)] for n, r in trained.items()},
        "modelled_transfer_s": round(modelled_transfer_s(ledger, cfg.network), 3),
        "train_tokens": {n: r["tokens"] for n, r in trained.items()},
        "completed": list(reports),  # clients that finished the train phase (their adapter of this round is saved)
        "reference": {n: r["reference"] for n, r in reports.items() if r.get("reference")},
        "dropped_too_long": {n: r["dropped_too_long"] for n, r in trained.items()},
        "failed": failures,
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    if result is not None:
        row.update(rejected=result.rejected, accepted=result.accepted)
    if result is not None and isinstance(result.download, Download):  # semantic consensus
        # phases are disjoint: "aggregate" keeps decoding, validation and the medoid, "embed" the embedder
        row["seconds"]["embed"] = round(result.seconds_embed, 3)
        row["seconds"]["aggregate"] = round(max(row["seconds"]["aggregate"] - result.seconds_embed, 0.0), 3)
        row.update(mean_agreement=round(result.mean_agreement, 4) if not np.isnan(result.mean_agreement) else None,
                   pseudo_labels=len(result.labels), unlabelled=len(result.unlabelled),
                   prompts=len(result.labels) + len(result.unlabelled), cut_share=result.cut_share,
                   cut_share_by_domain=result.cut_share_by_domain,
                   degenerate_share=result.degenerate_share, answer_quality=result.answer_quality)
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
    if r.get("failed"):
        parts.append(f"failed {', '.join(r['failed'])}")
    return " | ".join(parts)
