"""Messages between clients and server, one codec for every transfer, and upload validation.

Every message is encoded by ``encode`` (msgpack, then zstd) and decoded by ``decode``; the in-process
simulation and any network transport move exactly these bytes, so measured traffic is identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
import zstandard

log = logging.getLogger(__name__)
T = TypeVar("T")
CODEC_VERSION = 3
ZSTD_LEVEL = 10


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not follow the protocol."""


@dataclass(frozen=True)
class Upload:
    """A client's answers to the public prompts for one round: text, never tokens or logits, with two
    model-agnostic scalars per answer: whether it ended by itself and its confidence."""

    round: int
    client: str
    answers: dict[str, str]  # prompt id -> answer text
    finished: dict[str, bool] = field(default_factory=dict)  # prompt id -> ended by end-of-turn (else cut at the cap)
    confidence: dict[str, float] = field(default_factory=dict)  # prompt id -> mean token log-prob (<= 0); optional
    # signal -> prompt id -> the client's competence on that prompt, in [0, 1] (the signals the run asks for)
    competence: dict[str, dict[str, float]] = field(default_factory=dict)
    kind: str = field(default="upload", init=False)


@dataclass(frozen=True)
class Download:
    """The consensus pseudo-labels of one round, broadcast to every client."""

    round: int
    labels: dict[str, str]  # prompt id -> pseudo-label text (prompts without consensus are absent)
    finished: dict[str, bool] = field(default_factory=dict)  # prompt id -> False for a cut answer kept as label
    kind: str = field(default="download", init=False)


@dataclass(frozen=True)
class AdapterUpdate:
    """LoRA adapter tensors (safetensors bytes) for the parameter-averaging baselines, either way."""

    round: int
    client: str  # "server" for the averaged adapter sent down
    tensors: bytes
    num_examples: int = 0
    kind: str = field(default="adapter", init=False)


@dataclass(frozen=True)
class RunSetup:
    """What a client needs once per run before its first round, sent once rather than with every message:
    the resolved config (kind ``config``) or the public prompts (kind ``public``)."""

    kind: str  # "config" or "public"
    config: str = ""  # the resolved config YAML
    prompts: dict[str, str] = field(default_factory=dict)  # prompt id -> instruction


Message = Upload | Download | AdapterUpdate | RunSetup


def raw_bytes(msg: Message) -> int:
    """UTF-8 bytes of the message's texts (or its tensor bytes): the payload before framing and compression."""
    if isinstance(msg, AdapterUpdate):
        return len(msg.tensors)
    if isinstance(msg, RunSetup):
        return len(msg.config.encode("utf-8")) + sum(len(t.encode("utf-8")) for t in msg.prompts.values())
    texts = msg.answers.values() if isinstance(msg, Upload) else msg.labels.values()
    return sum(len(t.encode("utf-8")) for t in texts)


def digest(msg: Upload) -> str:
    """A digest of an upload's content (not of its bytes: independent of map order and compression), so that
    the rows a run keeps of it can be checked against what arrived."""
    body = {"round": msg.round, "client": msg.client, "answers": msg.answers, "finished": msg.finished,
            "confidence": msg.confidence, "competence": msg.competence}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def ledger_row(round: int, client: str, direction: str, msg: Message | None, encoded: bytes) -> dict:
    """One row of ``ledger.jsonl``: sizes from the bytes that actually moved, and an upload's content digest
    (``semcon verify`` checks the kept upload rows against it). ``msg`` None: bytes that did not decode."""
    if msg is None:
        return {"round": round, "client": client, "direction": direction, "kind": "invalid",
                "raw_bytes": len(encoded), "encoded_bytes": len(encoded)}
    return {"round": round, "client": client, "direction": direction, "kind": msg.kind, "raw_bytes": raw_bytes(msg),
            "encoded_bytes": len(encoded), **({"digest": digest(msg)} if isinstance(msg, Upload) else {})}


def upload_rows(uploads: dict[str, Upload], prompt_ids: list[str], signals: list[str],
                degenerate: Callable[[str], bool]) -> list[dict]:
    """The kept form of a round's accepted uploads (``uploads/round_NN.jsonl``): one row per answer, client by
    client, with its flags and numbers, and whether the server found it ``degenerate``."""
    rows = []
    for name, u in uploads.items():
        for pid in prompt_ids:
            conf = u.confidence.get(pid)
            rows.append({"prompt_id": pid, "client": name, "text": u.answers[pid], "finished": bool(u.finished[pid]),
                         "degenerate": bool(degenerate(u.answers[pid])),
                         "confidence": float(conf) if conf is not None and math.isfinite(conf) else None,
                         "competence": {s: float(u.competence[s][pid]) for s in signals}})
    return rows


