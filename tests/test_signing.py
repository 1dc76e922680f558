"""Only the coordinator instructs a node: signed records, checked by the real ClientApp before it acts."""

from __future__ import annotations

import json

import pytest

from semcon.protocol import RunSetup, encode
from semcon.transport.flower.secure import make_certs
from semcon.transport.flower.signing import Refused, Signer, check_order, trusted_key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), nodes=2)


def test_a_signed_record_verifies_only_for_its_node_phase_and_content_once(certs, tmp_path):
    key = trusted_key(certs / "node0" / "trusted-entities.yaml")
    record = Signer(certs / "signer").sign({"run-id": "abc", "round": 1, "clients": ["geo", "math"]}, 12, "train")
    sequence = check_order(record, 12, "train", key, last=0)
    assert sequence == record["sequence"]
    with pytest.raises(Refused, match="replayed"):
        check_order(record, 12, "train", key, last=sequence)
    for node, kind, change in [(13, "train", {}), (12, "evaluate", {}), (12, "train", {"round": 2}),
                               (12, "train", {"clients": ["geo", "evil"]}), (12, "train", {"config": b"x"})]:
        with pytest.raises(Refused, match="not the coordinator's"):
            check_order({**record, **change}, node, kind, key, last=0)
    with pytest.raises(Refused, match="unsigned"):
        check_order({"run-id": "abc", "round": 1}, 12, "train", key, last=0)
    other = make_certs(tmp_path / "other", nodes=0)  # a member that made keys of its own
    forged = Signer(other / "signer").sign({"run-id": "abc", "round": 1}, 12, "train")
    with pytest.raises(Refused, match="not the coordinator's"):
        check_order(forged, 12, "train", key, last=0)
    assert Signer(certs / "signer").sign({}, 12, "train")["sequence"] > sequence  # grows across signers


@pytest.fixture
def flower_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as the ServerApp sends


def ask(node_id: int, record: dict, state_dir, certs, kind: str = "query.hello"):
    """Deliver ``record`` to the real ClientApp of node ``node_id`` (partition 1) as Flower would."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from semcon.transport.flower.client_app import app

    msg = Message(RecordDict({"semcon": ConfigRecord(record)}), dst_node_id=node_id, message_type=kind)
    node_config = {"partition-id": 1, "state-dir": str(state_dir),
                   "coordinator-key": str(certs / "node1" / "trusted-entities.yaml")}
    context = Context(run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})
    return app(msg, context)


def test_the_clientapp_acts_only_on_the_coordinators_orders_and_keeps_its_setup_once(certs, tmp_path,
                                                                                    flower_identity, caplog):
    signer = Signer(certs / "signer")
    state = tmp_path / "state"
    config = encode(RunSetup("config", config="rounds: 1\n"))
    hello = {"run-id": "run1", "round": 0, "saved-round": -1, "clients": ["geo", "math"]}
    with pytest.raises(Refused, match="unsigned"):  # what a member pushes through Flower: no signature
        ask(12, {**hello, "config": config}, state, certs)
    assert not state.exists()  # refused before anything was written
    assert "refused a query.hello message: unsigned" in caplog.text

    reply = ask(12, signer.sign({**hello, "config": config}, 12, "query.hello"), state, certs)
    assert dict(reply.content["semcon"]) == {"client": "math", "has-setup": True}  # config kept (no prompts: {})
    with pytest.raises(Refused, match="not the coordinator's"):  # signed for node 12, replayed to node 13
        ask(13, signer.sign(hello, 12, "query.hello"), state, certs)
    evil = encode(RunSetup("config", config="rounds: 1\nattack: {kind: sybil}\n"))
    with pytest.raises(Refused, match="config is kept already"):  # even the coordinator sets a setup once
        ask(12, signer.sign({**hello, "config": evil}, 12, "query.hello"), state, certs)
    with pytest.raises(Refused, match="client list is kept already"):
        ask(12, signer.sign({**hello, "clients": ["math", "geo"]}, 12, "query.hello"), state, certs)
    again = signer.sign({**hello, "config": config}, 12, "query.hello")  # the same setup again is fine
    ask(12, again, state, certs)
    with pytest.raises(Refused, match="replayed"):
        ask(12, again, state, certs)
    run = state / "run1"
    assert (run / "config.yaml").read_text() == "rounds: 1\n" and json.loads((run / "clients.json").read_text()) == [
        "geo", "math"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in [state, run, *run.iterdir()])
