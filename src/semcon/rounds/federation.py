"""The round loop of the method (docs/method.md, "The round"), shared by every transport (in-process and Flower).

A transport is a ``ClientGroup``: it runs the clients' side of a phase and hands back encoded payloads or
small reports. The loop owns the server side: aggregation, the ledger, pseudo-labels and checkpoints, so
both transports write the same run directory and can resume it. The method's ``schedule`` says which
rounds communicate and which train; ``metrics.py`` measures and writes what happened.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from semcon.config import RunConfig
from semcon.data import Prompt
from semcon.protocol import Limits, Message, RunSetup, decode_all, encode, ledger_row
from semcon.rounds.metrics import Phases, RoundResult, round_line, round_row, summarize
from semcon.rounds.rundir import RunDir, RunState
from semcon.rounds.tracking import tracking

if TYPE_CHECKING:  # the round loop never touches a model: the client types are for reading only
    from semcon.member.client import Client
    from semcon.member.train import TrainStats

log = logging.getLogger(__name__)
Tick = Callable[..., None]


class FederationError(RuntimeError):
    """The run cannot go on (too few clients answered); its state up to the last round is intact."""


@dataclass(frozen=True)
class Schedule:
    """Which rounds communicate and which train, for every method: round 0 trains on private data only,
    rounds 1..R communicate then train, and parameter averaging adds round R+1, which only delivers the
    final average (so that the evaluated model is the global one). Methods that never communicate only train."""

    rounds: int
    communicating: bool = True
    final_average: bool = False

    @property
    def last(self) -> int:
        return self.rounds + 1 if self.final_average else self.rounds

    def communicates(self, t: int) -> bool:
        return self.communicating and 1 <= t <= self.last

    def trains(self, t: int) -> bool:
        return 0 <= t <= self.rounds


class Algorithm(Protocol):
    """The server side of a method (its client side: ``Member``)."""

    name: str
    schedule: Schedule
    prompts: list[Prompt]  # the public prompts the clients answer (none for parameter averaging)
    upload_phase: str | None  # the phase that produces the upload: "generate" or "upload" (None: nothing is uploaded)
    limits: Limits  # what its messages may hold, either way; the codec refuses more before allocating it

    def asked(self, t: int) -> list[Prompt]: ...  # the public prompts of round t
    def aggregate(self, t: int, messages: dict[str, Message]) -> RoundResult: ...
    def restore(self, rounds: list[dict]) -> None: ...  # server state carried across rounds, from resumed rows


class Member(Protocol):
    """The client side of a method, which the transports call on each client (``assembly.client_round``, the
    in-process group, the Flower ClientApp); ``upload`` and ``receive`` only where the method has an
    ``upload_phase``."""

    def upload(self, client: Client, t: int, on_progress: Callable | None = None) -> Message: ...
    def receive(self, client: Client, msg: Message) -> None: ...
    def train(self, client: Client, t: int, on_step: Callable | None = None) -> TrainStats: ...


class Method(Algorithm, Member, Protocol):
    """A method's two halves: the server's and the member's."""


class ClientGroup(Protocol):
    """The clients' side of each phase, behind some transport. Each phase names the clients that take part;
    failures are reported, not raised."""

    names: list[str]

    def train_units(self, members: list[str]) -> int: ...  # progress ticks of a training phase
    def recipients(self, members: list[str]) -> list[str]: ...  # those of ``members`` a broadcast reaches now
    def setup(self, t: int) -> list[str]: ...  # clients the run's setup reached this round
    def evaluate(self, base: bool) -> dict[str, dict]: ...
    def upload(self, t: int, members: list[str], tick: Tick) -> tuple[dict[str, bytes], dict[str, str]]: ...
    def train(self, t: int, download: bytes | None, members: list[str], tick: Tick
              ) -> tuple[dict[str, dict], dict[str, str]]: ...
    def checkpoint(self, t: int, members: list[str]) -> None: ...
    def save_adapters(self, directory: Path) -> None: ...


def cohort(names: list[str], per_round: int | None, seed: int, t: int) -> list[str]:
    """The clients that take part in round ``t`` (they take the download and train, and answer in round
    t+1): all, or ``per_round`` of them drawn by ``random.Random(f"{seed}:cohort:{t}")``, the same draw for
    every method; in config order."""
    if per_round is None or per_round >= len(names):
        return list(names)
    drawn = set(random.Random(f"{seed}:cohort:{t}").sample(names, per_round))
    return [n for n in names if n in drawn]


def federate(cfg: RunConfig, run_dir: RunDir, algo: Algorithm, group: ClientGroup, progress=None,
             state: RunState | None = None) -> dict:
    """Run (or continue) the rounds and the final evaluation, each metrics row mirrored to the trackers of
    ``cfg.log``; return the summary."""
    with tracking(cfg, run_dir.path, run_dir.run_id, algo.schedule.last) as mirror:
        run_dir.mirror = mirror
        try:
            return _rounds(cfg, run_dir, algo, group, progress, state)
        finally:
            run_dir.mirror = None


