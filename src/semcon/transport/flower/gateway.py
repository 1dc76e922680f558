"""The Fleet-only gateway: the one public port of a closed deployment, in front of the SuperLink.

Per request: only ``POST`` to the node endpoints of the pinned flwr (``FLEET_ENDPOINTS``); Flower's node
signature checked against the keys the SuperLink has registered (its database) before the body is read, each
signature used once and within ``AUTH_WINDOW`` seconds; the body bounded in size, in the time to send it and in
bytes held per node; the request decoded and refused when a node speaks for another node, pushes a message
that is not a reply of its own (flwr 1.42 stores a reply-less message as an instruction to any node), or
reads, pushes or confirms an object outside the message trees it pushed or pulled; only the headers a node
needs forwarded, ``X-Forwarded-For`` set here.

Per connection (``GuardedH11``): a request's headers (TLS handshake included) must be complete within
``HEADER_SECONDS`` and fit ``MAX_HEADER_BYTES``; connections waiting for headers are capped per source and in
all, the oldest closed first, and connections of registered nodes do not count against either.

Every refusal is one log line naming its source, rate-limited per source (``RefusalLog``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

KIB, MIB = 1024, 1024 * 1024
# The node API of the pinned flwr 1.42 (flwr.supercore.protobuf.translation), each with the largest request body
# the gateway reads. Messages travel as objects; arrays are cut into chunks of at most 5 MiB
# (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE), so 8 MiB leaves room for one chunk and its framing.
FLEET_ENDPOINTS = {
    "register-node": 64 * KIB, "activate-node": 64 * KIB, "deactivate-node": 64 * KIB,
    "unregister-node": 64 * KIB, "send-node-heartbeat": 64 * KIB, "pull-messages": 64 * KIB,
    "push-messages": 1 * MIB, "get-run": 64 * KIB, "get-fab": 64 * KIB, "push-object": 8 * MIB,
    "pull-object": 64 * KIB, "confirm-message-received": 64 * KIB,
}
BODY_SECONDS = 60.0  # the time a request may take to send its body (a slow sender is cut off with 408)
IN_FLIGHT = 64 * MIB  # body bytes the gateway holds at once, all nodes together (beyond: 503, try again)
PER_NODE = 16 * MIB  # body bytes one node may have in flight (two array chunks)
HEADER_SECONDS = 10.0  # from a connection's start, or its last response, to a complete request head
MAX_HEADER_BYTES = 16 * KIB  # a request head (h11's bound; a node's is under 1 KiB)
PENDING = 128  # connections waiting for a request head, all sources together (registered nodes' aside)
PENDING_PER_SOURCE = 32  # the same, per source address
AUTH_WINDOW = 30.0  # seconds a node's signed timestamp is accepted (Flower's SuperLink allows 300)
CLOCK_SKEW = 5.0  # seconds a node's clock may run ahead
OWNED_IDS = 100_000  # object ids remembered per node (its recent messages' trees)
# What a node's requests need upstream: the body's type, Flower's node signature and version headers.
FORWARDED = ("content-type", "accept", "flwr-public-key", "flwr-signature", "flwr-timestamp",
             "flwr-package-name", "flwr-package-version", "flwr-component-name")
INCOMPATIBLE = "flwr-version-incompatibility-message"  # the one response header a node reads
log = logging.getLogger("semcon.gateway")


class Refused(Exception):
    """A request the gateway answers itself with ``status``; logged as one line."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


def unauthenticated(endpoint: str, why: str) -> Refused:
    """A request without a registered node's valid signature, refused as the SuperLink refuses one, since Flower's
    nodes act on the status: 412 at activation (the node exits: "Failed to activate SuperNode"), else 401 (the
    node stops). 403 would read to a node as "the run is not running"."""
    return Refused(412 if endpoint in ("activate-node", "register-node") else 401, why)


