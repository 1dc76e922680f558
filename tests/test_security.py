"""Attacker-side tests: what an outsider, a dishonest member or a careless user can try, and what stops it.

The Flower deployment tests (outsiders, impostors, lost state) run real processes on 127.0.0.1 and are
marked ``flower``; the rest are fast.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import msgpack
import pytest
import yaml
import zstandard
from conftest import cli, one_line_error, rows, tiny_tree

from semcon.protocol import SETUP_LIMITS, ProtocolError, Upload, decode, encode, text_limits
from semcon.rundir import RunDir

LIMITS = text_limits(32, 4000)  # a round of 32 prompts at the default answer cap: about 0.5 MB decompressed


def zstd_frame(chunks, size: int = -1) -> bytes:
    """One zstd frame streamed from ``chunks`` (``size``: the content size the header declares, -1: none)."""
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor(level=3).stream_writer(out, size=size, closefd=False)
    for chunk in chunks:
        writer.write(chunk)
    writer.flush(zstandard.FLUSH_FRAME)
    return out.getvalue()


def upload_with_lists(n: int):
    """A valid-looking upload whose extra field is an array of ``n`` empty arrays (1 byte each on the wire)."""
    yield (b"\x86" + b"".join(msgpack.packb(x) for x in ("v", 1, "kind", "upload", "round", 1, "client", "a",
                                                           "answers", {}, "x")) + b"\xdd" + n.to_bytes(4, "big"))
    while n:
        k = min(n, 1 << 20)
        yield b"\x90" * k
        n -= k


BOMBS = {
    "zstd frame declaring 1 GiB": lambda: zstd_frame((b"\0" * (1 << 20) for _ in range(1024)), size=1 << 30),
    "20 M empty lists": lambda: zstd_frame(upload_with_lists(20_000_000)),
    "250 M empty lists": lambda: zstd_frame(upload_with_lists(250_000_000)),
    "500 k nested arrays": lambda: zstd_frame([b"\x91" * 500_000 + b"\x90"]),
}

PROBE = """
import json, resource, sys, time
from semcon.protocol import ProtocolError, decode, text_limits
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    decode(data, text_limits(32, 4000))
    outcome = "decoded"
