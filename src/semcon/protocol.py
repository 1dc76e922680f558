"""Messages between clients and server, one codec for every transfer, and upload validation.

Every message is encoded by ``encode`` (msgpack, then zstd) and decoded by ``decode``; the in-process
simulation and any network transport move exactly these bytes, so measured traffic is identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
import zstandard

log = logging.getLogger(__name__)
T = TypeVar("T")
CODEC_VERSION = 1
ZSTD_LEVEL = 10


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not follow the protocol."""


@dataclass(frozen=True)
class Upload:
    """A client's answers to the public prompts for one round: text only, never tokens or logits."""

    round: int
    client: str
    answers: dict[str, str]  # prompt id -> answer text
    kind: str = field(default="upload", init=False)


@dataclass(frozen=True)
class Download:
    """The consensus pseudo-labels of one round, broadcast to every client."""

    round: int
    labels: dict[str, str]  # prompt id -> pseudo-label text (prompts without consensus are absent)
    kind: str = field(default="download", init=False)


@dataclass(frozen=True)
class AdapterUpdate:
    """LoRA adapter tensors (safetensors bytes) for the parameter-averaging baselines, either way."""

    round: int
    client: str  # "server" for the averaged adapter sent down
    tensors: bytes
    num_examples: int = 0
    kind: str = field(default="adapter", init=False)


Message = Upload | Download | AdapterUpdate


def raw_bytes(msg: Message) -> int:
    """UTF-8 bytes of the message's texts (or its tensor bytes): the payload before framing and compression."""
    if isinstance(msg, AdapterUpdate):
        return len(msg.tensors)
    texts = msg.answers.values() if isinstance(msg, Upload) else msg.labels.values()
    return sum(len(t.encode("utf-8")) for t in texts)


def encode(msg: Message) -> bytes:
    if isinstance(msg, Upload):
        body = {"v": CODEC_VERSION, "kind": "upload", "round": msg.round, "client": msg.client, "answers": msg.answers}
    elif isinstance(msg, Download):
        body = {"v": CODEC_VERSION, "kind": "download", "round": msg.round, "labels": msg.labels}
    elif isinstance(msg, AdapterUpdate):
        body = {"v": CODEC_VERSION, "kind": "adapter", "round": msg.round, "client": msg.client,
                "tensors": msg.tensors, "num_examples": msg.num_examples}
    else:
        raise TypeError(f"not a message: {type(msg).__name__}")
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(msgpack.packb(body, use_bin_type=True))


def decode(data: bytes) -> Message:
    """Bytes back into a message. Raises ProtocolError on anything malformed, never another error."""
    try:
        body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 28), raw=False)
    except Exception as e:  # noqa: BLE001 - corrupt bytes can fail in either library in many ways
        raise ProtocolError(f"undecodable payload ({type(e).__name__}: {e})") from None
    if not isinstance(body, dict) or body.get("v") != CODEC_VERSION:
        raise ProtocolError(f"not a semcon v{CODEC_VERSION} message")
    try:
        if body["kind"] == "upload":
            return Upload(round=body["round"], client=body["client"], answers=body["answers"])
        if body["kind"] == "download":
            return Download(round=body["round"], labels=body["labels"])
        if body["kind"] == "adapter":
            return AdapterUpdate(round=body["round"], client=body["client"], tensors=body["tensors"],
                                 num_examples=body["num_examples"])
    except KeyError as e:
        raise ProtocolError(f"{body.get('kind')} message lacks field {e}") from None
    raise ProtocolError(f"unknown message kind {body.get('kind')!r}")


def validate_upload(msg: Message, *, client: str, round: int, prompt_ids: set[str], max_chars: int) -> list[str]:
    """Every reason this message is not a valid upload from ``client`` for ``round`` (empty when valid)."""
    if not isinstance(msg, Upload):
        return [f"expected an upload, got a {msg.kind}"]
    problems = []
    if msg.client != client:
        problems.append(f"claims to be client {msg.client!r}")
    if not isinstance(msg.round, int) or msg.round != round:
        problems.append(f"round {msg.round!r} instead of {round}")
    if not isinstance(msg.answers, dict):
        return problems + [f"answers are a {type(msg.answers).__name__}, not a mapping"]
    keys = set(msg.answers)
    if unknown := sorted(map(str, keys - prompt_ids)):
        problems.append(f"unknown prompt ids {', '.join(unknown[:3])}{'...' if len(unknown) > 3 else ''}")
    if missing := sorted(prompt_ids - keys):
        problems.append(f"missing {len(missing)} prompt ids (e.g. {missing[0]})")
    for pid, text in msg.answers.items():
        if not isinstance(text, str):
            problems.append(f"answer to {pid} is {type(text).__name__}, not text")
        elif len(text) > max_chars:
            problems.append(f"answer to {pid} has {len(text)} characters (limit {max_chars})")
    if not problems and msg.answers and not any(text.strip() for text in msg.answers.values()):
        problems.append("every answer is empty")
    return problems


def accept_uploads(round: int, clients: list[str], payloads: dict[str, bytes],
                   check: Callable[[Message, str], T]) -> tuple[dict[str, T], dict[str, str]]:
    """Decode each client's payload (in client order) and ``check`` it; a payload that fails either is
    rejected for this round with a logged reason naming the client, and the others go on."""
    accepted, rejected = {}, {}
    for name in clients:
        if name not in payloads:
            continue
        try:
            accepted[name] = check(decode(payloads[name]), name)
        except ValueError as e:  # ProtocolError included
            rejected[name] = str(e)
            log.warning("round %d: rejected the upload of client %r: %s", round, name, e)
    return accepted, rejected


def empty_answers(msg: Upload) -> set[str]:
    """Prompt ids the client answered with nothing (those answers sit out the consensus)."""
    return {pid for pid, text in msg.answers.items() if not text.strip()}
