"""One full semantic-consensus round at a realistic size: 4 clients on SmolLM2-135M, 200 public prompts,
up to 128 new tokens each, 8 training steps per client (batch 8).

Runs the real federation (``semcon run``'s code: round 0 trains on private data, round 1 is the measured
round: generate, aggregate, train) and prints one JSON line with round 1's seconds per phase and the
round's ``fraction_of_peak``: useful FLOPs over the matmul peak measured in this run, in the run's dtype.

Useful FLOPs, as counted here: 2N per generated token (forward), 4N per trained token (forward, and the
backward pass to the inputs; the frozen base takes no weight gradient, the LoRA weights' share is under 4%
and not counted), with N the parameters a token's matmuls touch (every linear layer and the output head;
not the embedding lookup). Prompt prefill and padding are not counted as useful.

    python benchmarks/bench_round.py [--clients 4] [--prompts 200] [--max-new-tokens 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from bench_generate import matmul_gflops  # the same peak measurement


def matmul_params(spec: str) -> int:
    """Parameters of every linear layer, the output head included (it is tied to the embedding in SmolLM2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from semcon.assets import resolve_model

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(spec)))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def count_generated_tokens() -> list[int]:
    """Tokens each upload generated (its end-of-turn token included), recorded as the clients build them."""
    from semcon.member.client import Client

    counts, upload_of = [], Client.upload_of

    def counting(self, round, prompts, outs):
        if round == 1:
            counts.append(sum(len(o.tokens) + o.finished for o in outs))
        return upload_of(self, round, prompts, outs)

    Client.upload_of = counting
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from semcon.config import load_config
    from semcon.member.models import pick_device, pick_dtype
    from semcon.transport.simulation import run

    domains = [{"source": "wiki", "categories": ["Geography"]}, {"source": "gsm8k"}, {"source": "chatterbot"},
               {"source": "mmlu", "categories": ["clinical knowledge", "nutrition"], "name": "mmlu:medicine"}]
    tree = {
        "name": "bench-round", "rounds": 1, "precision": "auto",
        "clients": [{"name": f"c{i}", "model": args.model, "data": domains[i % len(domains)]}
                    for i in range(args.clients)],
        "data": {"partition": "category", "examples_per_client": 64, "eval_per_domain": 1},
        "public": {"num_prompts": args.prompts},
        "generate": {"max_new_tokens": args.max_new_tokens},
        "train": {"steps": args.steps, "batch_size": 8},
        "eval": {"before": False, "generate": False, "energy": False},
    }
    cfg = load_config(tree=tree)
    dtype = pick_dtype(cfg.precision, pick_device(cfg.device))
    peak = matmul_gflops(dtype)
    generated = count_generated_tokens()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(cfg, Path(tmp))
    r1 = summary["per_round"][1]
    generated = sum(generated)
    trained = sum(r1["train_tokens"].values())
    n = matmul_params(args.model)
    flops = 2 * n * generated + 4 * n * trained
    seconds = sum(r1["seconds"].values())
    print(f"round 1: {seconds:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in r1['seconds'].items())}); "
          f"{generated} generated and {trained} trained tokens; peak {peak:.0f} GFLOP/s", file=sys.stderr)
    print(json.dumps({
        "bench": "round", "clients": args.clients, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
        "steps": args.steps, "dtype": str(dtype).removeprefix("torch."),
        "seconds": round(seconds, 1), "seconds_per_phase": r1["seconds"],
        "generated_tokens": generated, "trained_tokens": trained, "matmul_params": n,
        "peak_gflops": round(peak, 1), "fraction_of_peak": round(flops / seconds / (peak * 1e9), 3),
        "target_seconds": 600, "peak_rss_gb": summary["peak_rss_gb"],
    }))


if __name__ == "__main__":
    main()
