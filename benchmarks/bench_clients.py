"""Peak RSS of a whole federation of 1, 4 and 16 simulated clients on one shared SmolLM2-135M base.

Clients that share a base model share one copy of its weights; each holds only its LoRA adapter
(and optimizer state while it trains). Each federation runs in its own process (1 round: train,
generate, consensus, train, evaluate). Prints one JSON line with ``rss_ratio_16_to_1`` (target <= 2).

    python benchmarks/bench_clients.py [--sizes 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def federation(n: int, out: Path) -> dict:
    import torch

    torch.set_num_threads(2)
    from semcon.config import load_config
    from semcon.simulation import run

    tree = {
        "name": f"clients-{n}", "rounds": 1,
        "clients": [{"name": "c00", "data": {"source": "wiki"}}] + [{"name": f"c{i:02d}"} for i in range(1, n)],
        "data": {"partition": "iid", "examples_per_client": 16, "eval_per_domain": 4},
        "public": {"num_prompts": 8}, "generate": {"max_new_tokens": 16},
        "train": {"steps": 2, "batch_size": 8}, "eval": {"before": False},
    }
    summary = run(load_config(tree=tree), out)
    return {"clients": n, "peak_rss_gb": summary["peak_rss_gb"], "seconds": summary["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--worker", type=int)
    args = ap.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(federation(args.worker, Path(tmp))))
        return
    res = {}
    for n in map(int, args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--worker", str(n)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        res[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n:>3} clients: peak RSS {res[n]['peak_rss_gb']:.2f} GiB, {res[n]['seconds']:.0f} s", file=sys.stderr)
    out = {"bench": "clients", **{f"peak_rss_gb_{n}": r["peak_rss_gb"] for n, r in res.items()}}
    first, last = min(res), max(res)
    out[f"rss_ratio_{last}_to_{first}"] = round(res[last]["peak_rss_gb"] / res[first]["peak_rss_gb"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