class RefusalLog:
    """One line per refusal, at most ``burst`` lines per source and then one every ``every_s`` seconds, so that
    no sender can rotate the log's history away; the lines held back are counted in the next one."""

    def __init__(self, burst: int = 20, every_s: float = 6.0, sources: int = 10_000):
        self.burst, self.every_s, self.sources = burst, every_s, sources
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()  # source -> [tokens, last time, held back]

    def __call__(self, source: str, text: str) -> None:
        now = time.monotonic()
        tokens, last, held = self.buckets.pop(source, [self.burst, now, 0])
        tokens = min(self.burst, tokens + (now - last) / self.every_s)
        if tokens >= 1:
            log.warning("%s%s", text, f" ({int(held)} more refusals of this source not logged)" if held else "")
            tokens, held = tokens - 1, 0
        else:
            held += 1
        self.buckets[source] = [tokens, now, held]
        if len(self.buckets) > self.sources:
            self.buckets.popitem(last=False)


def printable(text: str, limit: int = 200) -> str:
    """Anything a client sent, as one bounded line of ASCII."""
    return text[:limit].encode("unicode_escape").decode("ascii")


class Registry:
    """The node keys the SuperLink has registered (public key -> node id), read from its database; reread when
    a key is not found (at most every ``miss_s`` seconds) and every ``refresh_s`` seconds (unregistered keys)."""

    def __init__(self, database: Path, refresh_s: float = 5.0, miss_s: float = 0.25):
        self.database, self.refresh_s, self.miss_s = Path(database), refresh_s, miss_s
        self.nodes: dict[bytes, int] = {}
        self.read_at = -float("inf")

    def node_of(self, key: bytes) -> int | None:
        age = time.monotonic() - self.read_at
        if age > self.refresh_s or (key not in self.nodes and age > self.miss_s):
            self.read()
        return self.nodes.get(key)

    def read(self) -> None:
        self.read_at = time.monotonic()
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=1.0) as db:
                rows = db.execute("SELECT public_key, node_id FROM node WHERE public_key IS NOT NULL "
                                  "AND node_id IS NOT NULL AND status != 'unregistered'").fetchall()
        except sqlite3.Error as e:  # the SuperLink has not made it yet, or holds a lock: keep what we know
            log.warning("cannot read the registered nodes from %s: %s", self.database, e)
            return
        self.nodes = {bytes(key): node % (1 << 64) for key, node in rows}  # sint64 in SQLite, uint64 in Flower


