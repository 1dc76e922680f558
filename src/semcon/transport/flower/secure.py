"""A closed Flower deployment: only the coordinator submits runs and registers nodes, only registered
nodes join, and nodes run only apps the coordinator signed.

flwr 1.42 serves its Fleet (nodes), Control (``flwr run``, node registration) and Runtime APIs on one
port, and its open-source build has no authentication on the Control API: whoever reaches that port can
register a node and run code on the SuperLink's machine and on every node. So, here:

- the SuperLink listens on 127.0.0.1 only, with TLS and ``--enable-supernode-auth``;
- the **gateway** (``gateway.py``) is the one public port: TLS, it forwards Flower's node endpoints to the
  SuperLink for registered nodes only, refuses what a node may not do (instruct another node, read another
  node's objects), and bounds what an outsider can hold (connections, heads, bodies), one log line each;
- nodes start with ``--trusted-entities`` holding the coordinator's Ed25519 key, and Flower runs an app on
  them only if a signature by that key comes with it; semcon's ClientApp, given the same file as its
  ``coordinator-key``, acts only on messages that key signed (``signing.py``). Flower attaches signatures
  only to apps it fetches from an app hub (``flwr run @publisher/app==version``), so the coordinator signs each run's app
  (``publish_signed_app``) into a folder that the **hub** (``serve_hub``, 127.0.0.1 only) serves to the
  SuperLink (``FLWR_SUPERGRID_API_URL``).

``scripts/flower_certs.sh`` makes every key; ``register_nodes`` registers the node keys and pins each
partition to its node id in ``members.yaml``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from semcon.protocol import is_int
from semcon.transport.flower import flwr_bin
from semcon.transport.flower.signing import TRUSTED_KEY_ID

APP_ID = "@semcon/semcon-flower"


@contextlib.contextmanager
def owner_only():
    """Files and folders made inside are this user's only (0600, 0700): keys, pins, signed apps."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def serve_hub(directory: Path, port: int) -> None:
    """Flower Hub's ``fetch-fab`` endpoint for the apps in ``directory`` (its ``index.json``), on 127.0.0.1."""

    class Hub(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            if self.path != "/v1/hub/fetch-fab":
                return self._send(404, b"{}")
            ask = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            index = json.loads((directory / "index.json").read_text()) if (directory / "index.json").is_file() else {}
            entry = index.get(ask.get("app_id"), {}).get(ask.get("app_version") or "")
            if entry is None:
                return self._send(404, json.dumps({"detail": "unknown app or version"}).encode())
            self._send(200, json.dumps({"fab_url": f"http://127.0.0.1:{port}/fabs/{entry['fab']}",
                                        "verifications": entry["verifications"]}).encode())

        def do_GET(self) -> None:  # noqa: N802
            name = self.path.removeprefix("/fabs/")
            path = directory / name
            if "/" in name or not name.endswith(".fab") or not path.is_file():
                return self._send(404, b"")
            self._send(200, path.read_bytes(), "application/octet-stream")

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Hub).serve_forever()


def publish_signed_app(app_dir: Path, signer: Path, hub: Path, env: dict[str, str]) -> str:
    """Build the Flower app in ``app_dir`` (a fresh version each time), sign it with the coordinator's Ed25519
    key as Flower's nodes verify it, and add it to the hub folder; returns what to pass to ``flwr run``."""
    from flwr.common.config import get_fab_config, get_metadata_from_config
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign, load_private_key, sign_message

    with tempfile.TemporaryDirectory() as build:
        done = subprocess.run([flwr_bin("flwr"), "build", "--app", str(app_dir.resolve())], cwd=build, env=env,
                              capture_output=True, text=True)
        fabs = list(Path(build).glob("*.fab"))
        if done.returncode != 0 or len(fabs) != 1:
            raise RuntimeError(f"flwr build {app_dir} failed: {(done.stdout + done.stderr).strip()[-500:]}")
        fab = fabs[0].read_bytes()
    fab_id, version = get_metadata_from_config(get_fab_config(fab))
    signed_at = int(time.time())
    message = create_message_to_sign(hashlib.sha256(fab).digest(), signed_at)
    signature = base64.urlsafe_b64encode(sign_message(load_private_key(signer), message)).rstrip(b"=").decode()
    name = f"{fab_id.replace('/', '.')}.{version}.fab"
    index = json.loads((hub / "index.json").read_text()) if (hub / "index.json").is_file() else {}
    index.setdefault(f"@{fab_id}", {})[version] = {
        "fab": name, "verifications": [{"public_key_id": TRUSTED_KEY_ID, "signed_at": signed_at,
                                        "signature": signature}]}
    with owner_only():
        hub.mkdir(parents=True, exist_ok=True)
        (hub / name).write_bytes(fab)
        (hub / "index.json").write_text(json.dumps(index, indent=1))
    return f"@{fab_id}=={version}"


def app_version() -> str:
    """A new version for every build: a node caches apps by version."""
    return f"1.{int(time.time() * 1000)}.0"


def node_keys(certs: Path) -> dict[int, Path]:
    """Partition id -> public key file of the node that holds it (``nodeN_key.pub``)."""
    keys = {}
    for path in certs.glob("node*_key.pub"):
        number = path.name.removeprefix("node").removesuffix("_key.pub")
        if number.isdigit():
            keys[int(number)] = path
    return dict(sorted(keys.items()))


