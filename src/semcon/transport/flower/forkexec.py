"""Warm ClientApp starts: a Flower SuperExec that forks every ClientApp from a server process that has
already imported torch, transformers, peft and semcon.

Flower starts a fresh interpreter per message, and a semcon ClientApp spends about 10 CPU-seconds
importing before it does any work (``benchmarks/bench_clientapp_start.py``). A SuperNode started with
``--isolation process`` and this SuperExec beside it (``python -m semcon.transport.flower.forkexec
--runtime-api-address HOST:PORT --insecure``, Flower's own ``flower-superexec`` arguments) runs the same
ClientApp code in a forked child, in a fraction of a second.
"""

from __future__ import annotations

import multiprocessing
import sys

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

# What a ClientApp imports before its first line of work; the fork server imports it once. No module here
# may start threads at import (OpenMP's pool would not survive the fork).
PRELOAD = ["torch", "transformers", "peft", "semcon.transport.assembly", "semcon.transport.flower.client_app",
           "flwr.supernode.cli.flwr_clientapp"]


def clientapp_args(spec: ExecutionSpec) -> list[str]:
    """The command line Flower's subprocess executor gives ``flwr-clientapp``, without the program."""
    args = ["--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        args += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def run_clientapp(args: list[str]) -> None:
    """In the forked child: what ``flwr-clientapp ARGS`` runs."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv = ["flwr-clientapp", *args]
    flwr_clientapp()


class ForkExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that ClientApps are forked from the warm fork server."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.context.Process(target=int).start()  # starts the fork server now, not on the first message

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        self.context.Process(target=run_clientapp, args=(clientapp_args(spec),)).start()
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        multiprocessing.active_children()  # reaps the ClientApps that finished


def main() -> None:
    """``flower-superexec`` with the fork executor (its ``get_executor`` knows only its own kinds)."""
    import importlib

    from flwr.supercore.cli.flower_superexec import flower_superexec

    executor = ForkExecutor()
    importlib.import_module("flwr.supercore.superexec.run_superexec").get_executor = lambda *a, **k: executor
    flower_superexec()


if __name__ == "__main__":
    main()