except ProtocolError as e:
    outcome = "ProtocolError: " + str(e)
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"outcome": outcome, "seconds": seconds, "rss_growth_mb": grown}))
"""


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_decompression_and_object_bombs_are_refused_cheaply(bomb, tmp_path):
    path = tmp_path / "bomb.bin"
    path.write_bytes(BOMBS[bomb]())
    assert path.stat().st_size < 40_000  # a few KB on the wire
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("ProtocolError"), result
    # generous: a guard against a decoder that hangs, not a speed target (that is benchmarks' job)
    assert result["rss_growth_mb"] < 100 and result["seconds"] < 10.0, result


def test_a_real_round_of_long_answers_still_decodes():
    answers = {f"p{i:04d}": "ü" * 4000 for i in range(32)}  # every answer at the cap, 2 bytes a character
    msg = Upload(round=1, client="a", answers=answers, finished=dict.fromkeys(answers, False))
    assert decode(encode(msg), LIMITS) == msg


@pytest.mark.parametrize("field, value", [("round", True), ("round", 1.0), ("v", 1.0), ("v", True)])
def test_round_and_version_must_be_true_integers(field, value):
    body = {"v": 1, "kind": "upload", "round": 1, "client": "a", "answers": {"p0000": "x"}, field: value}
    with pytest.raises(ProtocolError):
        decode(zstandard.ZstdCompressor().compress(msgpack.packb(body)), LIMITS)


# --- Flower server side: malformed replies and impostors, over a fake Grid (no processes) ------------------

class FakeGrid:
    """A Grid whose nodes are functions from a message to a reply (or None: the node stays silent)."""

    def __init__(self, nodes: dict[int, object]):
        self.nodes = nodes  # node id -> handler
        self.replies: dict[str, object] = {}
        self.sent: list[tuple[str, set[str]]] = []  # (message type, fields of its semcon record)

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # what Flower's grid does on push
            ids.append(msg.metadata.message_id)
            self.sent.append((msg.metadata.message_type, set(msg.content["semcon"])))
            reply = self.nodes[msg.metadata.dst_node_id](msg)
            if reply is not None:
                self.replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


@pytest.fixture
def flower_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # as inside a running ServerApp


def honest(name: str, **overrides):
    """A node that behaves, except for the replies in ``overrides`` (message type -> semcon record or Error)."""
    from flwr.app import ConfigRecord, Error, Message, RecordDict

    held = {}  # the public prompts of the setup this node was sent

    def handle(msg):
        rec = msg.content["semcon"]
        t = int(rec["round"])
        if "public" in rec:  # the run's setup comes with the first phase message
            held.update(decode(bytes(rec["public"]), SETUP_LIMITS).prompts)
        answers = {pid: f"{name} says {text}" for pid, text in held.items()}
        default = {"query.hello": {"client": name, "has-setup": bool(held)},
                   "query.upload": {"client": name, "payload": encode(Upload(t, name, answers, dict.fromkeys(answers, True)))},
                   "train": {"client": name, "report": json.dumps({"steps": 1, "tokens": 9, "losses": [2.0],
                                                                  "seconds": 0.1, "dropped_too_long": 0})},
                   "evaluate": {"client": name, "report": json.dumps({"wiki": {"nll": 1.5}})}}
        out = overrides.get(msg.metadata.message_type, default[msg.metadata.message_type])
        if isinstance(out, Error):
            return Message(out, reply_to=msg)
        return Message(RecordDict({"semcon": ConfigRecord(out)}), reply_to=msg)

    return handle


def flower_group(tmp_path, grid, **flower):
    """A server-side group over ``grid`` with the run's setup ready to send to each node after its hello."""
    from semcon.config import load_config
    from semcon.data import Prompt
    from semcon.federation import setup_messages
    from semcon.flower.server_app import FlowerGroup

    tree = tiny_tree("smollm2-135m", min_clients=1, flower={"phase_timeout_s": 0.5, "hello_timeout_s": 0.5},
                     eval={"before": True})  # each node's first phase is then the base model's evaluation
    tree["clients"].append({"name": "chat", "data": {"source": "chatterbot"}})
    cfg = load_config(tree=tree)
    prompts = [Prompt("p0000", "What is the capital of France?", "x"), Prompt("p0001", "Name a fruit.", "x")]
    setup = {m.kind: encode(m) for m in setup_messages(cfg, prompts)}
    return FlowerGroup(grid, cfg, "abc123", cfg.rounds, setup, **flower), cfg, prompts


MALFORMED = {  # message type -> (reply, what the failure says)
    "query.upload": [({"client": "math"}, "KeyError"), ({"client": "math", "payload": "text"}, "not bytes"),
                     ({"client": "geo", "payload": b"x"}, "claims client 'geo'")],
    "train": [({"client": "math", "report": "{not json"}, "JSONDecodeError"),
              ({"client": "math", "report": "[1, 2]"}, "not an object"),
              ({"client": "math", "report": '{"steps": 1}'}, "needs numbers"),
              ({"client": "math", "report": '{"reference": {"wiki": {"nll": "low"}}}'}, "mapping of names to numbers")],
    "evaluate": [({"client": "math", "report": '{"wiki": 3}'}, "mapping of names to numbers"),
                 ({"client": "math"}, "KeyError")],
}


