"""Seconds and peak RSS per client of a whole federation of 1, 16 and 100 clients on one shared SmolLM2-135M.

Every size runs the same tiny round in its own process (round 0 trains, round 1: 8 public prompts,
16 new tokens, 2 training steps of 2 short chat rows per client, the final evaluation), every client in
every round. Clients
that share a base model share one copy of its weights, a few adapter slots and their batches; each holds
only its LoRA weights. ``seconds_per_client_round`` is the whole run's wall time over clients x rounds.

The reference is the code before the fixed costs per client were removed: with ``--reference REV`` (default
``8bd8f26``, the last commit before) the 16-client federation also runs from a git worktree of that
revision, in this run, and ``per_client_speedup`` compares it with 100 clients now (target >= 5).
Prints one JSON line; ``rss_ratio_100_to_1`` (target <= 3).

    python benchmarks/bench_clients.py [--sizes 1,16,100] [--reference 8bd8f26 | --reference none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def federation(n: int, out: Path) -> dict:
    import torch

    torch.set_num_threads(2)
    from semcon.config import load_config
    from semcon.transport.simulation import run

    tree = {
        "name": f"clients-{n}", "rounds": 1,
        # short chat rows: a few seconds of useful compute per client, so that the fixed costs show
        "clients": [{"name": "c00", "data": {"source": "chatterbot"}}] + [{"name": f"c{i:02d}"} for i in range(1, n)],
        "data": {"partition": "iid", "examples_per_client": 6, "eval_per_domain": 4},  # 100 x 6 of 750 rows
        "public": {"num_prompts": 8}, "generate": {"max_new_tokens": 16},
        "train": {"steps": 2, "batch_size": 2, "max_length": 128}, "eval": {"before": False, "energy": False},
    }
    summary = run(load_config(tree=tree), out)
    return {"clients": n, "peak_rss_gb": summary["peak_rss_gb"], "seconds": summary["seconds"],
            "seconds_per_client_round": summary["seconds"] / (n * (tree["rounds"] + 1))}


def measure(n: int, src: Path) -> dict:
    """One federation of ``n`` clients in its own process, importing semcon from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(n)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,16,100")
    ap.add_argument("--reference", default="8bd8f26", help="git revision of the reference path, or 'none'")
    ap.add_argument("--worker", type=int)
    args = ap.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(federation(args.worker, Path(tmp))))
        return
    res = {}
    for n in map(int, args.sizes.split(",")):
        res[n] = measure(n, ROOT / "src")
        print(f"{n:>3} clients: {res[n]['seconds']:.0f} s, {res[n]['seconds_per_client_round']:.2f} s per client "
              f"and round, peak RSS {res[n]['peak_rss_gb']:.2f} GiB", file=sys.stderr)
    first, last = min(res), max(res)
    out = {"bench": "clients", **{f"peak_rss_gb_{n}": r["peak_rss_gb"] for n, r in res.items()},
           **{f"seconds_per_client_round_{n}": round(r["seconds_per_client_round"], 2) for n, r in res.items()},
           f"rss_ratio_{last}_to_{first}": round(res[last]["peak_rss_gb"] / res[first]["peak_rss_gb"], 3)}
    if args.reference != "none":
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, args.reference],
                           check=True, capture_output=True)
            try:
                ref = measure(16, Path(tmp) / "src")
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], capture_output=True, check=False)
        print(f"reference {args.reference}, 16 clients: {ref['seconds']:.0f} s, "
              f"{ref['seconds_per_client_round']:.2f} s per client and round", file=sys.stderr)
        out |= {"reference": args.reference,
                "reference_seconds_per_client_round_16": round(ref["seconds_per_client_round"], 2),
                "per_client_speedup": round(ref["seconds_per_client_round"] / res[last]["seconds_per_client_round"], 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
