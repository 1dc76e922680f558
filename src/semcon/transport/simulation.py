"""The in-process transport: every client and the server in one process, moving encoded bytes.

``LocalGroup`` runs the clients' side of each phase for the round loop in ``federation.py``; ``run`` and
``resume`` drive a run directory (``assembly.assemble`` builds the federation).
"""

from __future__ import annotations

import logging
from pathlib import Path

from semcon.config import RunConfig, config_key
from semcon.data import public_prompts
from semcon.member.client import answer_together, evaluate_together
from semcon.protocol import decode, encode
from semcon.rounds.energy import EnergyMeter
from semcon.rounds.federation import federate
from semcon.rounds.rundir import RunDir, RunState
from semcon.transport.assembly import Federation, assemble, client_round

log = logging.getLogger(__name__)


class LocalGroup:
    """The in-process transport: every client lives in this process and exchanges encoded bytes.

    Clients run their heavy phases one after another (two trainings at once do not fit in 24 GiB).
    """

    def __init__(self, fed: Federation, checkpoints: Path, answered: dict[int, dict[str, bytes]] | None = None):
        self.fed, self.checkpoints = fed, checkpoints
        self.clients = {c.name: c for c in fed.clients}
        self.names = list(self.clients)
        self.answered = answered or {}  # round -> client -> upload already answered (a fork's round 1)

    def train_units(self, members: list[str]) -> int:
        labels = len(self.fed.algorithm.asked(1))  # at most one per prompt of a round
        return sum(self.clients[n].planned_steps(labels) for n in members)

    def recipients(self, members: list[str]) -> list[str]:
        return members

    def setup(self, t: int) -> list[str]:
        """In one process every client shares the config and prompts: they count as sent in a run's round 0."""
        return self.names if t == 0 else []

    def evaluate(self, base: bool) -> dict[str, dict]:
        """Metrics per client per domain. One model is evaluated once: the base model once per shared
        backbone (with it, clients that never trained: their adapter adds exactly zero), and clients whose
        adapters are equal (FedAvg's after its final averaging) once; distinct adapters on one base answer
        the generation rows in shared batches."""
        model_of = {c.name: (id(c.backbone), "base" if base or c.adds_nothing() else c.adapter_digest())
                    for c in self.clients.values()}
        pick: dict[tuple, object] = {}
        for c in self.clients.values():
            pick.setdefault(model_of[c.name], c)
        adapted = evaluate_together([c for k, c in pick.items() if k[1] != "base"], self.fed.eval_sets,
                                    self.fed.embedder)
        done = {k: adapted[c.name] if k[1] != "base" else c.evaluate(self.fed.eval_sets, base=True,
                                                                      embed=self.fed.embedder)
                for k, c in pick.items()}
        return {name: done[k] for name, k in model_of.items()}

    def upload(self, t, members, tick):
        algo = self.fed.algorithm
        if set(members) <= set(self.answered.get(t, {})):  # the same clients answered the same prompts already
            for name in members:
                self.clients[name].sent = dict(decode(self.answered[t][name], algo.limits).answers)
                tick()
            return {n: self.answered[t][n] for n in members}, {}
        if algo.upload_phase == "generate":  # clients on one base model answer in shared batches
            try:
                uploads = answer_together([self.clients[n] for n in members], t, algo.asked(t))
            except Exception as e:  # reported for every client of the batch, as a failed phase behind Flower
                return {}, {n: f"{type(e).__name__}: {e}" for n in members}
            for _ in members:
                tick()
            return {n: encode(uploads[n]) for n in members}, {}
        return self._each(members, lambda c: encode(algo.upload(c, t)), tick)

    def train(self, t, download, members, tick):
        return self._each(members, lambda c: client_round(c, self.fed.algorithm, t, download, self.fed.eval_sets,
                                                          on_step=lambda *_: tick()))

    def _each(self, members: list[str], work, tick=None) -> tuple[dict, dict[str, str]]:
        """``work`` for each member; one that raises is reported as failed with its reason, the rest go on."""
        done, failed = {}, {}
        for name in members:
            try:
                done[name] = work(self.clients[name])
            except Exception as e:  # a client's failure is reported, as behind Flower
                failed[name] = f"{type(e).__name__}: {e}"
                log.warning("client %s failed: %s", name, failed[name], exc_info=log.isEnabledFor(logging.DEBUG))
            if tick:
                tick()
        return done, failed

    def checkpoint(self, t: int, members: list[str]) -> None:
        """Save the adapters that changed this round (an unsampled client's stays as it was saved)."""
        for name in members:
            self.clients[name].save_state(self.checkpoints, t)

    def restore(self, saved: dict[str, int]) -> None:
        """Load each client's adapter of the round it was last saved (``saved``; absent: never trained)."""
        for c in self.clients.values():
            want = saved.get(c.name)
            if want is not None and c.restore_state(self.checkpoints, want) != want:
                raise FileNotFoundError(f"{self.checkpoints}: no round-{want} adapter of client {c.name!r} to "
                                        "resume from")

    def save_adapters(self, directory: Path) -> None:
        for c in self.clients.values():
            c.backbone.save_adapter(c.name, directory)