@pytest.mark.parametrize("kind, reply, needle", [(k, r, n) for k, cases in MALFORMED.items() for r, n in cases])
def test_a_malformed_reply_is_that_clients_failure(kind, reply, needle, tmp_path, flower_identity):
    nodes = {11: honest("geo"), 12: honest("math", **{kind: reply}), 13: honest("chat")}
    group, _, _ = flower_group(tmp_path, FakeGrid(nodes))
    group.discover()
    if kind == "query.upload":
        ok, failed = group.upload(1, group.names, None)
    elif kind == "train":
        ok, failed = group.train(1, None, group.names, None)
    else:
        ok, failed = group.evaluate(base=False), {}
    assert "math" not in ok and set(ok) == {"geo", "chat"}
    if kind != "evaluate":
        assert needle in failed["math"], failed


def test_errors_and_silence_are_failures_and_a_round_goes_on(tmp_path, flower_identity, embedder):
    from flwr.app import Error

    from semcon.algorithms import make_algorithm
    from semcon.federation import federate

    nodes = {11: honest("geo"), 12: honest("math", train=Error(code=5, reason="gone")),
             13: lambda msg: None if msg.metadata.message_type == "query.upload" else honest("chat")(msg)}
    group, cfg, prompts = flower_group(tmp_path, FakeGrid(nodes))
    run_dir = RunDir.create(tmp_path / "run", cfg)
    group.wait_for_nodes()
    summary = federate(cfg, run_dir, make_algorithm(cfg, prompts, embedder), group)
    one = summary["per_round"][1]
    assert one["accepted"] == ["geo", "math"] and "no reply" in one["failed"]["chat"]
    assert "node error 5: gone" in one["failed"]["math"] and one["completed"] == ["geo", "chat"]
    assert group.saved == {"geo": 1, "chat": 1}  # math never completed a train phase
    setup = [(r["client"], r["kind"]) for r in rows(run_dir.path / "ledger.jsonl") if r["round"] == 0]
    assert sorted(setup) == sorted((c, k) for c in ("geo", "math", "chat") for k in ("config", "public"))
    with_setup = [kind for kind, fields in group.grid.sent if fields & {"config", "public"}]
    assert with_setup == ["evaluate"] * 3  # with each node's first phase message (the base model's), once per run


def test_a_failed_hello_is_reported_with_the_nodes_reason(tmp_path, flower_identity):
    from flwr.app import Error

    nodes = {11: honest("geo"), 12: honest("math", **{"query.hello": Error(code=3, reason="lacks partition-id")})}
    group, _, _ = flower_group(tmp_path, FakeGrid(nodes))
    group.discover()
    assert "lacks partition-id" in group.refused[12] and group.node_of == {"geo": 11}
    _, failed = group.upload(1, group.names, None)
    assert "hello failed" in failed["node 12"] and "lacks partition-id" in failed["node 12"]


def test_two_nodes_claiming_one_client_never_both_take_part(tmp_path, flower_identity):
    nodes = {11: honest("geo"), 12: honest("math"), 13: honest("math"),
             14: honest("../../etc")}
    group, _, _ = flower_group(tmp_path, FakeGrid(nodes))
    group.discover()
    assert group.node_of == {"geo": 11, "math": 12}
    _, failed = group.upload(1, group.names, None)
    assert "held by node 12" in failed["node 13"] and "not connected" in failed["chat"]
    assert 14 not in group.node_of.values() and "hello failed" in group.refused[14]  # its hello did not parse
    group.grid.nodes.pop(12)  # the holder leaves: the other claimant may now rejoin as math
    group.refused.clear()
    group.discover()
    assert group.node_of["math"] == 13


def test_pinned_clients_go_only_to_their_registered_nodes(tmp_path, flower_identity):
    nodes = {11: honest("geo"), 12: honest("math"), 13: honest("chat")}
    group, _, _ = flower_group(tmp_path, FakeGrid(nodes), pins={"geo": 11, "math": 99, "chat": 13})
    group.discover()
    assert group.node_of == {"geo": 11, "chat": 13}
    _, failed = group.train(1, None, group.names, None)
    assert "pinned to node 99" in failed["node 12"] and failed["math"] == "not connected"