class Guard:
    """What the gateway remembers between requests: signatures used, and each node's object ids."""

    def __init__(self, registry: Registry, window_s: float = AUTH_WINDOW):
        self.registry, self.window_s = registry, window_s
        self.used: dict[tuple[bytes, str], float] = {}  # (key, timestamp) -> when it expires
        self.pushed: dict[int, OrderedDict[str, None]] = {}  # node -> object ids of the trees it pushed
        self.pulled: dict[int, OrderedDict[str, None]] = {}  # node -> object ids of the trees it pulled

    def authenticate(self, endpoint: str, headers) -> tuple[int, bytes]:
        """The node id and key of a request signed by a registered node's key, within the window, not seen
        before; ``unauthenticated`` otherwise. The key is looked up before the signature is checked (cheap)."""
        from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

        try:
            key = base64.b64decode(headers["flwr-public-key"], validate=True)
            signature = base64.b64decode(headers["flwr-signature"], validate=True)
            stamp = headers["flwr-timestamp"]
            stamp.encode("ascii")
        except (KeyError, ValueError):
            raise unauthenticated(endpoint, "no valid node signature headers") from None
        node = self.registry.node_of(key)
        if node is None:
            raise unauthenticated(endpoint, "signed by a key the SuperLink has not registered")
        try:
            signed_at = datetime.datetime.fromisoformat(stamp)
            age = (datetime.datetime.now(datetime.timezone.utc) - signed_at).total_seconds()
        except (ValueError, TypeError):
            raise unauthenticated(endpoint, f"node {node}: unreadable timestamp") from None
        if not -CLOCK_SKEW < age < self.window_s:
            raise unauthenticated(endpoint, f"node {node}: timestamp {age:.0f} s old (window {self.window_s:g} s)")
        if not verify_signature(bytes_to_public_key(key), stamp.encode("ascii"), signature):
            raise unauthenticated(endpoint, f"node {node}: signature does not verify")
        now = time.monotonic()
        if len(self.used) > 10_000:
            self.used = {k: until for k, until in self.used.items() if until > now}
        if self.used.get((key, stamp), 0) > now:
            raise unauthenticated(endpoint, f"node {node}: a signature used before (replayed)")
        self.used[(key, stamp)] = now + self.window_s + CLOCK_SKEW
        return node, key

    def check(self, endpoint: str, request, node: int, key: bytes) -> None:
        """Refused(403) if the decoded ``request`` speaks for another node, instructs, forges a source or
        touches an object outside the node's own message trees."""
        if endpoint in ("register-node", "activate-node"):
            if request.public_key != key:
                raise Refused(403, f"node {node}: asks for another key")
            return
        claimed = request.node_id if endpoint in ("deactivate-node", "unregister-node") else request.node.node_id
        if claimed != node:
            raise Refused(403, f"node {node}: speaks for node {claimed}")
        if endpoint == "push-messages":
            for message in request.messages_list:
                if not message.metadata.reply_to_message_id:
                    raise Refused(403, f"node {node}: pushes an instruction to node {message.metadata.dst_node_id} "
                                       "(only the coordinator instructs)")
                if message.metadata.src_node_id != node:
                    raise Refused(403, f"node {node}: pushes a reply as node {message.metadata.src_node_id}")
        elif endpoint == "push-object" and request.object_id not in self.pushed.get(node, {}):
            raise Refused(403, f"node {node}: pushes an object of no message it pushed")
        elif endpoint == "pull-object" and not (request.object_id in self.pulled.get(node, {})
                                                or request.object_id in self.pushed.get(node, {})):
            raise Refused(403, f"node {node}: reads an object of no message it pushed or pulled")
        elif endpoint == "confirm-message-received" and request.message_object_id not in self.pulled.get(node, {}):
            raise Refused(403, f"node {node}: confirms a message it never pulled")

    def own(self, table: dict, node: int, trees) -> None:
        """Remember the object ids of ``trees`` (Flower ObjectTrees) as ``node``'s."""
        ids = table.setdefault(node, OrderedDict())
        stack = list(trees)
        while stack:
            tree = stack.pop()
            ids[tree.object_id] = None
            stack.extend(tree.children)
        while len(ids) > OWNED_IDS:
            ids.popitem(last=False)


class Connections:
    """Connections waiting for a request head (oldest first), per source, and the peers of registered nodes."""

    def __init__(self, total: int = PENDING, per_source: int = PENDING_PER_SOURCE):
        self.total, self.per_source = total, per_source
        self.waiting: OrderedDict[GuardedH11, None] = OrderedDict()
        self.members: set[tuple[str, int]] = set()  # (host, port) of connections a registered node has used

    def wait(self, conn: GuardedH11) -> None:
        """``conn`` waits for a request head; close the oldest waiting outsiders beyond the caps."""
        self.waiting[conn] = None
        if conn.client in self.members:
            return
        outsiders = [c for c in self.waiting if c.client not in self.members]
        same = [c for c in outsiders if c.source == conn.source]
        for old in same[:max(len(same) - self.per_source, 0)]:
            old.expire("closed: over the connections one source may keep waiting")
        outsiders = [c for c in self.waiting if c.client not in self.members]
        for old in outsiders[:max(len(outsiders) - self.total, 0)]:
            old.expire("closed: over the connections waiting for a request")

    def done(self, conn: GuardedH11) -> None:
        self.waiting.pop(conn, None)


