"""The Flower ServerApp: the same round loop (``federation.federate``) with Flower nodes as the clients.

The run directory lives on the SuperLink's machine (run config ``run-dir``, written by
``semcon flower run``); it holds the resolved config, and the ledger, pseudo-labels, metrics and
checkpoints exactly as an in-process run writes them. A node acts as the client its ``partition-id``
names; in a closed deployment only the registered node pinned to that partition may (``members.yaml``),
elsewhere a node that comes back under a new Flower node id rejoins as its client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from semcon.config import FILE_SOURCES, RunConfig
from semcon.coordinator.algorithms import make_algorithm
from semcon.data import experts_of, public_prompts
from semcon.embed import Embedder
from semcon.names import check_name
from semcon.protocol import ProtocolError, check_eval_report, check_train_report, encode, load_report
from semcon.rounds.federation import FederationError, Tick, federate, setup_messages
from semcon.rounds.rundir import RunDir, RunState
from semcon.transport.flower.launch import run_config_overrides
from semcon.transport.flower.secure import load_members
from semcon.transport.flower.signing import Signer

log = logging.getLogger(__name__)
app = ServerApp()
POLL_S = 0.25  # a pull is one small HTTP request to the SuperLink,
POLL_MAX_S = 2.0  # backed off to this while no reply comes (a phase takes seconds to minutes)
T = TypeVar("T")


class FlowerGroup:
    """The clients' side of each phase as Flower messages: one per node, replies matched by message id.

    A node takes part only as the client it claims in its hello, and only if no other live node holds that
    client and, where ``pins`` are given, it is the registered node pinned to that client (Flower's node
    authentication binds a node id to its registered key).
    ``saved`` is the round of each client's last saved adapter: a node must load exactly that one.
    ``setup`` (the encoded config and public prompts) goes with the first phase message to a node that lacks it.
    ``signer`` (closed deployments) signs each message for its node, which acts on nothing unsigned.
    """

    def __init__(self, grid: Grid, cfg: RunConfig, run_id: str, last_round: int, setup: dict[str, bytes],
                 pins: dict[str, int] | None = None, saved: dict[str, int] | None = None,
                 signer: Signer | None = None):
        self.grid, self.cfg, self.last_round, self.signer = grid, cfg, last_round, signer
        self.names = [c.name for c in cfg.clients]
        self.pins = pins or {}
        self.saved = dict(saved or {})
        self.node_of: dict[str, int] = {}  # client name -> Flower node id, refreshed every phase
        self.refused: dict[int, str] = {}  # node id -> why it may not take part (while it stays connected)
        self.common = {"run-id": run_id}  # every message; the config and prompts go once, in the setup
        self.has_setup: set[str] = set()  # clients whose node holds this run's config and prompts
        self.payloads = setup  # the run's setup (kind -> encoded message), sent once to each client's node
        self.delivered: list[str] = []  # clients sent the setup since the loop last asked
        self.eval_failures: dict[str, dict[str, str]] = {}  # "before"/"after" -> client -> why its evaluation failed

    def discover(self, timeout: float | None = None) -> None:
        """Ask nodes not seen yet which client they hold (waiting ``timeout``, else ``flower.hello_timeout_s``,
        for their replies); forget vanished nodes."""
        live = set(self.grid.get_node_ids())
        self.node_of = {name: node for name, node in self.node_of.items() if node in live}
        self.refused = {node: why for node, why in self.refused.items() if node in live}
        new = sorted(set(live) - set(self.node_of.values()) - set(self.refused))
        if not new:
            return
        replies, failures = self._exchange("query.hello", 0, {f"node {n}": n for n in new}, parse_hello,
                                           timeout=timeout or self.cfg.flower.hello_timeout_s, clients=self.names)
        for key, why in failures.items():
            if not why.startswith("no reply"):  # a node that answered with an error keeps its reason; silence is asked again
                self.refused[int(key.removeprefix("node "))] = f"hello failed: {why}"
        for key, (name, has_setup) in replies.items():
            node = int(key.removeprefix("node "))
            if why := self._refusal(node, name):
                self.refused[node] = why
                log.warning("node %s refused: %s", node, why)
            else:
                if name in self.node_of:
                    log.info("client %r rejoined as node %s", name, node)
                self.node_of[name] = node
                if has_setup:
                    self.has_setup.add(name)
                else:
                    self.has_setup.discard(name)

    def _refusal(self, node: int, name: str) -> str | None:
        """Why ``node`` may not act as client ``name`` (None: it may)."""
        if name not in self.names:
            return f"claims {name!r}, which is not a client of this run"
        if name in self.pins and node != self.pins[name]:
            return f"claims client {name!r}, which is pinned to node {self.pins[name]}"
        if (holder := self.node_of.get(name)) is not None and holder != node:
            return f"claims client {name!r}, held by node {holder}"
        return None

    def wait_for_nodes(self) -> None:
        """Wait until every client's node is connected (or the connect timeout, then settle for a quorum)."""
        deadline = time.monotonic() + self.cfg.flower.connect_timeout_s
        while len(self.node_of) < len(self.names) and time.monotonic() < deadline:
            self.discover(timeout=max(min(self.cfg.flower.hello_timeout_s, deadline - time.monotonic()), POLL_S))
            if len(self.node_of) < len(self.names):
                time.sleep(POLL_S)
        if len(self.node_of) < self.cfg.needed_clients:
            refused = "".join(f"; node {n}: {why}" for n, why in self.refused.items())
            raise FederationError(f"only {len(self.node_of)} of {len(self.names)} clients connected within "
                                  f"{self.cfg.flower.connect_timeout_s:.0f} s (min_clients={self.cfg.needed_clients})"
                                  f"{refused}")
        log.info("nodes: %s", ", ".join(f"{n}={i}" for n, i in self.node_of.items()))

    def train_units(self, members: list[str]) -> int:
        return len(members)  # one tick per reply

    def recipients(self, members: list[str]) -> list[str]:
        return [n for n in members if n in self.node_of]

    def setup(self, t: int) -> list[str]:
        """The clients whose node got the run's setup since the last call. It travels with the first phase
        message a node gets that lacks it (no message of its own: each costs a ClientApp process)."""
        sent, self.delivered = self.delivered, []
        return sent

    def _exchange(self, kind: str, t: int, targets: dict[str, int], parse: Callable[[ConfigRecord], T],
                  timeout: float, tick: Tick | None = None, own: dict[str, dict] | None = None,
                  **extra) -> tuple[dict[str, T], dict[str, str]]:
        """Send one message per target (with ``own[target]`` added) and collect the parsed replies until
        ``timeout``; errors, silence and replies that do not parse are failures with a reason, never exceptions."""
        own = own or {}
        messages = []
        for key, node in targets.items():
            record = {**self.common, "round": t, **extra, **own.get(key, {}), "saved-round": self.saved.get(key, -1)}
            if self.signer is not None:
                record = self.signer.sign(record, node, kind)
            messages.append(Message(RecordDict({"semcon": ConfigRecord(record)}), dst_node_id=node, message_type=kind,
                                    group_id=str(t)))
        pending = dict(zip(self.grid.push_messages(messages), targets))
        replies, failures = {}, {}
        deadline, wait = time.monotonic() + timeout, POLL_S
        while pending and time.monotonic() < deadline:
            pulled = list(self.grid.pull_messages(list(pending)))
            for reply in pulled:
                key = pending.pop(reply.metadata.reply_to_message_id, None)
                if key is None:
                    continue
                value, why = read_reply(reply, kind, key, parse)
                if why is None:
                    replies[key] = value
                else:
                    failures[key] = why
                if tick:
                    tick()
            if pending:  # back off while nothing comes; replies often come together
                time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
                wait = POLL_S if pulled else min(wait * 1.5, POLL_MAX_S)
        for key in pending.values():
            failures[key] = f"no reply within {timeout:.0f} s"
        for key, why in failures.items():
            log.warning("round %d, %s: %s failed: %s", t, kind, key, why)
        return replies, failures

    def _phase(self, kind: str, t: int, members: list[str], parse: Callable[[ConfigRecord], T],
               tick: Tick | None = None, **extra) -> tuple[dict[str, T], dict[str, str]]:
        self.discover()
        targets = {n: self.node_of[n] for n in self.recipients(members)}
        setup = {n: self.payloads for n in targets if n not in self.has_setup}
        replies, failures = self._exchange(kind, t, targets, parse, self.cfg.flower.phase_timeout_s, tick, setup,
                                           **extra)
        got = [n for n in setup if n in replies]  # a node replies only after keeping the setup
        self.has_setup |= set(got)
        self.delivered += got
        for name in members:
            if name not in targets:
                failures[name] = "not connected"
        for node, why in self.refused.items():
            failures[f"node {node}"] = f"refused: {why}"
        return replies, failures

    def evaluate(self, base: bool) -> dict[str, dict]:
        replies, failures = self._phase("evaluate", self.last_round + 1, self.names, parse_eval, base=base)
        self.eval_failures["before" if base else "after"] = failures
        return {n: replies[n] for n in self.names if n in replies}

    def upload(self, t, members, tick):
        replies, failures = self._phase("query.upload", t, members, parse_upload, tick)
        return {n: replies[n] for n in members if n in replies}, failures

    def train(self, t, download, members, tick):
        extra = {"payload": download} if download is not None else {}
        replies, failures = self._phase("train", t, members, parse_train, tick, **extra)
        self.saved |= dict.fromkeys(replies, t)  # each node saved its adapter for round t before replying
        return {n: replies[n] for n in members if n in replies}, failures

    def checkpoint(self, t: int, members: list[str]) -> None:
        """Nothing to do here: every node saved its adapter for round ``t`` before replying."""

    def save_adapters(self, directory: Path) -> None:
        log.info("final adapters stay with their owners: STATE_DIR/RUN_ID/CLIENT/adapters on each node")


