"""The Flower ServerApp: the same round loop (``federation.federate``) with Flower nodes as the clients.

The run directory lives on the SuperLink's machine (run config ``run-dir``, written by
``semcon flower run``); it holds the resolved config, and the ledger, pseudo-labels, metrics and
checkpoints exactly as an in-process run writes them. Nodes are known by their ``partition-id``,
never by Flower node id (a restarted node gets a new one), so a node that comes back rejoins.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from semcon.algorithms import FederationError, make_algorithm
from semcon.config import RunConfig, load_config
from semcon.data import Prompt, build_splits
from semcon.embed import Embedder
from semcon.federation import RunState, Tick, federate
from semcon.flower.launch import run_config_overrides
from semcon.rundir import RunDir

log = logging.getLogger(__name__)
app = ServerApp()
POLL_S = 1.0


class FlowerGroup:
    """The clients' side of each phase as Flower messages: one per node, replies matched by message id."""

    def __init__(self, grid: Grid, cfg: RunConfig, run_id: str, config_text: str, prompts: list[Prompt]):
        self.grid, self.cfg = grid, cfg
        self.names = [c.name for c in cfg.clients]
        self.train_units = len(self.names)
        self.node_of: dict[str, int] = {}  # client name -> Flower node id, refreshed every phase
        self.common = {"config": config_text, "run-id": run_id,
                       "prompt-ids": [p.id for p in prompts], "prompts": [p.instruction for p in prompts]}

    def discover(self) -> None:
        """Ask nodes not seen yet which client they hold (their ``partition-id``); forget vanished nodes."""
        live = set(self.grid.get_node_ids())
        self.node_of = {name: node for name, node in self.node_of.items() if node in live}
        new = sorted(live - set(self.node_of.values()))
        if not new:
            return
        replies, _ = self._exchange("query.hello", 0, {str(n): n for n in new}, timeout=self.cfg.flower.phase_timeout_s)
        for key, rec in replies.items():
            name = str(rec["client"])
            if name in self.names:
                if name in self.node_of:
                    log.info("client %r rejoined as node %s", name, key)
                self.node_of[name] = int(key)

    def wait_for_nodes(self) -> None:
        """Wait until every client's node is connected (or the connect timeout, then settle for a quorum)."""
        deadline = time.monotonic() + self.cfg.flower.connect_timeout_s
        while len(self.node_of) < len(self.names) and time.monotonic() < deadline:
            self.discover()
            if len(self.node_of) < len(self.names):
                time.sleep(POLL_S)
        if len(self.node_of) < self.cfg.needed_clients:
            raise FederationError(f"only {len(self.node_of)} of {len(self.names)} clients connected within "
                                  f"{self.cfg.flower.connect_timeout_s:.0f} s (min_clients={self.cfg.needed_clients})")
        log.info("nodes: %s", ", ".join(f"{n}={i}" for n, i in self.node_of.items()))

    def recipients(self) -> list[str]:
        return [n for n in self.names if n in self.node_of]

    def _exchange(self, kind: str, t: int, targets: dict[str, int], timeout: float, tick: Tick | None = None,
                  **extra) -> tuple[dict[str, ConfigRecord], dict[str, str]]:
        """Send one message per target and collect the replies until ``timeout``; errors and silence are
        failures with a reason, never exceptions."""
        content = RecordDict({"semcon": ConfigRecord({**self.common, "round": t, **extra})})
        messages = [Message(content, dst_node_id=node, message_type=kind, group_id=str(t)) for node in targets.values()]
        pending = dict(zip(self.grid.push_messages(messages), targets))
        replies, failures = {}, {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                name = pending.pop(reply.metadata.reply_to_message_id, None)
                if name is None:
                    continue
                if reply.has_error():
                    failures[name] = f"node error {reply.error.code}: {reply.error.reason}"
                elif "semcon" not in reply.content or (kind != "query.hello"
                                                        and str(reply.content["semcon"].get("client")) != name):
                    failures[name] = "reply without a semcon record for this client"
                else:
                    replies[name] = reply.content["semcon"]
                if tick:
                    tick()
            if pending:
                time.sleep(POLL_S)
        for name in pending.values():
            failures[name] = f"no reply within {timeout:.0f} s"
        for name, why in failures.items():
            log.warning("round %d, %s: client %r failed: %s", t, kind, name, why)
        return replies, failures

    def _phase(self, kind: str, t: int, tick: Tick | None = None, **extra):
        self.discover()
        targets = {n: self.node_of[n] for n in self.recipients()}
        replies, failures = self._exchange(kind, t, targets, self.cfg.flower.phase_timeout_s, tick, **extra)
        for name in self.names:
            if name not in targets:
                failures[name] = "not connected"
        return replies, failures

    def evaluate(self, base: bool) -> dict[str, dict]:
        replies, _ = self._phase("evaluate", self.cfg.rounds + 1, base=base)
        return {n: json.loads(str(replies[n]["report"])) for n in self.names if n in replies}

    def upload(self, t, tick):
        replies, failures = self._phase("query.upload", t, tick)
        return {n: bytes(replies[n]["payload"]) for n in self.names if n in replies}, failures

    def train(self, t, download, tick):
        extra = {"payload": download} if download is not None else {}
        replies, failures = self._phase("train", t, tick, **extra)
        return {n: json.loads(str(replies[n]["report"])) for n in self.names if n in replies}, failures

    def checkpoint(self, t: int) -> None:
        """Nothing to do here: every node saved its adapter for round ``t`` before replying."""

    def save_adapters(self, directory: Path) -> None:
        log.info("final adapters stay with their owners: STATE_DIR/RUN_ID/CLIENT/adapters on each node")


def serve(grid: Grid, run_dir: RunDir, run_config: dict | None = None) -> dict:
    """Run or resume the federation of ``run_dir`` over ``grid``; the summary goes to ``summary.json``.

    A fresh run applies Flower's run config to its config first; a resumed run keeps its config.
    """
    state = RunState.load(run_dir)
    if state is None:
        cfg = load_config(run_dir.path / "config.yaml", run_config_overrides(run_config or {}))
        (run_dir.path / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
    else:
        cfg = load_config(run_dir.path / "config.yaml")
    if cfg.method == "centralized":
        raise FederationError("centralized training pools data in one place: it has no Flower deployment")
    prompts = build_splits(cfg).public
    algo = make_algorithm(cfg, prompts, Embedder(cfg.consensus.embedder, batch_size=cfg.consensus.embed_batch_size))
    group = FlowerGroup(grid, cfg, run_dir.run_id, (run_dir.path / "config.yaml").read_text(encoding="utf-8"), prompts)
    if state is not None:
        run_dir.rewind(state.next_round)
        log.info("resuming %s at round %d", run_dir.path, state.next_round)
    group.wait_for_nodes()
    summary = federate(cfg, run_dir, algo, group, None, state)
    summary["energy_kwh"], summary["energy_method"] = None, "not measured (Flower: energy is spent on the nodes)"
    summary["transport"] = "flower"
    run_dir.summary(summary)
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_dir = RunDir(Path(str(context.run_config["run-dir"])))
    try:
        serve(grid, run_dir, dict(context.run_config))
    except FederationError as e:
        (run_dir.path / "stopped.txt").write_text(str(e) + "\n", encoding="utf-8")
        log.error("stopped: %s", e)
        raise
