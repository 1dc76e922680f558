"""The Flower ClientApp: one node is one semcon client, chosen by its ``partition-id``.

Every message runs in a process of its own (a fresh interpreter by Flower's default; a fork of a warm
server that has imported torch already on nodes with semcon's SuperExec, ``forkexec.py``), so the client is
rebuilt per message from the node's state
directory: the run's setup (config and public prompts, sent once per run) and its adapter, saved after every
round (``STATE_DIR/RUN_ID/CLIENT/round_NN.safetensors``). A base model loads from semcon's safetensors cache
in about a second.

Node config (``flower-supernode --node-config``): ``partition-id`` (index into the config's ``clients``,
required), ``state-dir`` (default ``./semcon-state``), ``coordinator-key`` (the node's
``trusted-entities.yaml``: in a closed deployment the node acts only on messages the coordinator signed,
``signing.py``), and optionally ``model`` and ``data-path`` (a local JSONL file) to replace that client's
model and private data on this machine. A run's setup (client list, config, public prompts) is kept once:
a message that carries a different one is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from semcon.config import RunConfig, load_config, member_tree
from semcon.data import Prompt
from semcon.names import check_name, child
from semcon.protocol import SETUP_LIMITS, RunSetup, decode, encode
from semcon.rounds.rundir import write_atomic
from semcon.transport.flower.signing import Refused, check_order, trusted_key

app = ClientApp()
log = logging.getLogger("semcon.node")


def state_root(context: Context) -> Path:
    return Path(str(context.node_config.get("state-dir", "semcon-state"))).expanduser()


def admit(msg: Message, context: Context) -> dict:
    """The message's semcon record, once this node may act on it: where the node config names the coordinator's
    key, only a record the coordinator signed for this node and message type, each sequence number once."""
    rec = dict(msg.content["semcon"])
    if "coordinator-key" in context.node_config:
        root = state_root(context)
        seen = root / "sequence"  # the newest sequence number acted on, for every run of this node
        last = int(seen.read_text(encoding="utf-8")) if seen.is_file() else 0
        key = trusted_key(Path(str(context.node_config["coordinator-key"])).expanduser())
        sequence = check_order(rec, context.node_id, msg.metadata.message_type, key, last)
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(seen, str(sequence))
    return rec


def keep_once(path: Path, text: str, what: str) -> None:
    """Write ``text`` to ``path`` unless it holds something else already: a run's setup is set once."""
    if path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise Refused(f"this run's {what} is kept already; a different one is refused")
        return
    write_atomic(path, text)


def node_client(rec: dict, context: Context) -> tuple[str, Path]:
    """This node's client name (from the run's client list, sent with every hello) and its state directory."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("node config lacks partition-id (flower-supernode --node-config 'partition-id=N ...')")
    pid = int(node["partition-id"])
    state = child(state_root(context), rec["run-id"], "run id")
    names_file = state / "clients.json"
    names = list(rec["clients"]) if "clients" in rec else json.loads(names_file.read_text(encoding="utf-8"))
    if not 0 <= pid < len(names):
        raise ValueError(f"partition-id={pid} but the run has {len(names)} clients")
    if "clients" in rec:
        state.mkdir(parents=True, exist_ok=True)
        keep_once(names_file, json.dumps(names), "client list")
    return check_name(names[pid], "client name"), state


def has_setup(state: Path) -> bool:
    return (state / "config.yaml").is_file() and (state / "public.json").is_file()


def save_setup(state: Path, rec) -> None:
    """Keep the run's config and public prompts (sent once per run, with the first phase message this node
    gets) in the node's state directory; a setup that differs from the one kept is refused."""
    for kind in ("config", "public"):
        if kind in rec:
            msg = decode(bytes(rec[kind]), SETUP_LIMITS)
            if not isinstance(msg, RunSetup) or msg.kind != kind:
                raise ValueError(f"setup field {kind!r} holds a {msg.kind} message")
            if kind == "config":
                keep_once(state / "config.yaml", msg.config, "config")
            else:
                keep_once(state / "public.json", json.dumps(msg.prompts, ensure_ascii=False), "public prompts")
    if "public" not in rec:  # parameter averaging answers no prompts
        keep_once(state / "public.json", "{}", "public prompts")