def register_nodes(certs: Path, home: Path, connection: str, env: dict[str, str]) -> dict[int, int]:
    """Register every node key in ``certs`` with the SuperLink (from the coordinator: the Control API is on
    its loopback only) and pin each partition to the node id Flower gave its key, in ``members.yaml``."""
    members = {}
    for partition, key in node_keys(certs).items():
        done = subprocess.run([flwr_bin("flwr"), "supernode", "register", str(key), connection,
                               "--name", f"partition-{partition}", "--format", "json"],
                              env={**env, "FLWR_HOME": str(home)}, capture_output=True, text=True)
        try:
            reply = json.loads(done.stdout)
            node_id = int(reply["node-id"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"registering {key} failed: {(done.stdout + done.stderr).strip()[-400:]}") from None
        members[partition] = {"node_id": node_id, "public_key": key.read_text().strip()}
    with owner_only():
        (certs / "members.yaml").write_text(
            "# partition id -> the one registered node that may act as that client (semcon flower register)\n"
            + yaml.safe_dump(members, sort_keys=True))
    return {p: m["node_id"] for p, m in members.items()}


def load_members(path: Path, names: list[str]) -> dict[str, int]:
    """Client name -> pinned Flower node id, from ``members.yaml``; ValueError naming the file otherwise."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the members file ({e})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping of partition id to {{node_id: ...}}")
    pins = {}
    for pid, entry in tree.items():
        if not isinstance(pid, int) or not 0 <= pid < len(names):
            raise ValueError(f"{path}: {pid!r} is not a partition id of this run (0..{len(names) - 1})")
        node = entry.get("node_id") if isinstance(entry, dict) else None
        if not is_int(node):
            raise ValueError(f"{path}: partition {pid} has no node_id (run `semcon flower register`)")
        pins[names[pid]] = node
    return pins


def make_certs(out: Path, host: str = "127.0.0.1", nodes: int = 2, days: int = 365) -> Path:
    """``write_certs`` with every file and folder this user's only."""
    with owner_only():
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o700)
        return write_certs(out, host, nodes, days)


def write_certs(out: Path, host: str, nodes: int, days: int) -> Path:
    """Every key a closed deployment needs, in ``out``: a CA (``ca.crt``, ``ca.key``), the SuperLink and gateway
    certificate for ``host`` and 127.0.0.1 (``server.crt``/``.key``), the coordinator's app-signing key
    (``signer``/``.pub``, Ed25519), and per node N its key pair (``nodeN_key``/``.pub``, ECDSA P-384) plus a
    folder ``nodeN/`` with just what that organisation gets: ``ca.crt``, its private key and
    ``trusted-entities.yaml``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.x509.oid import NameOID

    pem, ssh = serialization.Encoding.PEM, serialization.Encoding.OpenSSH

    def private(path: Path, data: bytes) -> None:
        path.write_bytes(data)

    def cert(subject: str, key, issuer_key, issuer: x509.Name | None, ca: bool, names=()):
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def san(h: str):
        try:
            return x509.IPAddress(ipaddress.ip_address(h))
        except ValueError:
            return x509.DNSName(h)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = cert("semcon-ca", ca_key, ca_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    hosts = dict.fromkeys([host, "127.0.0.1", "localhost"])
    server_cert = cert(host, server_key, ca_key, ca_cert.subject, ca=False, names=[san(h) for h in hosts])
    pkcs8 = serialization.PrivateFormat.PKCS8
    private(out / "ca.key", ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    (out / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    private(out / "server.key", server_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    (out / "server.crt").write_bytes(server_cert.public_bytes(pem))

    def ssh_pair(key, path: Path, comment: str) -> str:
        private(path, key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        public = key.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH).decode() + f" {comment}"
        path.with_name(path.name + ".pub").write_text(public + "\n")
        return public

    signer = ssh_pair(ed25519.Ed25519PrivateKey.generate(), out / "signer", "semcon-coordinator")
    trusted = f"# apps signed by this key may run on this node (flower-supernode --trusted-entities)\n" \
              f"{TRUSTED_KEY_ID}: \"{signer}\"\n"
    for i in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        ssh_pair(key, out / f"node{i}_key", f"semcon-node{i}")
        folder = out / f"node{i}"
        folder.mkdir(exist_ok=True)
        (folder / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
        private(folder / "node_key", (out / f"node{i}_key").read_bytes())
        (folder / "trusted-entities.yaml").write_text(trusted)
    return out


def main(argv: list[str]) -> None:
    """``python -m semcon.transport.flower.secure gateway HOST PORT UPSTREAM CERTS DATABASE [BODY_SECONDS]`` |
    ``hub DIR PORT``."""
    if argv[:1] == ["gateway"] and len(argv) in (6, 7):
        from semcon.transport.flower.gateway import serve_gateway

        serve_gateway(argv[1], int(argv[2]), argv[3], Path(argv[4]), Path(argv[5]), *map(float, argv[6:]))
    elif argv[:1] == ["hub"] and len(argv) == 3:
        serve_hub(Path(argv[1]), int(argv[2]))
    else:
        sys.exit("usage: python -m semcon.transport.flower.secure gateway HOST PORT UPSTREAM CERTS DATABASE [BODY_SECONDS] | "
                 "hub DIR PORT")


if __name__ == "__main__":
    main(sys.argv[1:])
