"""Validating a config of 1,000 and of 10,000 clients (names: safe, unique ignoring case).

A linear check costs about 10x more for 10x the clients; a pairwise one about 100x. Prints one JSON
line with ``seconds_10000`` (target < 1) and ``growth_10x`` (target < 20).

    python benchmarks/bench_config.py
"""

from __future__ import annotations

import json
import time

from semcon.config import load_config


def seconds(clients: int, reps: int = 3) -> float:
    tree = {"clients": [{"name": f"c{i:05d}", "data": {"source": "gsm8k"}} for i in range(clients)]}
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        load_config(tree=tree, overrides=["data.partition=iid"])
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    small, large = seconds(1_000), seconds(10_000)
    print(json.dumps({"bench": "config", "seconds_1000": round(small, 4), "seconds_10000": round(large, 4),
                      "growth_10x": round(large / small, 1)}))


if __name__ == "__main__":
    main()