def test_the_gateway_forwards_the_node_api_and_nothing_else(tmp_path):
    from starlette.testclient import TestClient

    from semcon.flower.secure import gateway_app, make_certs

    certs = make_certs(tmp_path, nodes=0)
    gateway = TestClient(gateway_app("127.0.0.1:9", certs / "ca.crt"))  # nothing listens upstream
    assert gateway.post("/v1/fleet/pull-messages").status_code == 503  # forwarded; the SuperLink is away
    for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/runtime/acquire-task", "/docs",
                 "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleet//control",
                 "/v1/fleet/a/b"):
        assert gateway.post(path).status_code == 403, path
    assert gateway.get("/v1/fleet/pull-messages").status_code == 403


def test_the_gateway_knows_exactly_the_pinned_flwr_node_endpoints():
    from flwr.supercore.protobuf import translation

    from semcon.flower.secure import FLEET_ENDPOINTS

    fleet = {path.removeprefix("/v1/fleet/") for method, path in translation.PROTOBUF_REQUEST_TYPES
             if path.startswith("/v1/fleet/")}
    assert fleet == set(FLEET_ENDPOINTS)


class Recorder(threading.Thread):
    """A TLS server on 127.0.0.1 standing where the SuperLink would: it records what the gateway forwards."""

    def __init__(self, certs):
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        super().__init__(daemon=True)
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                size = len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "size": size})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def run(self):
        self.server.serve_forever()


def raw_request(port: int, ca, head: str, body: bytes = b"", wait_s: float = 15.0) -> str:
    """Send ``head`` and ``body`` over TLS as they are and return the status line of the reply ('' if none)."""
    import socket
    import ssl

    tls = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as raw, \
            tls.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        try:
            return conn.recv(4096).split(b"\r\n", 1)[0].decode()
        except (ConnectionError, TimeoutError):
            return ""


