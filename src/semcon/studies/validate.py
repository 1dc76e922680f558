"""``semcon validate``: what a config will do, checked before it runs. The config, its models and its data are
resolved and split as a run would; nothing is trained or generated. The cost is a lower bound in FLOPs, turned
into minutes at this machine's measured matmul rate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from semcon.config import RunConfig
from semcon.data import Splits, build_splits

CHARS_PER_TOKEN = 4  # a rough mean over the embedded tokenizers and English text; the estimate says "about"


@dataclass
class Plan:
    """A config as it would run: its split, and per client the model's size and the work of the whole run."""

    cfg: RunConfig
    splits: Splits
    parameters: dict[str, int | None]  # per client, the base model's parameters (None: not a known shape)
    flops: dict[str, dict[str, float]]  # per client: train, answer (to every answer's cap), evaluate


def model_parameters(spec: str) -> int | None:
    """Parameters of a client's base model from its shape (an embedded or known name, or a directory's
    config.json), without loading weights; None for a shape semcon cannot read (no estimate then)."""
    from semcon.comm import resolve_arch

    try:
        return resolve_arch(spec).num_parameters()
    except (ValueError, OSError):
        return None


def tokens(texts: list[str]) -> float:
    """About how many tokens ``texts`` hold."""
    return sum(len(t) for t in texts) / CHARS_PER_TOKEN


def plan(cfg: RunConfig) -> Plan:
    """Resolve and split ``cfg`` (DataError, ConfigError as a run would raise them) and estimate its work."""
    splits = build_splits(cfg)
    prompts = cfg.public.num_prompts if cfg.method == "semantic_consensus" else 0
    answering = cfg.method == "semantic_consensus" and cfg.consensus.rule != "oracle_reference"
    asked = tokens([q.instruction for q in splits.public]) / max(len(splits.public), 1)
    scored = tokens([e.instruction + e.response for rows in splits.eval.values() for e in rows])
    answered = tokens([e.instruction + e.response for rows in splits.eval.values()
                       for e in [e for e in rows if e.task != "multiple_choice"][:cfg.eval.generate_items]])
    params, flops = {}, {}
    for c in cfg.clients:
        n = params[c.name] = model_parameters(c.model)
        if n is None or c.name not in splits.private:
            continue
        s = cfg.client_settings(c.name)
        rows = splits.private[c.name]
        per_row = tokens([e.instruction + e.response for e in rows]) / max(len(rows), 1)
        later = s.train.extra_steps  # extra and label steps run from round 1 on; round 0 has no labels
        if cfg.method == "semantic_consensus" and s.train.schedule == "additive":
            later += s.train.label_steps if s.train.label_steps is not None else \
                math.ceil(s.train.label_epochs * prompts / s.batch_size)
        # a frozen base: forward and the backward through activations, 4N per token
        train = ((cfg.rounds + 1) * s.steps + cfg.rounds * later) * s.batch_size * per_row * 4 * n
        answer = cfg.rounds * prompts * (asked + s.max_new_tokens) * 2 * n if answering else 0.0
        evaluate = (scored + (answered if cfg.eval.generate else 0)) * 2 * n
        flops[c.name] = {"train": train, "answer": answer, "evaluate": evaluate}
    return Plan(cfg, splits, params, flops)


def matmul_rate(seconds: float = 0.3) -> float:
    """This machine's fp32 matmul rate in FLOP/s (1024 x 1024 products for about ``seconds``, best of them)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 1024**3 / max(time.perf_counter() - t, 1e-9))
    return best


def describe(p: Plan, config: Path, rate: float) -> list[str]:
    """The plan as lines of markdown: the setting, one row per client, and the cost."""
    cfg = p.cfg
    public = (f"{cfg.public.num_prompts} public prompts a round ({cfg.public.per_round}), {len(p.splits.public)} "
              "drawn in all" if cfg.method == "semantic_consensus" else "no public prompts (this method answers none)")
    lines = [f"{config}: `{cfg.name}`, method {cfg.method}, {len(cfg.clients)} clients, {cfg.rounds} rounds, seed "
             f"{cfg.seed}, {cfg.precision} on this machine; {public}; evaluation: "
             + ", ".join(f"{d} {len(rows)}" for d, rows in p.splits.eval.items()) + " items", "",
             "| client | model | parameters | private domain | private rows | about tokens a row |",
             "|---|---|---|---|---|---|"]
    for c in cfg.clients:
        rows = p.splits.private.get(c.name, [])
        n = p.parameters.get(c.name)
        lines.append(f"| {c.name} | {c.model} | {f'{n / 1e6:,.0f} M' if n else 'unknown shape'} | "
                     f"{p.splits.client_domain.get(c.name, '–')} | {len(rows)} | "
                     f"{tokens([e.instruction + e.response for e in rows]) / max(len(rows), 1):,.0f} |")
    total = {k: sum(f[k] for f in p.flops.values()) for k in ("train", "answer", "evaluate")}
    minutes = sum(total.values()) / rate / 60
    lines += ["", "Cost of one run, estimated: about 4 characters a token, answers to the public prompts as long as "
              "their cap, evaluation answers as long as the references; the minutes are at this machine's best fp32 "
              "matmul rate, which no run reaches, so they are a lower bound for that work: "
              + ", ".join(f"{k} {v / 1e12:,.1f} TFLOP" for k, v in total.items())
              + f"; at {rate / 1e9:,.0f} GFLOP/s, at least {minutes:,.1f} min"
              + ("" if len(p.flops) == len(cfg.clients) else " (clients of an unknown shape left out)") + "."]
    return lines