def load_setup(state: Path, pid: int, node: dict) -> tuple[RunConfig, list[Prompt]]:
    """The run's config as this node sees it (its own model or data file where the node config names one)."""
    if not has_setup(state):
        raise RuntimeError(f"no setup of this run in {state}: the server sends it after the node's hello")
    tree = yaml.safe_load((state / "config.yaml").read_text(encoding="utf-8"))
    client = tree["clients"][pid]
    if "model" in node:
        client["model"] = str(node["model"])
    if "data-path" in node:
        client["data"] = {"source": "jsonl", "path": str(node["data-path"])}
    prompts = json.loads((state / "public.json").read_text(encoding="utf-8"))
    return load_config(tree=member_tree(tree), check_files=False), [Prompt(pid_, text, "public") for pid_, text in prompts.items()]


def _fault(client: str, phase: str, t: int) -> None:
    """Fault injection for the tests: ``SEMCON_CLIENT_FAIL=CLIENT:PHASE:ROUND`` in a SuperNode's environment
    makes that client's ClientApp process die without a reply in that phase."""
    if os.environ.get("SEMCON_CLIENT_FAIL", "") == f"{client}:{phase}:{t}":
        os._exit(17)


def restore(client, state: Path, rec) -> None:
    """Load the adapter the server says this client saved last (``saved-round``; -1: none yet). A node that
    lost it fails its phase with that reason rather than go on from a fresh adapter."""
    want = int(rec["saved-round"])
    if want >= 0 and client.restore_state(state, want) != want:
        raise RuntimeError(f"client {client.name!r} lost its saved state: no adapter of round {want} in "
                           f"{state / client.name} (restore the state directory, or start the run again)")


def _handle(msg: Message, context: Context, phase: str) -> Message:
    os.umask(0o077)  # the node's state (setup, adapters, answers) is its owner's only
    try:
        rec = admit(msg, context)
        name, state = node_client(rec, context)
        if "config" in rec:  # the run's setup, with this node's first phase message
            save_setup(state, rec)
    except Refused as e:  # a logged failure of this message; Flower returns it to the sender as an error
        log.warning("semcon node %s refused a %s message: %s", context.node_id, msg.metadata.message_type, e)
        raise
    t = int(rec["round"])
    reply = {"client": name}
    if phase == "hello":  # answered before torch is imported: seconds less per node and run
        reply["has-setup"] = has_setup(state)
        return Message(RecordDict({"semcon": ConfigRecord(reply)}), reply_to=msg)
    _fault(name, phase, t)
    from semcon.transport.assembly import assemble, client_round

    cfg, prompts = load_setup(state, int(context.node_config["partition-id"]), context.node_config)
    fed = assemble(cfg, prompts, node=name)
    client, algo = fed.clients[0], fed.algorithm
    sent = child(state, name, "client name") / "sent.json"  # its last answers, for consensus.skip_own
    if phase == "upload":
        restore(client, state, rec)
        reply["payload"] = encode(algo.upload(client, t))
        sent.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(sent, json.dumps(client.sent, ensure_ascii=False))
    elif phase == "train":
        restore(client, state, rec)
        client.sent = json.loads(sent.read_text(encoding="utf-8")) if sent.is_file() else {}
        download = bytes(rec["payload"]) if "payload" in rec else None
        reply["report"] = json.dumps(client_round(client, algo, t, download, fed.eval_sets))
        client.save_state(state, t)
    else:  # evaluate
        base = bool(rec["base"])
        if not base:
            restore(client, state, rec)
        reply["report"] = json.dumps(client.evaluate(fed.eval_sets, base=base, embed=fed.embedder))
        if not base:
            client.backbone.save_adapter(name, state / "adapters")
    return Message(RecordDict({"semcon": ConfigRecord(reply)}), reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "hello")


@app.query("upload")
def upload(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "upload")


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "evaluate")
