"""Start and stop Flower's processes for a semcon run: a SuperLink, SuperNodes, and ``flwr run``.

``semcon flower local`` uses all of it on 127.0.0.1; across machines, each organisation starts its own
SuperNode and the coordinator runs ``semcon flower superlink`` and ``semcon flower run`` on the SuperLink's
machine (README). Given a certificates folder (``semcon flower certs``), everything runs closed
(``secure.py``): the SuperLink on loopback behind the Fleet-only gateway, node authentication, signed apps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from semcon.rounds.rundir import RunDir
from semcon.transport.flower import flwr_bin

log = logging.getLogger(__name__)

APP_PYPROJECT = """\
# A Flower app that runs semcon's ServerApp and ClientApp; written by `semcon flower run`.
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "semcon-flower"
version = "{version}"
description = "semcon: federated fine-tuning of LLMs by semantic consensus, on Flower"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "semcon"

[tool.flwr.app.components]
serverapp = "semcon.transport.flower.server_app:app"
clientapp = "semcon.transport.flower.client_app:app"

# Flower's run config, mapped onto semcon's config when a run starts (`flwr run ... --run-config
# "train.steps=4"`); semcon's own YAML keys, with dashes. The whole config is RUN_DIR/config.yaml.
[tool.flwr.app.config]
run-dir = {run_dir}
"""

LOG_BYTES, LOG_KEEP = 10 * 1024 * 1024, 3  # a process's log rotates at 10 MiB and keeps 3 old ones

# The public keys of a run that Flower's run config can override (semcon key -> Flower key).
RUN_CONFIG_KEYS = ("rounds", "seed", "public.num_prompts", "generate.max_new_tokens", "train.steps")


def flower_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: no telemetry or update checks, this venv first on PATH, and
    app processes launched 0.25 s after their task arrives (Flower polls every 1 s by default)."""
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {**env, **(extra or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_app(run_dir: Path, version: str = "0.1.0") -> Path:
    """The Flower app directory for ``run_dir`` (only a pyproject.toml: the code is the installed semcon)."""
    tree = RunDir(run_dir).config_tree()
    lines = [APP_PYPROJECT.replace("{run_dir}", json.dumps(str(run_dir.resolve()))).replace("{version}", version)]
    for key in RUN_CONFIG_KEYS:
        value = tree
        for part in key.split("."):
            value = value[part]
        lines.append(f"{key.replace('_', '-')} = {json.dumps(value)}\n")
    app = run_dir / "flower-app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text("".join(lines))
    return app


def run_config_overrides(run_config: dict) -> list[str]:
    """Flower's flat run config (``train.steps``, dashes) as semcon's dotted ``key=value`` overrides."""
    return [f"{k.replace('-', '_')}={json.dumps(v)}" for k, v in run_config.items() if k != "run-dir"]


def write_connection(home: Path, address: str, root_certificates: Path | None = None) -> str:
    """A named SuperLink connection in ``FLWR_HOME/config.toml`` (where flwr 1.42 looks for them)."""
    home.mkdir(parents=True, exist_ok=True)
    tls = f'root-certificates = "{root_certificates.resolve()}"' if root_certificates else "insecure = true"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "semcon"\n\n[superlink.semcon]\n'
                                      f'address = "{address}"\n{tls}\n')
    return "semcon"


@dataclass
class Processes:
    """The Flower processes this launcher started, stopped by PID (SuperNodes, gateway, hub, SuperLink).

    With ``certs`` the deployment is closed (``secure.py``): the SuperLink listens on 127.0.0.1 with TLS and
    node authentication, nodes reach it through the Fleet-only gateway and run only signed apps.
    """

    home: Path
    logs: Path
    certs: Path | None = None
    superlink: subprocess.Popen | None = None
    helpers: list[subprocess.Popen] = field(default_factory=list)  # gateway and app hub
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)  # by name: node0, node1, ...
    execs: dict[str, subprocess.Popen] = field(default_factory=dict)  # each node's SuperExec
    address: str = ""  # the SuperLink's own API (Control included): loopback only when closed
    fleet: str = ""  # where SuperNodes connect: the gateway when closed

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a process whose state only this user can read (umask 077: the SuperLink's database holds
        the run's traffic) and whose output goes to ``logs/NAME.log``, rotated."""
        private_dir(self.home)
        private_dir(self.logs)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=flower_env(self.home, env),
                                start_new_session=True, umask=0o077)
        threading.Thread(target=pump, args=(proc.stdout, self.logs / f"{name}.log"), daemon=True).start()
        return proc

    def start_superlink(self, port: int | None = None, env: dict[str, str] | None = None,
                        public: tuple[str, int] = ("127.0.0.1", 0)) -> str:
        """Start the SuperLink (and, closed, the app hub and the gateway on ``public`` HOST, PORT)."""
        port = port or free_port()
        # a database file keeps the SuperLink's state (nodes, runs) across its own restarts
        args = [flwr_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(port), "--database",
                str(self.home / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.certs is None:
            args.append("--insecure")
        else:
            c = self.certs
            args += ["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.crt"),
                     "--ssl-keyfile", str(c / "server.key"), "--enable-supernode-auth"]
            hub_port = free_port()
            self.helpers.append(self._start("hub", [sys.executable, "-m", "semcon.transport.flower.secure", "hub",
                                                    str(hub_dir(c)), str(hub_port)]))
            env = {**(env or {}), "FLWR_SUPERGRID_API_URL": f"http://127.0.0.1:{hub_port}/v1"}
        self.superlink = self._start("superlink", args, env)
        self.address = self.fleet = f"127.0.0.1:{port}"
        wait_for_port(port, self.superlink, self.logs / "superlink.log")
        if self.certs is not None:
            self.fleet = self.start_gateway(public[0], public[1] or free_port(), self.address)
        return self.address

    def start_gateway(self, host: str, port: int, upstream: str, body_seconds: float | None = None,
                      database: Path | None = None) -> str:
        """The Fleet-only gateway on HOST:PORT in front of the SuperLink at ``upstream``, for the nodes registered
        in its ``database`` (default: this launcher's SuperLink's); returns how this machine reaches it."""
        database = database or self.home / "superlink.db"
        args = [sys.executable, "-m", "semcon.transport.flower.secure", "gateway", host, str(port), upstream, str(self.certs),
                str(database)]
        gateway = self._start("gateway", args + ([str(body_seconds)] if body_seconds else []))
        self.helpers.append(gateway)
        reach = "127.0.0.1" if host == "0.0.0.0" else host
        wait_for_port(port, gateway, self.logs / "gateway.log", host=reach)
        return f"{reach}:{port}"

    def start_node(self, partition: int, state_dir: Path, env: dict[str, str] | None = None,
                   key: Path | None = None, name: str | None = None) -> subprocess.Popen:
        """A SuperNode holding ``partition``; closed deployments authenticate with ``key`` (default: the
        partition's own key in the certificates folder). ``name``: its log's and ``nodes``' key, for a
        second node claiming one partition."""
        node_config = f"partition-id={partition} state-dir={json.dumps(str(state_dir.resolve()))}"
        if self.certs is not None:  # the node acts only on messages the coordinator signed
            trusted = self.certs / f"node{partition}" / "trusted-entities.yaml"
            node_config += f" coordinator-key={json.dumps(str(trusted.resolve()))}"
        runtime = free_port()  # the node's Runtime API, which its SuperExec polls for ClientApp tasks
        args = [flwr_bin("flower-supernode"), "--superlink", self.fleet, "--host", "127.0.0.1",
                "--port", str(runtime), "--node-config", node_config, "--isolation", "process"]
        if self.certs is None:
            args.append("--insecure")
        else:
            bundle = self.certs / f"node{partition}"
            args += ["--root-certificates", str(self.certs / "ca.crt"),
                     "--auth-supernode-private-key", str(key or bundle / "node_key"),
                     "--trusted-entities", str(bundle / "trusted-entities.yaml")]
        name = name or f"node{partition}"
        proc = self._start(name, args, env)
        # its ClientApps start warm, forked by semcon's SuperExec (forkexec.py), which ends with the node
        self.execs[name] = self._start(f"{name}-exec", [sys.executable, "-m", "semcon.transport.flower.forkexec", "--insecure",
                                                        "--runtime-api-address", f"127.0.0.1:{runtime}", "--parent-pid",
                                                        str(proc.pid)], env)
        self.nodes[name] = proc
        return proc

    def stop_node(self, name: str, sig: int = signal.SIGTERM) -> None:
        stop(self.execs.pop(name), sig)
        stop(self.nodes.pop(name), sig)

    def stop_all(self) -> None:
        for name in list(self.nodes):
            self.stop_node(name)
        for proc in [*reversed(self.helpers), self.superlink]:  # the gateway first: it holds connections to it
            if proc is not None:
                stop(proc)
        self.superlink, self.helpers = None, []


def private_dir(path: Path) -> Path:
    """``path``, created if need be, readable by this user only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def pump(stream, path: Path, max_bytes: int = LOG_BYTES, keep: int = LOG_KEEP) -> None:
    """Copy a process's output into ``path`` (0600) line by line until it ends, rotating the file to
    ``path.1`` .. ``path.KEEP`` when it would pass ``max_bytes``, so that no one can fill the disk with it."""

    def opened():
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")

    out = opened()
    for line in iter(lambda: stream.readline(64 * 1024), b""):
        if out.tell() and out.tell() + len(line) > max_bytes:
            out.close()
            for i in range(keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}.{i}", f"{path}.{i + 1}")
            os.replace(path, f"{path}.1")
            out = opened()
        out.write(line)
        out.flush()
    out.close()


def hub_dir(certs: Path) -> Path:
    """The signed apps the hub serves to the SuperLink (written by ``flwr_run``)."""
    return certs / "apps"


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> None:
    """Stop a process and every process it started, by PID; SIGKILL after the grace time. Its descendants
    are stopped too, even those in sessions of their own that outlive it (Flower's SuperExec)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.send_signal(sig)
    deadline = time.monotonic() + grace_s
    while (alive := running(family)) and time.monotonic() < deadline:
        proc.poll()  # reap it: it is our child
        time.sleep(0.2)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    proc.wait()


def running(procs: list) -> list:
    """The processes of ``procs`` that still run (a zombie only waits to be reaped)."""
    import psutil

    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def wait_for_port(port: int, proc: subprocess.Popen, logfile: Path, timeout_s: float = 60.0,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{logfile.stem} exited with {proc.returncode}; see {logfile}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{logfile.stem} did not open port {port} within {timeout_s:.0f} s; see {logfile}")


def flwr_run(run_dir: Path, home: Path, connection: str, certs: Path | None = None) -> dict:
    """Submit the run to the SuperLink, stream its log, and return its summary. With ``certs`` the app is
    signed by the coordinator's key and fetched by the SuperLink from the local app hub.

    ``flwr run`` exits 0 even when the ServerApp failed, so the outcome is read from the run directory.
    """
    from semcon.transport.flower.secure import app_version, publish_signed_app

    RunDir(run_dir).clear_summary()
    (run_dir / "stopped.txt").unlink(missing_ok=True)
    if certs is None:
        app = str(write_app(run_dir))
    else:
        app = publish_signed_app(write_app(run_dir, app_version()), certs / "signer", hub_dir(certs), flower_env(home))
    cmd = [flwr_bin("flwr"), "run", app, connection, "--stream"]
    subprocess.run(cmd, env=flower_env(home), check=False)
    if RunDir(run_dir).finished():
        return RunDir(run_dir).read_summary()
    if (run_dir / "stopped.txt").is_file():
        raise RuntimeError((run_dir / "stopped.txt").read_text(encoding="utf-8").strip())
    raise RuntimeError(f"the Flower run of {run_dir} ended without a summary; see the logs in {home}")


def mark(run_dir: Path, superlink: str, local: bool = False, certs: Path | None = None) -> None:
    """``flower.json`` says the run directory belongs to a Flower run, where its SuperLink was, whether
    ``semcon resume`` should start a local deployment again, and the certificates of a closed one."""
    where = {"superlink": superlink, "local": local, "certs": str(certs.resolve()) if certs else None}
    (run_dir / "flower.json").write_text(json.dumps(where) + "\n", encoding="utf-8")


def closed_settings(certs: Path) -> dict[str, str]:
    """The ``flower`` keys of a closed deployment: each client pinned to its registered node (``members``) and
    every message to a node signed by the coordinator (``signer``)."""
    return {"members": str((certs / "members.yaml").resolve()), "signer": str((certs / "signer").resolve())}


def close_run(run_dir: Path, certs: Path) -> None:
    """Apply ``closed_settings`` to the run's config."""
    run = RunDir(run_dir)
    tree = run.config_tree()
    tree.setdefault("flower", {}).update(closed_settings(certs))
    run.write_config(tree)


def run_local(run_dir: Path, num_nodes: int, node_env: dict[int, dict[str, str]] | None = None,
              secure: bool = False) -> dict:
    """A whole Flower deployment on 127.0.0.1 for an existing run directory: a SuperLink, one SuperNode per
    client (state under ``run_dir/nodes``), the run (or its continuation), then every process stopped.
    ``secure``: closed, with new keys in ``run_dir/flower/certs`` (kept for a resume)."""
    from semcon.transport.flower.secure import make_certs, register_nodes

    home = run_dir / "flower"
    certs = home / "certs" if secure else None
    if certs is not None and not (certs / "ca.crt").is_file():
        make_certs(certs, "127.0.0.1", num_nodes)
    procs = Processes(home=home, logs=home / "logs", certs=certs)
    try:
        procs.start_superlink()
        connection = write_connection(home, procs.address, certs / "ca.crt" if certs else None)
        if certs is not None:
            if not (certs / "members.yaml").is_file():
                register_nodes(certs, home, connection, flower_env(home))
            close_run(run_dir, certs)
        for i in range(num_nodes):
            procs.start_node(i, run_dir / "nodes" / f"node{i}", (node_env or {}).get(i))
        mark(run_dir, procs.address, local=True, certs=certs)
        return flwr_run(run_dir, home, connection, certs)
    finally:
        procs.stop_all()