def _rounds(cfg: RunConfig, run_dir: RunDir, algo: Algorithm, group: ClientGroup, progress,
            state: RunState | None) -> dict:
    state = state or RunState()
    algo.restore(state.rounds)
    started, earlier = time.perf_counter(), state.seconds
    if state.next_round == 0 and cfg.eval.before:
        with Phases(progress)("evaluate", label="base models"):
            state.before = group.evaluate(base=True)
    setup = [(m, encode(m)) for m in setup_messages(cfg, algo.prompts)]  # encoded once, as a transport sends it

    def sampled(t: int) -> list[str]:
        return cohort(group.names, cfg.per_round, cfg.seed, t)

    for t in range(state.next_round, algo.schedule.last + 1):
        r, result, download = Round(t, run_dir, group, cfg.needed_clients, progress), None, None
        members = sampled(t) if algo.schedule.trains(t) else group.names  # the final average reaches everyone
        if algo.schedule.communicates(t):
            # answers (or adapters) up from last round's cohort, then consensus
            result = r.aggregate(algo, r.upload(algo.upload_phase, sampled(t - 1)) if algo.upload_phase else {})
            download = r.broadcast(result, members)  # pseudo-labels (or the average) down
        reports = r.train(download, members, required=algo.schedule.trains(t))  # private data ∪ pseudo-labels
        r.setup(setup, counted=algo.schedule.communicating)  # the config and prompts this round delivered
        state.rounds.append(round_row(t, r.phases, r.ledger, reports, r.failures, result, cfg.network, members))
        run_dir.metric("round", **state.rounds[-1])
        log.info(round_line(state.rounds[-1]))
        group.checkpoint(t, list(reports))
        state.next_round, state.seconds = t + 1, earlier + time.perf_counter() - started
        state.save(run_dir)

    with Phases(progress)("evaluate", label="after training"):
        after = group.evaluate(base=False)
    group.save_adapters(run_dir.adapters)
    for stage, table in (("before", state.before), ("after", after)):
        for client, per_domain in table.items():
            run_dir.metric("eval", stage=stage, client=client, metrics=per_domain)
    return summarize(cfg, algo.name, group.names, state, after, earlier + time.perf_counter() - started)


def setup_messages(cfg: RunConfig, prompts: list[Prompt]) -> list[RunSetup]:
    """What every client gets once per run: the resolved config, and the public prompts where there are any."""
    public = [RunSetup("public", prompts={p.id: p.instruction for p in prompts})] if prompts else []
    return [RunSetup("config", config=cfg.dump()), *public]


class Round:
    """One round's bookkeeping: its phases (seconds, memory, progress), its ledger rows and who failed.
    Too few clients in any phase stop the run with FederationError; the state of the round before stays."""

    def __init__(self, t: int, run_dir: RunDir, group: ClientGroup, needed: int, progress=None):
        self.t, self.run_dir, self.group, self.needed = t, run_dir, group, needed
        self.phases = Phases(progress, t)
        self.ledger: list[dict] = []
        self.failures: dict[str, str] = {}

    def quorum(self, what: str, ok: list[str], rejected: dict[str, str] | None = None) -> None:
        if len(ok) < self.needed:
            why = "; ".join(f"{n}: {r}" for n, r in {**self.failures, **(rejected or {})}.items()) or "no reason reported"
            raise FederationError(f"round {self.t}: only {len(ok)} client(s) completed {what} "
                                  f"({', '.join(ok) or 'none'}), min_clients={self.needed} ({why}); state kept up "
                                  f"to round {self.t - 1}: `semcon resume {self.run_dir.path}` continues from there")

    def setup(self, encoded: list[tuple[RunSetup, bytes]], counted: bool = True) -> None:
        """Record the clients the run's setup reached this round (a transport sends it with a client's first
        message), each message counted in the ledger as its kind (not for a method that never communicates:
        distributing its config is deployment, not its traffic)."""
        for name in self.group.setup(self.t):
            if counted:
                self.ledger += [self.run_dir.ledger(ledger_row(self.t, name, "down", m, data)) for m, data in encoded]

    def upload(self, phase: str, members: list[str]) -> dict[str, bytes]:
        with self.phases(phase, total=len(members), label=f"round {self.t}") as tick:
            payloads, self.failures = self.group.upload(self.t, members, tick)
        self.quorum("the upload", list(payloads))
        return payloads

    def aggregate(self, algo: Algorithm, payloads: dict[str, bytes]) -> RoundResult:
        with self.phases("aggregate", label=f"round {self.t}"):
            messages, undecodable = self.receive(payloads, algo.limits)
            result = algo.aggregate(self.t, messages)
            result.rejected = {**undecodable, **result.rejected}
            if result.uploads:
                self.run_dir.uploads(self.t, result.uploads)
        if algo.upload_phase:
            self.quorum("a valid upload", result.accepted, result.rejected)
        return result

    def receive(self, payloads: dict[str, bytes], limits: Limits) -> tuple[dict[str, Message], dict[str, str]]:
        """Decode every upload once, within ``limits``, and record each in the ledger from the bytes that
        actually moved (one that does not decode counts as raw bytes and is rejected with its reason)."""
        messages, undecodable = decode_all(payloads, limits)
        for name, payload in payloads.items():
            if name in messages:
                self.ledger.append(self.run_dir.ledger(ledger_row(self.t, name, "up", messages[name], payload)))
            else:
                self.ledger.append(self.run_dir.ledger(ledger_row(self.t, name, "up", None, payload)))
                log.warning("round %d: rejected the upload of client %r: %s", self.t, name, undecodable[name])
        return messages, undecodable

    def broadcast(self, result: RoundResult, members: list[str]) -> bytes:
        """Encode the download once and record it for every client it reaches; keep the pseudo-labels."""
        with self.phases("transfer"):
            download = encode(result.download)
            self.ledger += [self.run_dir.ledger(ledger_row(self.t, name, "down", result.download, download))
                            for name in self.group.recipients(members)]
        if result.labels:
            self.run_dir.pseudo_labels(self.t, result.labels)
        return download

    def train(self, download: bytes | None, members: list[str], required: bool) -> dict[str, dict]:
        """The clients take the download and train (``required``: a round without training only delivers)."""
        if not required and download is None:
            return {}
        with self.phases("train", total=self.group.train_units(members), label=f"round {self.t}") as tick:
            reports, failures = self.group.train(self.t, download, members, tick)
        self.failures |= failures
        if required:
            self.quorum("training", list(reports))
        return reports