def test_an_outsider_cannot_exhaust_the_gateway_forge_its_source_or_fill_its_log(tmp_path):
    import time

    import httpx
    import psutil

    from semcon.flower.launch import Processes, free_port
    from semcon.flower.secure import make_certs

    certs = make_certs(tmp_path / "certs", nodes=0)
    upstream = Recorder(certs)
    upstream.start()
    procs = Processes(tmp_path / "state", tmp_path / "state" / "logs", certs=certs)
    port = free_port()
    try:
        procs.start_gateway("127.0.0.1", port, upstream.address, body_seconds=2)
        gateway = psutil.Process(procs.helpers[0].pid)
        url, ca = f"https://127.0.0.1:{port}", certs / "ca.crt"
        with httpx.Client(base_url=url, verify=str(ca)) as client:
            # forwarding headers are the gateway's, never the sender's
            forged = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6"}
            assert client.post("/v1/fleet/pull-messages", content=b"{}", headers=forged).status_code == 200
            # the pinned version's node endpoints only, and a body as large as one array chunk still passes
            assert client.post("/v1/fleet/list-runs", content=b"{}").status_code == 403
            assert client.post("/v1/fleet/push-object", content=b"x" * (6 << 20)).status_code == 200
        assert upstream.seen[0]["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert not {"forwarded", "x-real-ip"} & set(upstream.seen[0]["headers"])
        assert [(r["path"], r["size"]) for r in upstream.seen] == [("/v1/fleet/pull-messages", 2),
                                                                   ("/v1/fleet/push-object", 6 << 20)]

        rss = gateway.memory_info().rss
        for _ in range(2):  # declares 10 MB and starts sending: refused before a byte of it is read
            head = "POST /v1/fleet/push-messages HTTP/1.1\nHost: x\nContent-Length: 10485760\n"
            assert raw_request(port, ca, head, b"x" * 65536).endswith("413 Request Entity Too Large")
        chunked = "POST /v1/fleet/register-node HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
        over = (b"10000\r\n" + b"x" * 65536 + b"\r\n") * 2  # 128 KiB in chunks, no length declared: cut at 64
        assert raw_request(port, ca, chunked, over).endswith(" 413 Request Entity Too Large")
        assert (gateway.memory_info().rss - rss) / 2**20 < 8
        start = time.monotonic()  # declares 1 KB, sends 10 bytes and waits: cut off after body_seconds
        slow = raw_request(port, ca, "POST /v1/fleet/get-run HTTP/1.1\nHost: x\nContent-Length: 1000\n", b"x" * 10)
        assert slow.endswith("408 Request Timeout") and time.monotonic() - start < 10
        abort = "POST /v1/fleet/push-messages HTTP/1.1\nHost: x\nContent-Length: 100000\n"
        raw_request(port, ca, abort, b"x" * 50000, wait_s=0.2)  # sends half and goes away
        assert len(upstream.seen) == 2  # none of these reached the SuperLink

        time.sleep(0.5)
        log = (procs.logs / "gateway.log").read_text()
        refused = [line for line in log.splitlines() if " refused " in line]
        assert len(refused) == 6 and "Traceback" not in log, log
        assert "refused 400 POST /v1/fleet/push-messages" in refused[-1] and "went away" in refused[-1]
        assert "refused 403 POST /v1/fleet/list-runs from 127.0.0.1:" in refused[0]
        assert all(oct(path.stat().st_mode & 0o777) == oct(mode) for path, mode in
                   [(procs.home, 0o700), (procs.logs, 0o700), (procs.logs / "gateway.log", 0o600)])
    finally:
        procs.stop_all()
        upstream.server.shutdown()


def test_process_logs_rotate_so_no_one_can_fill_the_disk(tmp_path):
    from semcon.flower.launch import pump

    log = tmp_path / "gateway.log"
    pump(io.BytesIO(b"".join(b"refused %04d\n" % i for i in range(1000))), log, max_bytes=1000, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    assert all(p.stat().st_size <= 1000 and p.stat().st_mode & 0o077 == 0 for p in tmp_path.iterdir())
    assert log.read_text().splitlines()[-1] == "refused 0999"


# --- A careless user: nothing of theirs is destroyed, bad input is one line ----------------------------------

COMMANDS = {
    "run": ["run", "configs/demo.yaml"],
    "compare": ["compare", "configs/demo.yaml", "--methods", "local"],
    "flower local": ["flower", "local", "configs/demo.yaml"],
    "flower run": ["flower", "run", "configs/demo.yaml", "--superlink", "127.0.0.1:9"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_out_never_destroys_what_is_there(command, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "thesis.tex").write_text("years of work")
    (mine / "ledger.jsonl").write_text("my ledger\n")
    one_line_error(cli(*COMMANDS[command], "--out", mine), "is not empty and holds no semcon run")
    assert (mine / "checkpoints" / "thesis.tex").read_text() == "years of work"
    assert (mine / "ledger.jsonl").read_text() == "my ledger\n"

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    one_line_error(cli(*COMMANDS[command], "--out", a_file), "is a file, not a directory")
    assert a_file.read_text() == "keep"


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path, monkeypatch):
    from conftest import ROOT

    from semcon.config import load_config
    from semcon.rundir import RunDirError, claim

    monkeypatch.chdir(ROOT)
    earlier = tmp_path / "earlier"
    RunDir.create(earlier, load_config("configs/demo.yaml"))
    (earlier / "summary.json").write_text("{}")
    (earlier / "my_notes.md").write_text("mine")
    one_line_error(cli("run", "configs/demo.yaml", "--out", earlier), "holds an earlier semcon run: pass --overwrite")
    assert (earlier / "summary.json").is_file()
    with pytest.raises(RunDirError, match="earlier semcon run"):
        RunDir.create(earlier, load_config("configs/demo.yaml"))
    claim(earlier, overwrite=True)
    assert sorted(p.name for p in earlier.iterdir()) == ["my_notes.md"]  # only semcon's own files went


def test_an_unwritable_out_is_one_line():
    import os

    target = "/sys/semcon-cannot-write-here"
    if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("/sys is writable here")
    one_line_error(cli("run", "configs/demo.yaml", "--out", target), "cannot write there")


def test_a_config_nested_50000_deep_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("clients: " + "[" * 50_000 + "]" * 50_000)
    one_line_error(cli("run", deep), "nested too deeply")


@pytest.mark.parametrize("name", ["/tmp/evil", "geo/", "../up", "a b", "x" * 65, "", "C:\\\\x", "naïve"])
def test_unsafe_client_names_exit_2_naming_them(name):
    one_line_error(cli("run", "configs/demo.yaml", "--set", f"clients.0.name={json.dumps(name)}"), "is not a safe name")


def test_names_equal_ignoring_case_are_refused_among_10000_clients():
    """Correctness at scale; the speed of the check is measured by benchmarks/bench_config.py."""
    from semcon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unique ignoring case, repeated: geo"):
        load_config("configs/demo.yaml", ["clients.1.name=geo", "clients.0.name=Geo"])
    tree = {"clients": [{"name": f"c{i:05d}", "data": {"source": "gsm8k"}} for i in range(10_000)]}
    assert len(load_config(tree=tree, overrides=["data.partition=iid"]).clients) == 10_000
    tree["clients"][-1]["name"] = "C00007"
    with pytest.raises(ConfigError, match="(?i)repeated: c00007"):
        load_config(tree=tree, overrides=["data.partition=iid"])


def test_paths_built_from_names_stay_inside(tmp_path):
    from semcon.names import child

    assert child(tmp_path, "geo") == tmp_path / "geo"
    (tmp_path / "link").symlink_to("/")
    for bad in ("../x", "/etc", "link"):
        with pytest.raises(ValueError):
            child(tmp_path, bad)


# --- The closed deployment on loopback: real SuperLink, gateway, app hub and SuperNodes ----------------------

def ssh_key(path, comment: str):
    """A new ECDSA P-384 key pair in OpenSSH format, as a node would make one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.with_name(path.name + ".pub").write_bytes(pub + f" {comment}\n".encode())
    return path


def flwr_cli(home, *args, timeout=120):
    from semcon.flower.launch import flower_env, flwr_bin

    done = subprocess.run([flwr_bin("flwr"), *map(str, args)], env=flower_env(home), capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.flower
@pytest.mark.long(220)
def test_a_closed_deployment_keeps_outsiders_out_and_members_to_their_identities(flower_tree, tmp_path):
    """The README's multi-machine commands on loopback: `semcon flower certs`, `superlink`, `register`, `run`."""
    import signal
    import threading

    from conftest import flower_processes, rows

    from semcon.config import load_config
    from semcon.flower.launch import Processes, free_port, wait_for_port, write_app, write_connection

    certs, state = tmp_path / "certs", tmp_path / "superlink"
    assert cli("flower", "certs", certs, "--host", "127.0.0.1", "--nodes", "2").exit_code == 0
    one_line_error(cli("flower", "certs", certs), "keys are never overwritten")
    gateway, api = free_port(), free_port()
    link = subprocess.Popen([sys.executable, "-m", "semcon", "flower", "superlink", "--certs", str(certs), "--host",
                             "127.0.0.1", "--port", str(gateway), "--api-port", str(api), "--state", str(state)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nodes = Processes(tmp_path / "nodes", tmp_path / "nodes" / "logs", certs=certs, fleet=f"127.0.0.1:{gateway}")
    try:
        wait_for_port(gateway, link, tmp_path / "superlink")
        assert semcon_cli("flower", "register", "--certs", certs, "--superlink", f"127.0.0.1:{api}").returncode == 0
        pins = {p: m["node_id"] for p, m in yaml.safe_load((certs / "members.yaml").read_text()).items()}
        assert set(pins) == {0, 1}
        # another organisation's registered node (of some other run) that will claim partition 1
        impostor = ssh_key(tmp_path / "impostor_key", "impostor")
        code, out = flwr_cli(state, "supernode", "register", impostor.with_suffix(".pub"),
                             write_connection(state, f"127.0.0.1:{api}", certs / "ca.crt"))
        assert code == 0, out

        # an outsider holding the public CA certificate reaches only the gateway, which serves nodes only
        target = write_connection(tmp_path / "outsider", f"127.0.0.1:{gateway}", certs / "ca.crt")
        stranger = ssh_key(tmp_path / "stranger_key", "stranger")
        code, out = flwr_cli(tmp_path / "outsider", "supernode", "register", stranger.with_suffix(".pub"), target)
        assert code != 0 and "403" in out, out
        RunDir.create(tmp_path / "evil", load_config(tree=flower_tree))
        code, out = flwr_cli(tmp_path / "outsider", "run", write_app(tmp_path / "evil"), target)
        assert code != 0 and "403" in out, out
        code, out = flwr_cli(tmp_path / "outsider", "ls", target)
        assert code != 0 and "403" in out, out

        # a node whose key nobody registered is refused
        unregistered = nodes.start_node(0, tmp_path / "n-stranger", key=stranger, name="stranger")
        assert unregistered.wait(timeout=60) != 0
        assert "Failed to activate" in (nodes.logs / "stranger.log").read_text()

        # the members, and the impostor claiming partition 1; math's node loses its state after round 0
        nodes.start_node(0, tmp_path / "n0")
        nodes.start_node(1, tmp_path / "n1")
        nodes.start_node(1, tmp_path / "n-impostor", key=impostor, name="impostor")
        done = threading.Event()
        threading.Thread(target=wipe_when_saved, args=(tmp_path / "n1", "math", done), daemon=True).start()
        config, run = tmp_path / "tiny.yaml", tmp_path / "run"
        config.write_text(yaml.safe_dump({**flower_tree, "min_clients": 1}))
        proc = semcon_cli("flower", "run", config, "--certs", certs, "--superlink", f"127.0.0.1:{api}", "--out", run)
        done.set()
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        nodes.stop_all()
        link.send_signal(signal.SIGTERM)
        link.wait(timeout=120)
    assert flower_processes(state) == [] and flower_processes(nodes.home) == []
    # the SuperLink's database and logs hold the run's traffic: this user's only
    assert [oct(p.stat().st_mode & 0o077) for p in (state, state / "superlink.db", state / "logs" / "superlink.log")
            ] == ["0o0"] * 3

    summary = json.loads((run / "summary.json").read_text())
    refused = {k: v for r in summary["per_round"] for k, v in r["failed"].items() if k.startswith("node ")}
    assert refused and all(f"pinned to node {pins[1]}" in why for why in refused.values()), refused
    last = summary["per_round"][-1]
    assert last["accepted"] == ["geo"] and "lost its saved state: no adapter of round 0" in last["failed"]["math"]
    assert {r["client"] for r in rows(run / "pseudo_labels" / "round_01.jsonl")} == {"geo"}
    assert {(r["client"], r["direction"]) for r in rows(run / "ledger.jsonl")} == {
        ("geo", "up"), ("geo", "down"), ("math", "down")}
    assert set(summary["eval_after"]) == {"geo"}


def semcon_cli(*args):
    return subprocess.run([sys.executable, "-m", "semcon", *map(str, args)], capture_output=True, text=True,
                          timeout=400)


def wipe_when_saved(state_dir, client: str, done) -> None:
    """Delete the client's saved adapters as soon as the first appears, as a wiped disk would."""
    while not done.wait(0.1):
        saved = list(state_dir.glob(f"*/{client}/round_*.safetensors"))
        if saved:
            for path in saved:
                path.unlink()
            return