def run(cfg: RunConfig, out: Path, progress=None, overwrite: bool = False) -> dict:
    """Run the whole federation into ``out`` and return the summary (with its energy, where measurable).
    ``out`` must be new or empty, or an earlier semcon run with ``overwrite``."""
    return _session(cfg, RunDir.create(out, cfg, overwrite), progress)


def resume(out: Path, progress=None) -> dict:
    """Continue a crashed or killed run from its last completed round, with nothing lost or repeated."""
    run_dir = RunDir(out)
    cfg = run_dir.config(check_files=True)
    if run_dir.has_state():
        return _session(cfg, run_dir, progress, resuming=True)
    log.info("%s has no completed round yet: starting it again", out)
    return run(cfg, out, progress, overwrite=True)


def fork(source: Path, cfg: RunConfig, out: Path, progress=None) -> dict:
    """Run ``cfg`` into ``out`` from ``source``'s round 0, and its round-1 answers where they are the same
    (``config_key``: runs that differ only in what the server does with the answers), instead of computing them
    again. Its round-0 rows, state and adapters are copied; round 1 sends the kept uploads again."""
    source, run_dir = RunDir(source), RunDir.create(out, cfg)
    other = source.config()
    if config_key(other, "round0") != config_key(cfg, "round0"):
        raise ValueError(f"{source.path} differs from this run in more than what acts on uploads and the consensus")
    run_dir.fork_from(source)
    if config_key(other, "answers") != config_key(cfg, "answers"):
        log.info("%s: round 0 from %s", out, source.path)
        return _session(cfg, run_dir, progress, resuming=True)
    answered = {n: encode(u) for n, u in source.kept_uploads(1).items()}
    log.info("%s: round 0 and round 1's answers from %s", out, source.path)
    return _session(cfg, run_dir, progress, resuming=True, answered={1: answered})


def _session(cfg: RunConfig, run_dir: RunDir, progress, resuming: bool = False,
             answered: dict[int, dict[str, bytes]] | None = None) -> dict:
    with EnergyMeter(cfg.eval.energy) as meter:
        fed = assemble(cfg, prompts=run_dir.public_prompts(lambda: public_prompts(cfg)))
        group = LocalGroup(fed, run_dir.client_checkpoints, answered)
        state = None
        if resuming:
            state = RunState.load(run_dir)  # after setup, which seeds: this restores the RNG
            group.restore(state.saved_rounds())  # everything needed is checked before rewind changes files
            run_dir.rewind(state.next_round)
            log.info("resuming %s at round %d", run_dir.path, state.next_round)
        log.info("%s: %d clients, %d public prompts, eval domains: %s", fed.algorithm.name, len(fed.clients),
                 len(fed.prompts), ", ".join(fed.eval_sets))
        summary = federate(cfg, run_dir, fed.algorithm, group, progress, state)
    summary["energy_kwh"], summary["energy_method"] = meter.result.kwh, meter.result.method
    run_dir.summary(summary)
    return summary
