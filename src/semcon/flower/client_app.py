"""The Flower ClientApp: one node is one semcon client, chosen by its ``partition-id``.

Flower starts a new process for every message, so the client is rebuilt per message from the run
config the server sends and from the node's state directory, where its adapter is saved after every
round (``STATE_DIR/RUN_ID/CLIENT/round_NN.safetensors``). A base model loads from semcon's
safetensors cache in about a second.

Node config (``flower-supernode --node-config``): ``partition-id`` (index into the config's
``clients``, required), ``state-dir`` (default ``./semcon-state``), and optionally ``model`` and
``data-path`` (a local JSONL file) to replace that client's model and private data on this machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from semcon.config import RunConfig, load_config
from semcon.data import Prompt
from semcon.names import child
from semcon.protocol import encode

app = ClientApp()


def node_client(msg: Message, context: Context) -> tuple[RunConfig, str, Path]:
    """The run config as this node sees it, its client name, and its state directory for this run."""
    rec = msg.content["semcon"]
    tree = yaml.safe_load(str(rec["config"]))
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("node config lacks partition-id (flower-supernode --node-config 'partition-id=N ...')")
    pid = int(node["partition-id"])
    if not 0 <= pid < len(tree["clients"]):
        raise ValueError(f"partition-id={pid} but the run has {len(tree['clients'])} clients")
    client = tree["clients"][pid]
    if "model" in node:
        client["model"] = str(node["model"])
    if "data-path" in node:
        client["data"] = {"source": "jsonl", "path": str(node["data-path"])}
    cfg = load_config(tree=tree)  # checks every client name
    state = child(Path(str(node.get("state-dir", "semcon-state"))).expanduser(), rec["run-id"], "run id")
    return cfg, cfg.clients[pid].name, state


def _fault(phase: str, t: int) -> None:
    """Fault injection for the tests: ``SEMCON_CLIENT_FAIL=PHASE:ROUND`` on a SuperNode makes its
    ClientApp process die without a reply in that phase."""
    if os.environ.get("SEMCON_CLIENT_FAIL", "") == f"{phase}:{t}":
        os._exit(17)


def restore(client, state: Path, rec) -> None:
    """Load the adapter the server says this client saved last (``saved-round``; -1: none yet). A node that
    lost it fails its phase with that reason rather than go on from a fresh adapter."""
    want = int(rec["saved-round"])
    if want >= 0 and client.restore_state(state, want) != want:
        raise RuntimeError(f"client {client.name!r} lost its saved state: no adapter of round {want} in "
                           f"{state / client.name} (restore the state directory, or start the run again)")


def _handle(msg: Message, context: Context, phase: str) -> Message:
    from semcon.simulation import client_phase, setup

    cfg, name, state = node_client(msg, context)
    rec = msg.content["semcon"]
    t = int(rec["round"])
    reply = {"client": name}
    if phase == "hello":
        return Message(RecordDict({"semcon": ConfigRecord(reply)}), reply_to=msg)
    _fault(phase, t)
    prompts = [Prompt(pid, text, "public") for pid, text in zip(rec["prompt-ids"], rec["prompts"])]
    fed = setup(cfg, only=[name], prompts=prompts)
    client, algo = fed.clients[0], fed.algorithm
    if phase == "upload":
        restore(client, state, rec)
        reply["payload"] = encode(algo.upload(client, t))
    elif phase == "train":
        restore(client, state, rec)
        download = bytes(rec["payload"]) if "payload" in rec else None
        reply["report"] = json.dumps(client_phase(client, algo, cfg, t, download, fed.eval_sets))
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
