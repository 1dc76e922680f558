"""The gateway of a closed deployment, attacked from 127.0.0.1: outsiders hold nothing, members act only as
themselves, and every refusal is one line with its source.

A TLS server stands where the SuperLink would (``Upstream``), the registered keys sit in a SQLite file with
the SuperLink's ``node`` table, and members sign their requests as Flower's SuperNodes do. The real
deployment (SuperLink, gateway, SuperNodes) is attacked in ``test_security.py``.
"""

from __future__ import annotations

import base64
import datetime
import logging
import socket
import sqlite3
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse, PushMessagesRequest
from flwr.proto.message_pb2 import (ConfirmMessageReceivedRequest, Message, ObjectTree, PullObjectRequest,
                                    PushObjectRequest)
from flwr.proto.node_pb2 import Node
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes, sign_message

from semcon.transport.flower.gateway import FLEET_ENDPOINTS, HEADER_SECONDS, RefusalLog, gateway_app
from semcon.transport.flower.secure import make_certs

TREE = ObjectTree(object_id="a" * 64, children=[ObjectTree(object_id="b" * 64)])  # a message node 7 pulls


class Member:
    """A registered node: its id and key pair; ``headers()`` signs a request as Flower's SuperNode does."""

    def __init__(self, node_id: int):
        self.node_id = node_id
        self.private, public = generate_key_pairs()
        self.public = public_key_to_bytes(public)

    def headers(self, stamp: str | None = None) -> dict[str, str]:
        stamp = stamp or datetime.datetime.now(datetime.timezone.utc).isoformat()
        return {"content-type": "application/protobuf", "flwr-public-key": base64.b64encode(self.public).decode(),
                "flwr-timestamp": stamp,
                "flwr-signature": base64.b64encode(sign_message(self.private, stamp.encode())).decode()}


