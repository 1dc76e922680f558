"""Property-based fuzz of every decoder a peer's bytes reach: replies to the server (hello, upload, train and
evaluation reports, inside the per-client guard), upload payloads (decode, then validation), and what a node
receives (the coordinator's signed record, the run's setup).

Each ``TARGETS`` entry maps a generated input to an outcome and raises only when an exception escapes the
guard (server side) or the decoder's declared error (``ValueError`` and its ProtocolError/Refused).
The suite runs a bounded number of examples; ``scripts/fuzz_decoders.py`` runs the same targets 100,000+ times.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import msgpack
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcon.protocol import (ProtocolError, RunSetup, Upload, accept_uploads, decode, encode, text_limits,
                             validate_upload)

LIMITS = text_limits(8, 400)
PROMPTS = {"p0000", "p0001"}
EXAMPLES = 150  # per target in the suite

# --- inputs -------------------------------------------------------------------------------------------------
ints = st.integers(-(2**63), 2**63 - 1)
scalars = st.none() | st.booleans() | ints | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25)
report_like = st.fixed_dictionaries({}, optional={
    "steps": scalars, "tokens": scalars, "seconds": scalars, "dropped_too_long": scalars,
    "losses": st.lists(scalars, max_size=4), "reference": json_values, "wiki": json_values})
json_texts = st.one_of(
    json_values.map(json.dumps), report_like.map(json.dumps), st.text(max_size=200),
    st.integers(0, 60_000).map(lambda n: "[" * n),  # the probe's reply, and every depth up to it
    st.tuples(st.integers(0, 40), st.sampled_from("[{")).map(lambda t: t[1] * t[0] + "1" + "]}"[t[1] == "{"] * t[0]),
    st.text(alphabet='"\\[]{}', max_size=300))
record_values = st.one_of(st.text(max_size=40), json_texts, st.binary(max_size=300), ints, st.floats(), st.booleans(),
                          st.lists(st.text(max_size=10), max_size=4), st.lists(ints, max_size=4))
record_keys = st.sampled_from(["client", "payload", "report", "has-setup", "semcon"]) | st.text(max_size=8)
records = st.one_of(st.dictionaries(record_keys, record_values, max_size=6), st.fixed_dictionaries(
    {"client": st.sampled_from(["math", "math", "geo", "../x"]) | record_values},  # the shape of a real reply
    optional={"payload": st.binary(max_size=300) | record_values, "report": json_texts | record_values,
              "has-setup": st.booleans() | record_values}))
pack_ints = st.integers(-(2**63), 2**64 - 1)
wire_values = st.recursive(st.none() | st.booleans() | pack_ints | st.floats() | st.text(max_size=20)
                           | st.binary(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=20)
text_maps = st.dictionaries(st.sampled_from(sorted(PROMPTS)) | st.text(max_size=6), wire_values, max_size=3)


@st.composite
def bodies(draw) -> bytes:
    """A message body of the codec's shape with any field values, packed and compressed as ``encode`` does."""
    body = {"v": draw(st.sampled_from([3, 3, 2, True, 3.0])), "kind": draw(st.sampled_from(
        ["upload", "download", "config", "public", "adapter", "x"]))}
    for name in draw(st.sets(st.sampled_from(["round", "client", "answers", "finished", "confidence", "competence",
                                              "labels", "config", "prompts", "tensors", "num_examples", "extra"]))):
        body[name] = draw(st.one_of(wire_values, text_maps, st.dictionaries(st.text(max_size=4), text_maps, max_size=2)))
    return zstandard.ZstdCompressor(level=1).compress(msgpack.packb(body, use_bin_type=True))


def valid_upload() -> bytes:
    answers = {p: f"answer {p}" for p in sorted(PROMPTS)}
    return encode(Upload(1, "math", answers, dict.fromkeys(answers, True), dict.fromkeys(answers, -0.5),
                         {"knn": dict.fromkeys(answers, 0.5)}))


mutated = st.tuples(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8)).map(
    lambda t: bytes(mutate(valid_upload(), t[0])))


def mutate(data: bytes, flips) -> bytearray:
    out = bytearray(data)
    for at, value in flips:
        out[at % len(out)] = value
    return out


payloads = st.one_of(st.binary(max_size=2000), bodies(), mutated)

# --- targets: each returns an outcome, and raises only on an escape ------------------------------------------
@functools.cache
def original():
    """The server's message that replies answer."""
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    return Message(RecordDict({}), dst_node_id=12, message_type="train")


@functools.cache
def coordinator_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().public_key()


