"""Where a result came from: semcon's version and git commit, the main libraries and the machine.

Each run's ``summary.json`` holds it, so a report states its own provenance instead of a person adding it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).resolve().parent


def git_commit(where: Path = SOURCE) -> tuple[str | None, bool]:
    """The commit of the git checkout holding ``where`` and whether tracked files differ from it;
    (None, False) for an installed package or where git is missing."""
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False, timeout=10)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: OS, CPUs, their model and the instruction set torch's kernels use (the same floats need the same
    one: ATEN_CPU_CAPABILITY pins it), GPU if any (e.g. 'Linux x86_64, 2 CPUs (AMD EPYC, torch AVX2), no GPU')."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}, torch {kernels}), {gpu}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    commit, dirty = git_commit()
    return {"semcon": _version("semcon"), "commit": commit, "uncommitted_changes": dirty,
            "python": platform.python_version(), "torch": _version("torch"),
            "transformers": _version("transformers"), "machine": machine()}


def describe(p: dict) -> str:
    """The provenance as the report states it."""
    commit = f"commit `{p['commit'][:7]}`" if p.get("commit") else "no git commit (installed package)"
    if p.get("uncommitted_changes"):
        commit += " with uncommitted changes"
    return (f"semcon {p.get('semcon')} at {commit}, Python {p.get('python')}, torch {p.get('torch')}, "
            f"transformers {p.get('transformers')}, on {p.get('machine')}")
