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
from semcon.rounds.rundir import RunDir

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
    from semcon.rounds.federation import setup_messages
    from semcon.transport.flower.server_app import FlowerGroup

    tree = tiny_tree("smollm2-135m", min_clients=1, flower={"phase_timeout_s": 0.5, "hello_timeout_s": 0.5},
                     eval={"before": True})  # each node's first phase is then the base model's evaluation
    tree["clients"].append({"name": "chat", "data": {"source": "chatterbot"}})
    cfg = load_config(tree=tree)
    prompts = [Prompt("p0000", "What is the capital of France?", "x"), Prompt("p0001", "Name a fruit.", "x")]
    setup = {m.kind: encode(m) for m in setup_messages(cfg, prompts)}
    return FlowerGroup(grid, cfg, "abc123", cfg.rounds, setup, **flower), cfg, prompts


DEEP = "[" * 50_000  # the probe's train report: it took the ServerApp down with RecursionError
MALFORMED = {  # message type -> (reply, what the failure says)
    "query.upload": [({"client": "math"}, "KeyError"), ({"client": "math", "payload": "text"}, "not bytes"),
                     ({"client": "math", "payload": 7}, "not bytes"), ({"client": 7, "payload": b"x"}, "claims client 7"),
                     ({"client": "geo", "payload": b"x"}, "claims client 'geo'")],
    "train": [({"client": "math", "report": "{not json"}, "not JSON"),
              ({"client": "math", "report": "[1, 2]"}, "not an object"),
              ({"client": "math", "report": DEEP}, "nests deeper than 16"),
              ({"client": "math", "report": "[" * 10 + "]" * 10}, "not an object"),
              ({"client": "math", "report": " " * (2 << 20)}, "characters (limit"),
              ({"client": "math", "report": b"{}"}, "bytes, not text"),
              ({"client": "math", "report": ["{}"]}, "list, not text"),
              ({"client": "math", "report": '{"steps": 1}'}, "needs numbers"),
              ({"client": "math", "report": '{"reference": {"wiki": {"nll": "low"}}}'}, "mapping of names to numbers")],
    "evaluate": [({"client": "math", "report": '{"wiki": 3}'}, "mapping of names to numbers"),
                 ({"client": "math", "report": DEEP}, "nests deeper"),
                 ({"client": "math", "report": 3.5}, "float, not text"),
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
        ok, failed = group.evaluate(base=False), group.eval_failures["after"]
    assert "math" not in ok and set(ok) == {"geo", "chat"}
    assert needle in failed["math"] and "\n" not in failed["math"], failed


def test_a_reply_that_raises_anything_in_a_decoder_fails_only_its_client_and_the_run_finishes(
        tmp_path, flower_identity, embedder, monkeypatch):
    from semcon.coordinator.algorithms import make_algorithm
    from semcon.rounds.federation import federate
    from semcon.transport.flower import server_app

    decode_eval = server_app.parse_eval

    def parse_eval(rec):  # a decoder bug reached by one peer's bytes: not a ValueError
        if rec["client"] == "chat":
            raise RuntimeError("a decoder bug\nover two lines")
        return decode_eval(rec)

    monkeypatch.setattr(server_app, "parse_eval", parse_eval)
    nodes = {11: honest("geo"), 12: honest("math", train={"client": "math", "report": DEEP}), 13: honest("chat")}
    group, cfg, prompts = flower_group(tmp_path, FakeGrid(nodes))
    run_dir = RunDir.create(tmp_path / "run", cfg)
    group.wait_for_nodes()
    summary = federate(cfg, run_dir, make_algorithm(cfg, prompts, embedder), group)
    assert "nests deeper than 16" in summary["per_round"][0]["failed"]["math"]
    assert set(summary["eval_after"]) == {"geo", "math"}
    assert group.eval_failures["after"]["chat"] == "malformed evaluate reply (RuntimeError: a decoder bug over two lines)"


def test_errors_and_silence_are_failures_and_a_round_goes_on(tmp_path, flower_identity, embedder):
    from flwr.app import Error

    from semcon.coordinator.algorithms import make_algorithm
    from semcon.rounds.federation import federate

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


def test_keys_are_their_owners_only_and_the_certificate_names_each_address_once(tmp_path):
    for k, host in enumerate(("10.0.0.5", "127.0.0.1")):
        out = tmp_path / f"certs{k}"
        said = " ".join(cli("flower", "certs", out, "--host", host, "--nodes", "1").output.split())
        names = "10.0.0.5, 127.0.0.1, localhost" if host == "10.0.0.5" else "127.0.0.1, localhost"
        assert f"(for {names})" in said and said.count("127.0.0.1") == 1, said
        assert out.stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_mode & 0o077 == 0 for p in out.rglob("*")), oct(out.stat().st_mode)


def test_process_logs_rotate_so_no_one_can_fill_the_disk(tmp_path):
    from semcon.transport.flower.launch import pump

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
    from semcon.rounds.rundir import RunDirError, claim

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
    from semcon.transport.flower import flwr_bin
    from semcon.transport.flower.launch import flower_env

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
    from semcon.transport.flower.launch import Processes, free_port, wait_for_port, write_app, write_connection

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

        # a node whose key nobody registered is refused at the gateway
        unregistered = nodes.start_node(0, tmp_path / "n-stranger", key=stranger, name="stranger")
        assert unregistered.wait(timeout=60) != 0
        assert "not registered" in (state / "logs" / "gateway.log").read_text()

        # the members, and the impostor claiming partition 1; math's node loses its state after round 0
        nodes.start_node(0, tmp_path / "n0")
        nodes.start_node(1, tmp_path / "n1")
        nodes.start_node(1, tmp_path / "n-impostor", key=impostor, name="impostor")
        done, attacked = threading.Event(), {}
        threading.Thread(target=wipe_when_saved, args=(tmp_path / "n1", "math", done), daemon=True).start()
        # the probe: member math pushes an instruction to geo's node, through the gateway and, as if the
        # gateway were not there, straight to the SuperLink (which stores it: flwr 1.42 checks no sender)
        attack = (tmp_path / "n0", certs, pins, {"gateway": f"127.0.0.1:{gateway}", "superlink": f"127.0.0.1:{api}"},
                  state / "superlink.db", attacked, done)
        threading.Thread(target=instruct_when_running, args=attack, daemon=True).start()
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

    # the instruction: refused by the gateway; delivered by the SuperLink itself, refused by geo's ClientApp
    assert attacked == {"gateway": 403, "superlink": 200}, attacked
    assert "pushes an instruction to node" in (state / "logs" / "gateway.log").read_text()
    logs = "".join(p.read_text() for p in nodes.logs.glob("node0*.log"))
    assert "refused a train message: unsigned" in logs, logs[-3000:]
    kept = list((tmp_path / "n0").glob("*/config.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == (run / "config.yaml").read_text()  # the coordinator's setup
    assert rows(run / "pseudo_labels" / "round_01.jsonl") and all(  # geo's own answers, not a sybil's text
        "signed" not in r["text"] for r in rows(run / "pseudo_labels" / "round_01.jsonl"))


def instruct_when_running(victim_state, certs, pins, addresses, database, attacked, done) -> None:
    """Once geo's node holds the run's setup, push member math's instruction to it at each address."""
    import sqlite3

    from semcon.protocol import RunSetup, encode

    while not done.wait(0.2):
        if kept := list(victim_state.glob("*/config.yaml")):
            break
    else:
        return
    with sqlite3.connect(database) as db:
        run_id = db.execute("SELECT run_id FROM run").fetchone()[0] % (1 << 64)
    evil = "attack: {kind: sybil, clients: [math, geo], text: signed by nobody}\n" + kept[0].read_text()
    record = {"run-id": kept[0].parent.name, "round": 1, "saved-round": 0, "clients": ["geo", "math"],
              "config": encode(RunSetup("config", config=evil))}
    for where, address in addresses.items():
        attacked[where] = push_instruction(address, certs / "ca.crt", certs / "node1_key", pins[1], run_id, pins[0],
                                           record)


def push_instruction(address: str, ca, key_file, member: int, run_id: int, victim: int, record: dict) -> int:
    """What the probe did, with Flower's own Fleet client and a member's key: push a message without
    ``reply_to``, in the SuperLink's name, to another member's node, then its objects; the HTTP status."""
    import httpx
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.app.message.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto.fleet_pb2 import PushMessagesRequest
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    key = load_ssh_private_key(key_file.read_bytes(), password=None)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 1  # src 1: the SuperLink's id
    msg = Message(RecordDict({"semcon": ConfigRecord(record)}), dst_node_id=victim, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    objects = get_all_nested_objects(msg)
    request = PushMessagesRequest(node=Node(node_id=member), message_object_trees=[get_object_tree(msg)],
                                  messages_list=[message_to_proto(remove_content_from_message(msg))])
    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                    NodeAuthHttpInterceptor(key, key.public_key())]
    with FleetHttpClient.from_server_address(address, False, ca.read_bytes(), interceptors) as client:
        try:
            pushed = client.PushMessages(request)
            for object_id in pushed.objects_to_push:
                client.PushObject(PushObjectRequest(node=Node(node_id=member), run_id=run_id, object_id=object_id,
                                                    object_content=objects[object_id].deflate(),
                                                    session_id=pushed.session_id))
        except httpx.HTTPStatusError as e:
            return e.response.status_code
    return 200


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