def registry(path, members: list[Member]):
    """A database with the SuperLink's node table holding ``members`` (node ids as SQLite's sint64)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE node (node_id INTEGER, public_key BLOB, status TEXT)")
        db.executemany("INSERT INTO node VALUES (?, ?, 'online')", [(m.node_id, m.public) for m in members])
    return path


class Upstream(threading.Thread):
    """A TLS server standing where the SuperLink would: records what the gateway forwards; pull-messages gets a
    reply with ``TREE``."""

    def __init__(self, certs):
        super().__init__(daemon=True)
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                size = len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "size": size})
                reply = (PullMessagesResponse(messages_list=[Message()], message_object_trees=[TREE])
                         .SerializeToString() if self.path.endswith("/pull-messages") else b"")
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def run(self):
        self.server.serve_forever()


@pytest.fixture
def deployment(tmp_path):
    """Certificates, two registered members (nodes 7 and 8) and a recording upstream."""
    certs = make_certs(tmp_path / "certs", nodes=0)
    members = [Member(7), Member(8)]
    upstream = Upstream(certs)
    upstream.start()
    yield certs, registry(tmp_path / "superlink.db", members), members, upstream
    upstream.server.shutdown()


def pull(member: Member) -> bytes:
    return PullMessagesRequest(node=Node(node_id=member.node_id)).SerializeToString()


def reply_from(node: int, to: str = "m1") -> bytes:
    message = Message()
    message.metadata.src_node_id, message.metadata.reply_to_message_id = node, to
    return PushMessagesRequest(node=Node(node_id=node), messages_list=[message],
                               message_object_trees=[ObjectTree(object_id="c" * 64)]).SerializeToString()


def test_only_registered_nodes_speaking_for_themselves_get_through(deployment):
    from starlette.testclient import TestClient

    certs, db, (member, other), upstream = deployment
    gateway = TestClient(gateway_app(upstream.address, certs / "ca.crt", db))
    assert gateway.post("/v1/fleet/pull-messages", content=pull(member), headers=member.headers()).status_code == 200
    for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/runtime/acquire-task", "/docs",
                 "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleet//control",
                 "/v1/fleet/a/b", "/v1/fleet/list-runs"):
        assert gateway.post(path, headers=member.headers()).status_code == 403, path
    assert gateway.get("/v1/fleet/pull-messages", headers=member.headers()).status_code == 403
    stranger = Member(9)  # signs correctly, but the SuperLink never registered its key
    old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=60)).isoformat()
    replayed = member.headers()
    assert gateway.post("/v1/fleet/pull-messages", content=pull(member), headers=replayed).status_code == 200
    refused = {"unsigned": ({"content-type": "application/protobuf"}, pull(member)),
               "unregistered": (stranger.headers(), pull(stranger)),
               "stale": (member.headers(old), pull(member)),
               "replayed": (replayed, pull(member)),
               "forged signature": ({**member.headers(), "flwr-signature": other.headers()["flwr-signature"]},
                                    pull(member)),
               "speaks for another node": (member.headers(), pull(other)),
               "not protobuf": (member.headers(), b"\xff" * 40)}
    for case, (headers, content) in refused.items():
        status = gateway.post("/v1/fleet/pull-messages", content=content, headers=headers).status_code
        assert status == (403 if case == "speaks for another node" else 400 if case == "not protobuf" else 401), case
    too_big = gateway.post("/v1/fleet/pull-messages", content=b"x" * (65 << 10), headers=member.headers())
    assert too_big.status_code == 413  # even a member's body is bounded per endpoint
    assert [r["path"] for r in upstream.seen] == ["/v1/fleet/pull-messages"] * 2  # none of those went upstream
    forwarded = upstream.seen[0]["headers"]
    assert forwarded["x-forwarded-for"] == "testclient" and "cookie" not in forwarded
    assert {"flwr-public-key", "flwr-signature", "flwr-timestamp"} <= set(forwarded)


def test_a_member_cannot_instruct_forge_or_touch_another_members_objects(deployment):
    from starlette.testclient import TestClient

    certs, db, (member, other), upstream = deployment
    gateway = TestClient(gateway_app(upstream.address, certs / "ca.crt", db))

    def post(who: Member, endpoint: str, content: bytes) -> int:
        return gateway.post(f"/v1/fleet/{endpoint}", content=content, headers=who.headers()).status_code

    instruction = Message()  # no reply_to: Flower would store it as an instruction to node 8
    instruction.metadata.src_node_id, instruction.metadata.dst_node_id = 1, other.node_id
    assert post(member, "push-messages", PushMessagesRequest(node=Node(node_id=7), messages_list=[instruction])
                .SerializeToString()) == 403
    assert post(member, "push-messages", reply_from(8)) == 403  # a reply in another node's name
    assert post(member, "push-messages", reply_from(7)) == 200
    own = PushObjectRequest(node=Node(node_id=7), object_id="c" * 64, object_content=b"x").SerializeToString()
    assert post(member, "push-object", own) == 200
    assert post(other, "push-object", PushObjectRequest(node=Node(node_id=8), object_id="c" * 64)
                .SerializeToString()) == 403
    read = {n: PullObjectRequest(node=Node(node_id=n), object_id="b" * 64).SerializeToString() for n in (7, 8)}
    assert post(member, "pull-object", read[7]) == 403  # not pulled yet
    assert post(member, "pull-messages", pull(member)) == 200  # the SuperLink hands node 7 a message with TREE
    assert post(member, "pull-object", read[7]) == 200
    assert post(other, "pull-object", read[8]) == 403  # node 8 knows the id, but the message is node 7's
    confirm = {n: ConfirmMessageReceivedRequest(node=Node(node_id=n), message_object_id="a" * 64).SerializeToString()
               for n in (7, 8)}
    assert post(other, "confirm-message-received", confirm[8]) == 403
    assert post(member, "confirm-message-received", confirm[7]) == 200


def test_refusals_are_rate_limited_per_source(caplog):
    refusals = RefusalLog(burst=5, every_s=3600)
    with caplog.at_level(logging.WARNING, logger="semcon.gateway"):
        for i in range(1000):
            refusals("6.6.6.6", f"refused 403 #{i} from 6.6.6.6")
        refusals("10.0.0.2", "refused 403 from 10.0.0.2")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and lines[-1] == "refused 403 from 10.0.0.2"  # another source is still heard
    refusals.buckets["6.6.6.6"][0] = 1  # time passes: the next line says how many were held back
    with caplog.at_level(logging.WARNING, logger="semcon.gateway"):
        refusals("6.6.6.6", "refused 403 again from 6.6.6.6")
    assert caplog.records[-1].getMessage().endswith("(995 more refusals of this source not logged)")


def test_the_gateway_knows_exactly_the_pinned_flwr_node_endpoints():
    from flwr.supercore.protobuf import translation

    fleet = {path.removeprefix("/v1/fleet/") for method, path in translation.PROTOBUF_REQUEST_TYPES
             if path.startswith("/v1/fleet/")}
    assert fleet == set(FLEET_ENDPOINTS)


def tls_socket(port: int, ca, handshake: bool = True):
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    if not handshake:
        return raw
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="127.0.0.1")


def raw_request(port: int, ca, head: str, body: bytes = b"", wait_s: float = 15.0) -> str:
    """Send ``head`` and ``body`` over TLS as they are and return the status line of the reply ('' if none)."""
    with tls_socket(port, ca) as conn:
        conn.settimeout(wait_s)
        try:
            conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
            return conn.recv(4096).split(b"\r\n", 1)[0].decode()
        except (OSError, TimeoutError):
            return ""


def test_no_outsider_can_hold_the_gateway_and_every_refusal_is_one_line(deployment, tmp_path):
    """Each attack of the probe on a real gateway process; after each, a member's request still succeeds
    within a few seconds and the gateway's memory stays bounded."""
    import psutil

    from semcon.transport.flower.launch import Processes, free_port

    certs, db, (member, other), upstream = deployment
    procs = Processes(tmp_path / "state", tmp_path / "state" / "logs", certs=certs)
    port, ca = free_port(), certs / "ca.crt"
    held = []
    try:
        procs.start_gateway("127.0.0.1", port, upstream.address, body_seconds=2, database=db)
        gateway = psutil.Process(procs.helpers[0].pid)

        def member_gets_through() -> float:
            start = time.monotonic()
            with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=str(ca), timeout=10) as client:
                assert client.post("/v1/fleet/pull-messages", content=pull(member),
                                   headers=member.headers()).status_code == 200
            return time.monotonic() - start

        assert member_gets_through() < 5
        rss = gateway.memory_info().rss

        # a member reading another member's object, and a request head that is not ASCII
        read = PullObjectRequest(node=Node(node_id=8), object_id="b" * 64).SerializeToString()
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=str(ca), timeout=10) as client:
            assert client.post("/v1/fleet/pull-messages", content=pull(member), headers=member.headers()).status_code == 200
            assert client.post("/v1/fleet/pull-object", content=read, headers=other.headers()).status_code == 403
        odd = "POST /v1/fleet/get-run HTTP/1.1\nHost: x\nflwr-public-key: é\nflwr-timestamp: ü\n"  # sent as UTF-8
        assert raw_request(port, ca, odd).endswith(("401 Unauthorized", "400 Bad Request"))
        # 300 idle connections, half of them past the TLS handshake: the oldest waiting are closed
        held += [tls_socket(port, ca, handshake=i % 2 == 0) for i in range(300)]
        assert member_gets_through() < 5

        # four 32 MB request heads: cut at the head bound, nothing forwarded
        heads = [threading.Thread(target=raw_request, args=(port, ca, "POST /v1/fleet/get-run HTTP/1.1\nHost: x\n"
                                                            "X-Big: " + "a" * (32 << 20) + "\n"), daemon=True)
                 for _ in range(4)]
        for thread in heads:
            thread.start()
        for thread in heads:
            thread.join(60)
        assert member_gets_through() < 5

        # eight slow bodies of 8 MB from outsiders: refused before a byte of the body is read
        slow = "POST /v1/fleet/push-object HTTP/1.1\nHost: x\nContent-Length: 8000000\n"
        assert all(raw_request(port, ca, slow, b"x" * 1000).endswith("401 Unauthorized") for _ in range(8))
        assert member_gets_through() < 5

        assert (gateway.memory_info().rss - rss) / 2**20 < 64, "the gateway's memory grew by 64 MiB or more"
        idle = [tls_socket(port, ca), tls_socket(port, ca, handshake=False)]  # closed at the head deadline
        held += idle
        opened = time.monotonic()
        for conn in idle:  # a connection that sends no head (or no TLS handshake) is closed after HEADER_SECONDS
            conn.settimeout(max(HEADER_SECONDS + 5 - (time.monotonic() - opened), 0.1))
            try:
                assert conn.recv(1) == b""
            except ssl.SSLError:
                pass  # closed during the handshake
        assert time.monotonic() - opened < HEADER_SECONDS + 5
        assert {r["path"] for r in upstream.seen} == {"/v1/fleet/pull-messages"}
    finally:
        for conn in held:
            conn.close()
        procs.stop_all()
    log = (procs.logs / "gateway.log").read_text()
    lines = log.splitlines()
    assert lines and all("from 127.0.0.1" in line for line in lines), log[-2000:]
    assert "Traceback" not in log and any("over the connections" in line for line in lines)
    assert any("reads an object of no message it pushed or pulled" in line for line in lines)
    assert len(lines) <= 40  # one source: its burst, then one line in 6 s