def reply(record, container: str):
    """A node's reply to the server as Flower delivers it (the peer chooses the record and its kind)."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    try:
        if container == "config":
            content = RecordDict({"semcon": ConfigRecord(record)})
        elif container == "metric":
            content = RecordDict({"semcon": MetricRecord({k: v for k, v in record.items()
                                                          if isinstance(v, int | float) and not isinstance(v, bool)})})
        else:
            content = RecordDict({})
    except (TypeError, ValueError):  # Flower refuses to carry it, so no peer can send it
        return None
    return Message(content, reply_to=original())


def server_reads_reply(case) -> str:
    """Any reply of any phase, through the server's per-client guard: a value or a reason, never an exception."""
    from semcon.transport.flower.server_app import parse_eval, parse_hello, parse_train, parse_upload, read_reply

    kind, record, container = case
    message = reply(record, container)
    if message is None:
        return "not carried by Flower"
    parse = {"query.hello": parse_hello, "query.upload": parse_upload, "train": parse_train, "evaluate": parse_eval}
    value, why = read_reply(message, kind, "math", parse[kind])
    assert why is None or (value is None and "\n" not in why)  # a failure is one line
    return "parsed" if why is None else "failure"


def check_upload(msg, name):
    if problems := validate_upload(msg, client=name, round=1, prompt_ids=PROMPTS, max_chars=400, signals=["knn"]):
        raise ProtocolError("; ".join(problems))
    return msg


def server_decodes_upload(data: bytes) -> str:
    """An upload's bytes: ``decode`` raises ProtocolError only; a decoded one is accepted or rejected."""
    try:
        msg = decode(data, LIMITS)
    except ProtocolError:
        return "undecodable"
    accepted, rejected = accept_uploads(1, ["math"], {"math": msg}, check_upload)
    assert set(accepted) | set(rejected) == {"math"}
    return "accepted" if accepted else "rejected"


def node_reads_order(case) -> str:
    """What a closed deployment's node receives: only a record the coordinator signed, else Refused."""
    from semcon.transport.flower.signing import check_order

    record, node = case
    try:
        check_order(record, node, "train", coordinator_key(), last=0)
    except ValueError:  # Refused
        return "refused"
    raise AssertionError("an unsigned or forged record was accepted")


def node_keeps_setup(rec) -> str:
    """The run's setup on a node: kept, or refused with a ValueError (ProtocolError, Refused)."""
    from semcon.transport.flower.client_app import save_setup

    state = Path(tempfile.mkdtemp(prefix="fuzz-setup-"))
    try:
        save_setup(state, rec)
        return "kept"
    except ValueError:
        return "refused"
    finally:
        shutil.rmtree(state, ignore_errors=True)


setup_fields = st.one_of(payloads, st.just(encode(RunSetup("config", "rounds: 1\n"))),
                         st.just(encode(RunSetup("public", prompts={"p0": "hi"}))))
TARGETS = {  # name -> (target, strategy)
    "server: replies (hello, upload, train, evaluate)": (server_reads_reply, st.tuples(
        st.sampled_from(["query.hello", "query.upload", "train", "evaluate"]), records,
        st.sampled_from(["config", "config", "metric", "none"]))),
    "server: upload payloads": (server_decodes_upload, payloads),
    "node: signed orders": (node_reads_order, st.tuples(
        st.dictionaries(st.sampled_from(["signature", "sequence", "round", "run-id"]) | st.text(max_size=6),
                        st.one_of(st.binary(max_size=80), ints, st.text(max_size=10)), max_size=5), ints)),
    "node: run setup": (node_keeps_setup, st.fixed_dictionaries({}, optional={"config": setup_fields,
                                                                              "public": setup_fields})),
}


def fuzz(name: str, examples: int, on_example=None):
    """A hypothesis test of ``TARGETS[name]`` over ``examples`` inputs (``on_example``: called with each
    outcome or escaped exception, for the script's counts)."""
    target, strategy = TARGETS[name]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=on_example is None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        if on_example is None:
            target(case)
            return
        try:
            on_example(target(case))
        except Exception as e:  # noqa: BLE001 - the script counts escapes instead of stopping at the first
            on_example(e)

    return run


def test_no_reply_escapes_the_servers_guard():
    fuzz("server: replies (hello, upload, train, evaluate)", EXAMPLES)()


def test_upload_bytes_raise_only_protocol_errors():
    fuzz("server: upload payloads", EXAMPLES)()


def test_a_node_acts_only_on_signed_orders_and_keeps_a_valid_setup():
    fuzz("node: signed orders", EXAMPLES)()
    fuzz("node: run setup", EXAMPLES)()