CONNECTIONS = Connections()
REFUSALS = RefusalLog()


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and caps on connections that wait for one
    (``Connections``); uvicorn itself arms no timer before a request's headers are complete."""

    timer: asyncio.TimerHandle | None = None
    source = "unknown"

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.source = self.client[0] if self.client else "unknown"
        self.arm()

    def arm(self) -> None:
        self.disarm()
        self.timer = self.loop.call_later(HEADER_SECONDS, self.expire,
                                          f"closed: no complete request head within {HEADER_SECONDS:g} s")
        CONNECTIONS.wait(self)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        CONNECTIONS.done(self)

    def expire(self, why: str) -> None:
        self.disarm()
        REFUSALS(self.source, f"{why} ({self.peer()})")
        if not self.transport.is_closing():
            self.transport.close()

    def peer(self) -> str:
        return "from %s:%d" % self.client if self.client else "from unknown"

    def handle_events(self) -> None:
        super().handle_events()
        if self.timer is not None and self.conn.their_state in (h11.SEND_BODY, h11.DONE):
            self.disarm()  # the head is in; the body has its own deadline (BODY_SECONDS)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm()  # the next request's head has the same deadline

    def connection_lost(self, exc) -> None:
        self.disarm()
        CONNECTIONS.members.discard(self.client)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        REFUSALS(self.source, f"refused 400 {self.peer()}: not an HTTP/1.1 request, or its head is over "
                              f"{MAX_HEADER_BYTES} bytes")
        super().send_400_response(msg)


