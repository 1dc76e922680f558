"""How many of the base models' answers to a config's public prompts end by themselves (end of turn) within
its ``generate.max_new_tokens``, per model and domain, and how many are degenerate loops. Backs the caps of
the shipped configs (the aim: at least 90% end by themselves). Every client answers every public prompt, so
each distinct model answers them all. Trained clients answer differently: this is round 1 as clients that
have not trained yet would answer it.

    .venv/bin/python scripts/finish_rates.py configs/study.yaml [MAX_NEW_TOKENS]
"""

import sys
from collections import defaultdict

import torch

from semcon.config import load_config
from semcon.coordinator.server import is_degenerate
from semcon.data.splits import build_splits
from semcon.member.generate import generate
from semcon.member.models import Backbone


def main(config: str, cap: str | None = None) -> None:
    cfg = load_config(config)
    prompts = build_splits(cfg).public
    max_new = int(cap) if cap else cfg.generate.max_new_tokens
    print(f"{config}: {len(prompts)} public prompts, max_new_tokens={max_new}")
    for model in dict.fromkeys(c.model for c in cfg.clients):
        try:
            bb = Backbone.load(model, torch.float32, torch.device("cpu"))
        except FileNotFoundError as e:
            print(f"  {model}: not installed ({e})")
            continue
        out = generate(bb.model, bb.fmt, [p.instruction for p in prompts], max_new_tokens=max_new,
                       batch_size=cfg.generate.batch_size, device=bb.device, dtype=bb.dtype)
        by = defaultdict(list)
        for p, g in zip(prompts, out):
            by[p.domain].append((g.finished, is_degenerate(g.text), len(g.tokens)))
        every = [r for answers in by.values() for r in answers]
        for domain, answers in [*sorted(by.items()), ("all", every)]:
            n = len(answers)
            print(f"  {model:<14} {domain:<16} ended {sum(a[0] for a in answers) / n:4.0%}  degenerate "
                  f"{sum(a[1] for a in answers) / n:4.0%}  mean tokens {sum(a[2] for a in answers) / n:5.0f}  ({n})")


if __name__ == "__main__":
    main(*sys.argv[1:])
