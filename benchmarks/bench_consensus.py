"""The vectorised semantic medoid against a per-prompt Python loop, 8 and 100 clients x 1000 prompts.

Both must pick the same answers (asserted). Prints one JSON line with ``speedup`` for 100 clients
(target >= 100). The loop is timed on a slice of prompts and scaled, as it would take minutes.

    python benchmarks/bench_consensus.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from semcon.consensus import medoid_loop, normalize, semantic_medoid


def best_of(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    out = {"bench": "consensus", "prompts": 1000, "dim": 384}
    for clients, loop_prompts in ((8, 1000), (100, 20)):
        emb = normalize(np.random.default_rng(clients).normal(size=(1000, clients, 384))).astype(np.float32)
        fast = semantic_medoid(emb).choice
        assert (medoid_loop(emb[:loop_prompts]) == fast[:loop_prompts]).all(), "loop and vectorised disagree"
        t_fast = best_of(lambda: semantic_medoid(emb))
        t_loop = best_of(lambda: medoid_loop(emb[:loop_prompts]), reps=1) * 1000 / loop_prompts
        out[f"vectorised_ms_{clients}"] = round(t_fast * 1e3, 2)
        out[f"loop_ms_{clients}"] = round(t_loop * 1e3, 1)
        out[f"speedup_{clients}"] = round(t_loop / t_fast, 1)
    out["speedup"] = out["speedup_100"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
