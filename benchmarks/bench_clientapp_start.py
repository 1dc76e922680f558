"""What a Flower ClientApp pays before its first line of semcon work: a fresh interpreter that imports torch,
transformers, peft and semcon (Flower's default, one process per message) against a fork of semcon's warm
fork server (``semcon.transport.flower.forkexec``), measured side by side, alternating, ``--repeats`` times each.

Prints one JSON line: median wall seconds and CPU seconds per start of each, and ``cpu_ratio`` /
``wall_ratio`` (cold over warm). The fork server's own one-off start is reported apart (``server_start_s``):
it is paid once per node and deployment, not per message; so is its memory between messages
(``server_rss_gb``).

    python benchmarks/bench_clientapp_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from semcon.transport.flower.forkexec import PRELOAD, ForkExecutor

IMPORTS = "; ".join(f"import {m}" for m in PRELOAD)


def cold() -> tuple[float, float]:
    """A new interpreter importing what a ClientApp imports: wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def child(out: str) -> None:
    exec(IMPORTS)  # already imported by the fork server: nothing left to do
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(str(usage.ru_utime + usage.ru_stime))


def warm(executor: ForkExecutor, scratch: Path) -> tuple[float, float]:
    """A fork of the warm server doing the same: wall seconds, and the child's own CPU seconds."""
    out = scratch / "cpu.txt"
    start = time.perf_counter()
    proc = executor.context.Process(target=child, args=(str(out),))
    proc.start()
    proc.join()
    return time.perf_counter() - start, float(out.read_text())


def server_rss_gb() -> float:
    """Resident memory of the fork server (this process's child running multiprocessing's forkserver)."""
    import psutil

    servers = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
    return sum(p.memory_info().rss for p in servers) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    start = time.perf_counter()
    executor = ForkExecutor()
    server_start = time.perf_counter() - start
    runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            runs["cold"].append(cold())
            runs["warm"].append(warm(executor, Path(scratch)))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    print(json.dumps({
        "repeats": args.repeats, "server_start_s": round(server_start, 2), "server_rss_gb": round(server_rss_gb(), 2),
        "cold_wall_s": round(med["cold"][0], 3), "cold_cpu_s": round(med["cold"][1], 3),
        "warm_wall_s": round(med["warm"][0], 3), "warm_cpu_s": round(med["warm"][1], 3),
        "wall_ratio": round(med["cold"][0] / med["warm"][0], 1), "cpu_ratio": round(med["cold"][1] / med["warm"][1], 1),
    }))


if __name__ == "__main__":
    main()
