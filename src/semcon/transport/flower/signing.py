"""The coordinator's signature on every message it sends a node, checked by the node before it acts.

flwr 1.42 stores a message that a node pushes without ``reply_to`` as an instruction to any other node of the
run, and that node's ClientApp runs it (an upstream defect: the SuperLink checks the source id, which the
sender writes, not who sent it). The gateway refuses such pushes; independently of it, the ServerApp of a
closed deployment signs each message's semcon record with the coordinator's Ed25519 key (the one the nodes
already trust for apps, ``trusted-entities.yaml``), bound to the destination node, the message type and a
sequence number that only grows, and a ClientApp acts on nothing else.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import msgpack
import yaml

SIGNATURE, SEQUENCE = "signature", "sequence"  # fields of the semcon record
DOMAIN = "semcon-coordinator-order-v1"  # what the signature is for, so that it verifies nothing else
TRUSTED_KEY_ID = "fpk_semcon_coordinator"  # the key id in the nodes' trusted-entities.yaml


class Refused(ValueError):
    """A message this node does not act on (unsigned, signed by another key, for another node, replayed)."""


def order_digest(record: dict, node: int, kind: str) -> bytes:
    """What the coordinator signs: the record's fields (but the signature) for one node and message type."""
    fields = sorted((k, v) for k, v in record.items() if k != SIGNATURE)
    return hashlib.sha256(msgpack.packb([DOMAIN, int(node), kind, fields], use_bin_type=True)).digest()


class Signer:
    """The coordinator's side: adds a sequence number and the signature to each record it sends."""

    def __init__(self, key: Path):
        from cryptography.hazmat.primitives.serialization import load_ssh_private_key

        self.key = load_ssh_private_key(Path(key).read_bytes(), password=None)
        self.last = 0

    def sign(self, record: dict, node: int, kind: str) -> dict:
        self.last = max(self.last + 1, time.time_ns())  # grows across restarts of the ServerApp too
        record = {**record, SEQUENCE: self.last}
        return {**record, SIGNATURE: self.key.sign(order_digest(record, node, kind))}


def trusted_key(path: Path):
    """The coordinator's public key from a node's ``trusted-entities.yaml`` (or an OpenSSH ``.pub`` file)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    text = Path(path).read_text(encoding="utf-8")
    tree = yaml.safe_load(text)
    line = tree.get(TRUSTED_KEY_ID) if isinstance(tree, dict) else text.strip()
    key = load_ssh_public_key(str(line).encode()) if line else None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: no Ed25519 key {TRUSTED_KEY_ID} (the coordinator's, from `semcon flower certs`)")
    return key


def check_order(record: dict, node: int, kind: str, key, last: int) -> int:
    """The record's sequence number if ``key`` signed it for this node and message type and it is newer than
    ``last``; Refused otherwise."""
    from cryptography.exceptions import InvalidSignature

    signature, sequence = record.get(SIGNATURE), record.get(SEQUENCE)
    if not isinstance(signature, bytes) or type(sequence) is not int:
        raise Refused("unsigned: only the coordinator instructs this node")
    try:
        key.verify(signature, order_digest(record, node, kind))
    except InvalidSignature:
        raise Refused("its signature is not the coordinator's (or it was meant for another node or phase)") from None
    if sequence <= last:
        raise Refused(f"replayed: sequence {sequence} is not newer than {last}")
    return sequence