def uploads_from_rows(round: int, rows: list[dict]) -> dict[str, Upload]:
    """The uploads that ``upload_rows`` kept, as the server accepted them (client order kept)."""
    out: dict[str, dict] = {}
    for r in rows:
        u = out.setdefault(r["client"], {"answers": {}, "finished": {}, "confidence": {}, "competence": {}})
        u["answers"][r["prompt_id"]] = r["text"]
        u["finished"][r["prompt_id"]] = r["finished"]
        if r.get("confidence") is not None:
            u["confidence"][r["prompt_id"]] = r["confidence"]
        for signal, value in (r.get("competence") or {}).items():
            u["competence"].setdefault(signal, {})[r["prompt_id"]] = value
    return {name: Upload(round=round, client=name, **fields) for name, fields in out.items()}


def encode(msg: Message) -> bytes:
    if isinstance(msg, Upload):
        body = {"v": CODEC_VERSION, "kind": "upload", "round": msg.round, "client": msg.client, "answers": msg.answers,
                "finished": msg.finished, "confidence": msg.confidence, "competence": msg.competence}
    elif isinstance(msg, Download):
        body = {"v": CODEC_VERSION, "kind": "download", "round": msg.round, "labels": msg.labels,
                "finished": msg.finished}
    elif isinstance(msg, AdapterUpdate):
        body = {"v": CODEC_VERSION, "kind": "adapter", "round": msg.round, "client": msg.client,
                "tensors": msg.tensors, "num_examples": msg.num_examples}
    elif isinstance(msg, RunSetup) and msg.kind in ("config", "public"):
        body = {"v": CODEC_VERSION, "kind": msg.kind, **({"config": msg.config} if msg.kind == "config"
                                                        else {"prompts": msg.prompts})}
    else:
        raise TypeError(f"not a message: {type(msg).__name__}")
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(msgpack.packb(body, use_bin_type=True))


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts at most, checked before anything that size is allocated: decompressed bytes,
    entries of any map or array, characters of any string, bytes of any binary."""

    max_bytes: int
    max_items: int
    max_str: int
    max_bin: int = 0


FRAMING = 4096  # message fields besides the payload, with room to spare
PROMPT_ID_BYTES = 256  # a prompt id as map key, with its msgpack header
MAX_WINDOW = 1 << 23  # zstd window (decoder memory); semcon's encoder uses at most 4 MiB


def text_limits(num_prompts: int, max_answer_chars: int) -> Limits:
    """Bounds for uploads and downloads of ``num_prompts`` texts of at most ``max_answer_chars`` each
    (4 bytes per character: UTF-8's worst case)."""
    per_text = 4 * max_answer_chars + PROMPT_ID_BYTES
    return Limits(max_bytes=num_prompts * per_text + FRAMING, max_items=num_prompts + 16, max_str=per_text)


SETUP_LIMITS = Limits(max_bytes=64 << 20, max_items=1 << 20, max_str=16 << 20)  # a config, or prompts


def adapter_limits(max_bytes: int) -> Limits:
    """Bounds for adapter messages (the parameter-averaging baselines): one binary of tensors."""
    return Limits(max_bytes=max_bytes + FRAMING, max_items=16, max_str=1024, max_bin=max_bytes)


def decompress(data: bytes, max_bytes: int) -> bytes:
    """zstd-decompress at most ``max_bytes``: a frame that declares or produces more is refused before the
    memory is taken (the declared size is checked first, then the output is read in bounded chunks)."""
    declared = zstandard.frame_content_size(data)  # -1 when the frame does not state it
    if declared > max_bytes:
        raise ProtocolError(f"payload declares {declared:,} bytes decompressed (limit {max_bytes:,})")
    reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(data)
    chunks, total = [], 0
    while chunk := reader.read(min(1 << 20, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ProtocolError(f"payload decompresses to more than {max_bytes:,} bytes")
    return b"".join(chunks)


def decode(data: bytes, limits: Limits) -> Message:
    """Bytes back into a message, within ``limits``. Raises ProtocolError on anything malformed or too
    large, never another error."""
    try:
        raw = decompress(bytes(data), limits.max_bytes)
        body = msgpack.unpackb(raw, raw=False, max_str_len=limits.max_str, max_bin_len=limits.max_bin,
                               max_array_len=limits.max_items, max_map_len=limits.max_items, max_ext_len=0)
    except ProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt bytes can fail in either library in many ways
        raise ProtocolError(f"undecodable payload ({type(e).__name__}: {e})") from None
    if not isinstance(body, dict) or not is_int(body.get("v")) or body["v"] != CODEC_VERSION:
        raise ProtocolError(f"not a semcon v{CODEC_VERSION} message")
    kind, fields = body.get("kind"), FIELDS.get(body.get("kind"))
    if fields is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if unknown := sorted(map(str, set(body) - set(fields) - {"v", "kind"})):
        raise ProtocolError(f"{kind} message has unknown fields {', '.join(unknown[:3])}")
    for name, check in fields.items():
        if name not in body:
            raise ProtocolError(f"{kind} message lacks field {name!r}")
        if not check(body[name]):
            raise ProtocolError(f"{kind} message: field {name!r} has the wrong type ({type(body[name]).__name__})")
    args = {name: body[name] for name in fields}
    if kind in ("config", "public"):
        return RunSetup(kind, **args)
    return {"upload": Upload, "download": Download, "adapter": AdapterUpdate}[kind](**args)


def is_int(x) -> bool:
    """A true integer (msgpack turns ``true`` into a bool and ``1.0`` into a float; neither is a round)."""
    return type(x) is int


def is_text_map(x) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) for k in x)


def map_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    """A map from prompt ids to values that pass ``check``."""
    return lambda x: is_text_map(x) and all(check(v) for v in x.values())


FIELDS: dict[str, dict[str, Callable[[object], bool]]] = {  # each kind's fields and their wire types
    "upload": {"round": is_int, "client": lambda x: isinstance(x, str), "answers": is_text_map,
               "finished": map_of(lambda v: isinstance(v, bool)), "confidence": map_of(lambda v: is_number(v)),
               "competence": map_of(map_of(lambda v: is_number(v)))},
    "download": {"round": is_int, "labels": map_of(lambda v: isinstance(v, str)),
                 "finished": map_of(lambda v: isinstance(v, bool))},
    "adapter": {"round": is_int, "client": lambda x: isinstance(x, str), "tensors": lambda x: isinstance(x, bytes),
                "num_examples": is_int},
    "config": {"config": lambda x: isinstance(x, str)},
    "public": {"prompts": map_of(lambda v: isinstance(v, str))},
}


def decode_all(payloads: dict[str, bytes], limits: Limits) -> tuple[dict[str, Message], dict[str, str]]:
    """Decode each client's payload once; one that does not decode is a reason, not an exception."""
    messages, problems = {}, {}
    for name, data in payloads.items():
        try:
            messages[name] = decode(data, limits)
        except ProtocolError as e:
            problems[name] = str(e)
    return messages, problems


def is_blank(text: str) -> bool:
    """Nothing a reader would see: whitespace, control and format characters (zero-width spaces and joiners,
    the byte-order mark, soft hyphens) only."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def validate_upload(msg: Message, *, client: str, round: int, prompt_ids: set[str], max_chars: int,
                    signals: list[str] = ()) -> list[str]:
    """Every reason this message is not a valid upload from ``client`` for ``round`` (empty when valid).
    ``decode`` has already checked the wire types of its fields. ``signals``: the competence signals the run
    asks for, each one number in [0, 1] per answer."""
    if not isinstance(msg, Upload):
        return [f"expected an upload, got a {msg.kind}"]
    problems = []
    if msg.client != client:
        problems.append(f"claims to be client {msg.client!r}")
    if msg.round != round:
        problems.append(f"round {msg.round!r} instead of {round}")
    keys = set(msg.answers)
    if unknown := sorted(keys - prompt_ids):
        problems.append(f"unknown prompt ids {', '.join(unknown[:3])}{'...' if len(unknown) > 3 else ''}")
    if missing := sorted(prompt_ids - keys):
        problems.append(f"missing {len(missing)} prompt ids (e.g. {missing[0]})")
    for pid, text in msg.answers.items():
        if not isinstance(text, str):
            problems.append(f"answer to {pid} is {type(text).__name__}, not text")
        elif len(text) > max_chars:
            problems.append(f"answer to {pid} has {len(text)} characters (limit {max_chars})")
    if set(msg.finished) != keys:
        problems.append("finished flags do not match the answers' prompt ids")
    if set(msg.confidence) - keys:
        problems.append("confidence given for prompts it did not answer")
    if bad := [pid for pid, c in msg.confidence.items() if not (math.isfinite(c) and c <= 0)]:
        problems.append(f"confidence of {bad[0]} is {msg.confidence[bad[0]]!r} (a mean log-probability: finite, <= 0)")
    if unasked := sorted(set(msg.competence) - set(signals)):
        problems.append(f"competence signal {unasked[0]!r} was not asked for")
    for signal in signals:
        values = msg.competence.get(signal, {})
        if set(values) != keys:
            problems.append(f"competence {signal!r} must give one number per answer")
        elif bad := [pid for pid, c in values.items() if not (math.isfinite(c) and 0 <= c <= 1)]:
            problems.append(f"competence {signal!r} of {bad[0]} is {values[bad[0]]!r} (a calibrated share: in [0, 1])")
    if not problems and msg.answers and all(is_blank(text) for text in msg.answers.values()):
        problems.append("every answer is empty")
    return problems


def check_adapter(msg: Message, client: str, round: int, reference: dict | None) -> dict:
    """The tensors of a valid adapter upload from ``client`` for ``round``, with the keys and shapes of
    ``reference`` (the federation's first accepted upload; None: this is the first); else ValueError."""
    import torch
    from safetensors.torch import load as load_tensors

    if not isinstance(msg, AdapterUpdate) or msg.client != client or msg.round != round:
        raise ValueError(f"expected the round-{round} adapter of {client!r}, got {msg.kind} for "
                         f"{getattr(msg, 'client', '?')!r}, round {getattr(msg, 'round', '?')}")
    try:
        state = load_tensors(msg.tensors)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt bytes
        raise ValueError(f"adapter tensors do not parse ({type(e).__name__})") from None
    reference = state if reference is None else reference
    if set(state) != set(reference) or any(state[k].shape != v.shape for k, v in reference.items()):
        raise ValueError("adapter keys or shapes differ from the federation's")
    if not all(torch.isfinite(v).all() for v in state.values()) or msg.num_examples <= 0:
        raise ValueError("adapter has non-finite values or no examples")
    return state


def accept_uploads(round: int, clients: list[str], messages: dict[str, Message],
                   check: Callable[[Message, str], T]) -> tuple[dict[str, T], dict[str, str]]:
    """``check`` each client's decoded upload (in client order); one that fails, whatever it raises, is
    rejected for this round with a logged reason naming the client, and the others go on."""
    accepted, rejected = {}, {}
    for name in clients:
        if name not in messages:
            continue
        try:
            accepted[name] = check(messages[name], name)
        except Exception as e:  # noqa: BLE001 - a peer's upload: ProtocolError and ValueError, or any check's bug
            rejected[name] = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            log.warning("round %d: rejected the upload of client %r: %s", round, name, e)
    return accepted, rejected


# Reports: the small JSON a client sends back after training or evaluating (loss, tokens, held-out metrics).
TRAIN_STATS = ("steps", "tokens", "losses", "seconds", "dropped_too_long")
MAX_STEPS_REPORTED = 100_000  # losses a train report may carry


def is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_scores(obj, what: str) -> dict[str, float]:
    """``obj`` as a mapping of names to numbers (or None: a metric that does not apply)."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) and (v is None or is_number(v)) for k, v in obj.items()):
        raise ProtocolError(f"{what} is not a mapping of names to numbers")
    return obj


MAX_REPORT_CHARS = 1 << 20  # a train or evaluation report's JSON text (a real one is a few KB)
MAX_DEPTH = 16  # nesting of a peer's JSON (a real report nests 3 deep)
_JSON_SYNTAX = re.compile(r'["\\\[\]{}]')


def load_report(text, what: str, max_chars: int = MAX_REPORT_CHARS, max_depth: int = MAX_DEPTH):
    """A peer's JSON text parsed, its size and nesting bounded before the parser sees it (a reply of 50,000
    brackets would otherwise take the parser's recursion down); ProtocolError for anything else."""
    if not isinstance(text, str):
        raise ProtocolError(f"{what} is {type(text).__name__}, not text")
    if len(text) > max_chars:
        raise ProtocolError(f"{what} has {len(text):,} characters (limit {max_chars:,})")
    depth, in_string, escaped_at = 0, False, -1  # escaped_at: the position a backslash escapes
    for match in _JSON_SYNTAX.finditer(text):  # only quotes, backslashes and brackets: linear in the text
        ch, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if ch == "\\":
                escaped_at = at + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise ProtocolError(f"{what} nests deeper than {max_depth}")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{what} is not JSON ({type(e).__name__}: {str(e)[:80]})") from None


def check_train_report(obj) -> dict:
    """A train-phase report: the training statistics (absent after the last round) and held-out reference
    scores per domain (NLL and bits per byte)."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"train report is a {type(obj).__name__}, not an object")
    if unknown := sorted(set(obj) - {*TRAIN_STATS, "reference"}):
        raise ProtocolError(f"train report has unknown fields {', '.join(unknown[:3])}")
    if "steps" in obj:
        if not all(is_number(obj.get(k)) for k in TRAIN_STATS if k != "losses"):
            raise ProtocolError(f"train report needs numbers for {', '.join(k for k in TRAIN_STATS if k != 'losses')}")
        losses = obj.get("losses")
        if not (isinstance(losses, list) and len(losses) == obj["steps"] <= MAX_STEPS_REPORTED
                and all(is_number(x) for x in losses)):
            raise ProtocolError("train report needs 'losses', one number per step")
    if "reference" in obj:
        check_eval_report(obj["reference"])
    return obj


def check_eval_report(obj) -> dict:
    """An evaluation report: metrics per held-out domain."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"evaluation report is a {type(obj).__name__}, not an object")
    for domain, scores in obj.items():
        check_scores(scores, f"evaluation report for {domain!r}")
    return obj