def read_reply(reply: Message, kind: str, key: str, parse: Callable[[ConfigRecord], T]) -> tuple[T | None, str | None]:
    """The per-client guard: ``(parsed reply, None)``, or ``(None, why)`` with the one-line reason it is that
    client's failure for the round; whatever a peer's bytes do in a decoder, nothing escapes."""
    try:
        if reply.has_error():
            return None, f"node error {reply.error.code}: {one_line(reply.error.reason)}"
        return parse(semcon_record(reply, None if kind == "query.hello" else key)), None
    except Exception as e:  # noqa: BLE001
        return None, f"malformed {kind} reply ({type(e).__name__}: {one_line(e)})"


def semcon_record(reply: Message, client: str | None) -> ConfigRecord:
    """The reply's semcon record, which must name ``client`` (a hello names the client it claims)."""
    rec = reply.content["semcon"] if "semcon" in reply.content else None
    if not isinstance(rec, ConfigRecord):
        raise ProtocolError("reply without a semcon record")
    if client is not None and rec.get("client") != client:
        raise ProtocolError(f"reply claims client {rec.get('client')!r}")
    return rec


def parse_hello(rec: ConfigRecord) -> tuple[str, bool]:
    """The client a node claims, and whether it holds this run's setup already."""
    if not isinstance(rec["has-setup"], bool):
        raise ProtocolError("has-setup is not a boolean")
    return check_name(rec["client"], "claimed client name"), rec["has-setup"]