def gateway_app(upstream: str, ca: Path, database: Path, body_seconds: float = BODY_SECONDS,
                in_flight: int = IN_FLIGHT, per_node: int = PER_NODE):
    """The Fleet-only gateway as an ASGI app forwarding Flower's node endpoints to the SuperLink at ``upstream``
    (HOST:PORT) for the nodes registered in its ``database``."""
    import httpx
    from flwr.proto.fleet_pb2 import PullMessagesResponse
    from flwr.supercore.error import ApiErrorCode
    from flwr.supercore.protobuf.translation import PROTOBUF_REQUEST_TYPES
    from google.protobuf.message import DecodeError
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=str(ca), timeout=httpx.Timeout(120.0))
    guard = Guard(Registry(database))
    held: dict[int | None, int] = {None: 0}  # body bytes held by requests in progress, in all and per node

    async def body(request, limit: int, node: int) -> bytes:
        """The request's body, counted in ``held`` (the caller releases it once forwarded)."""
        declared = request.headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > limit):
            raise Refused(413, f"declares a body of {printable(declared, 20)} bytes, over this endpoint's {limit}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(body_seconds):
                async for chunk in request.stream():
                    if size + len(chunk) > limit:
                        raise Refused(413, f"body over this endpoint's {limit} bytes")
                    if held[None] + len(chunk) > in_flight or held.get(node, 0) + len(chunk) > per_node:
                        raise Refused(503, f"over {in_flight} body bytes in flight, or {per_node} for node {node}")
                    take(node, len(chunk))
                    size += len(chunk)
                    chunks.append(chunk)
        except (Refused, TimeoutError, ClientDisconnect) as e:
            take(node, -size)
            if isinstance(e, TimeoutError):
                raise Refused(408, f"body not sent within {body_seconds:g} s ({size} bytes came)") from None
            if isinstance(e, ClientDisconnect):
                raise Refused(400, f"the client went away after {size} bytes") from None
            raise
        return b"".join(chunks)

    def take(node: int, size: int) -> None:
        held[None] += size
        held[node] = held.get(node, 0) + size
        if not held[node]:
            del held[node]

    async def fleet(request):
        try:
            return await forward(request)
        except Refused as e:
            return refuse(request, e)
        except Exception as e:  # noqa: BLE001 - whatever a request does, one line and no traceback
            return refuse(request, Refused(500, f"failed ({type(e).__name__}: {printable(str(e), 120)})"))

    async def forward(request):
        endpoint = request.path_params.get("endpoint", "")
        if request.method != "POST" or endpoint not in FLEET_ENDPOINTS or request.url.path != f"/v1/fleet/{endpoint}":
            raise Refused(403, "not a node endpoint")  # the exact path only: no encoded tricks
        node, key = guard.authenticate(endpoint, request.headers)
        if request.client:
            CONNECTIONS.members.add((request.client.host, request.client.port))
        content = await body(request, FLEET_ENDPOINTS[endpoint], node)
        try:
            try:
                decoded = PROTOBUF_REQUEST_TYPES[("POST", f"/v1/fleet/{endpoint}")]()
                decoded.ParseFromString(content)
            except (DecodeError, RuntimeWarning, ValueError):
                raise Refused(400, f"node {node}: a body that is not a {endpoint} request") from None
            guard.check(endpoint, decoded, node, key)
            headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
            headers["x-forwarded-for"] = request.client.host if request.client else "unknown"
            try:
                up = await client.post(request.url.path, content=content, headers=headers)
            except httpx.TransportError:  # the SuperLink restarts: 503 makes a SuperNode retry (500 makes it exit)
                return PlainTextResponse("SuperLink unavailable\n", status_code=503)
        finally:
            take(node, -len(content))
        if up.status_code == 200 and endpoint == "push-messages":
            guard.own(guard.pushed, node, decoded.message_object_trees)
        elif up.status_code == 200 and endpoint == "pull-messages":
            pulled = PullMessagesResponse()
            try:
                pulled.ParseFromString(up.content)
                guard.own(guard.pulled, node, pulled.message_object_trees)
            except DecodeError:
                pass  # nothing the node may read then
        out = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", INCOMPATIBLE)}
        return Response(up.content, status_code=up.status_code, headers=out)

    def refuse(request, e: Refused):
        peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        REFUSALS(request.client.host if request.client else "unknown",
                 f"refused {e.status} {printable(request.method, 10)} {printable(request.url.path)} from {peer}: {e}")
        if e.status == 412:  # Flower's own refusal of an unregistered node's activation, which its nodes understand
            body = {"code": int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED), "detail": "Failed to activate SuperNode."}
            return JSONResponse(body, status_code=412, headers={"connection": "close"})
        text = "forbidden: this port serves registered SuperNodes only\n" if e.status == 403 else f"{e}\n"
        return PlainTextResponse(text, status_code=e.status, headers={"connection": "close"})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/v1/fleet/{endpoint}", fleet, methods=methods),
                             Route("/{rest:path}", fleet, methods=methods)])


def serve_gateway(host: str, port: int, upstream: str, certs: Path, database: Path,
                  body_seconds: float = BODY_SECONDS) -> None:
    """Serve the gateway with TLS; its log lines (one per refusal) go to stderr, which the launcher writes to a
    rotated log."""
    import asyncio.constants
    import asyncio.sslproto
    import resource

    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    # asyncio's own loop (uvloop reads neither): a TLS handshake is part of the head's deadline, and each
    # connection's TLS read buffer is one record (16 KiB) instead of 256 KiB, so idle connections cost little
    asyncio.constants.SSL_HANDSHAKE_TIMEOUT = HEADER_SECONDS
    asyncio.sslproto.SSLProtocol.max_size = 16 * KIB
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # idle connections cost a descriptor each
    # log_level: uvicorn's own lines ("Invalid HTTP request received.") name no source; ours do
    uvicorn.run(gateway_app(upstream, certs / "ca.crt", database, body_seconds), host=host, port=port,
                log_level="critical", ssl_certfile=str(certs / "server.crt"), ssl_keyfile=str(certs / "server.key"),
                access_log=False, log_config=None, proxy_headers=False, timeout_keep_alive=5, http=GuardedH11,
                limit_concurrency=None, h11_max_incomplete_event_size=MAX_HEADER_BYTES, loop="asyncio")