def parse_upload(rec: ConfigRecord) -> bytes:
    if not isinstance(rec["payload"], bytes):
        raise ProtocolError(f"payload is {type(rec['payload']).__name__}, not bytes")
    return rec["payload"]


def parse_train(rec: ConfigRecord) -> dict:
    return check_train_report(load_report(rec["report"], "train report"))


def parse_eval(rec: ConfigRecord) -> dict:
    return check_eval_report(load_report(rec["report"], "evaluation report"))


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text as one bounded line for the log and the summary."""
    return " ".join(str(e).split())[:limit]


def serve(grid: Grid, run_dir: RunDir, run_config: dict | None = None) -> dict:
    """Run or resume the federation of ``run_dir`` over ``grid``; the summary goes to ``summary.json``.

    A fresh run applies Flower's run config to its config first; a resumed run keeps its config.
    """
    state = RunState.load(run_dir)
    if state is None:
        cfg = run_dir.config(run_config_overrides(run_config or {}), check_files=True)
        run_dir.write_config(cfg)
    else:
        cfg = run_dir.config(check_files=True)
    if cfg.method == "centralized":
        raise FederationError("centralized training pools data in one place: it has no Flower deployment")
    if cfg.method == "semantic_consensus" and cfg.consensus.oracle:
        raise FederationError(f"consensus.rule {cfg.consensus.rule} is a measurement bound that reads what no "
                              "deployment has: it has no Flower deployment")
    if not cfg.public.own and (own := [c.name for c in cfg.clients if c.data and c.data.source in FILE_SOURCES]):
        raise FederationError(f"clients {', '.join(own)} bring their own data: give public.path or public.data, since the "
                              "server never reads a client's data to draw the public prompts")
    algo = make_algorithm(cfg, run_dir.public_prompts(lambda: public_prompts(cfg)),
                          Embedder(cfg.consensus.embedder, batch_size=cfg.consensus.embed_batch_size),
                          experts=experts_of(cfg))  # without the clients' data: only partition=category names them
    pins = load_members(cfg.flower.members, [c.name for c in cfg.clients]) if cfg.flower.members else None
    saved = state.saved_rounds() if state else {}
    setup = {m.kind: encode(m) for m in setup_messages(cfg, algo.prompts)}
    signer = Signer(cfg.flower.signer) if cfg.flower.signer else None
    group = FlowerGroup(grid, cfg, run_dir.run_id, algo.schedule.last, setup, pins, saved, signer)
    if state is not None:
        run_dir.rewind(state.next_round)
        log.info("resuming %s at round %d", run_dir.path, state.next_round)
    group.wait_for_nodes()
    summary = federate(cfg, run_dir, algo, group, None, state)
    summary["energy_kwh"], summary["energy_method"] = None, "not measured (Flower: energy is spent on the nodes)"
    summary["transport"] = "flower"
    summary["eval_failed"] = {stage: why for stage, why in group.eval_failures.items() if why}
    run_dir.summary(summary)
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_dir = RunDir(Path(str(context.run_config["run-dir"])))
    try:
        serve(grid, run_dir, dict(context.run_config))
    except Exception as e:  # the reason reaches `semcon flower run` through the run directory
        why = str(e) if isinstance(e, FederationError | ValueError) else f"{type(e).__name__}: {e}"
        (run_dir.path / "stopped.txt").write_text(why + "\n", encoding="utf-8")
        log.error("stopped: %s", why)
        raise
