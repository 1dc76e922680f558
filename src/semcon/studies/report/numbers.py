"""What the reports read off the runs' summaries: per-client scores, paired differences per seed, own and other
domains, training budgets, time per phase, label quality and shares. Numbers only; no formatting."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from semcon.comm import adapter_bytes as comm_adapter_bytes
from semcon.comm import human_bytes
from semcon.config import RunConfig


Runs = dict[str, dict[int, dict]]  # method -> seed -> that run's summary


# bpb_plain: bits per byte of the references without GSM8K's calculator annotations (evaluate.plain_bpb)
METRICS = (("bpb", "bits/byte ↓"), ("bpb_plain", "bits/byte plain ↓"), ("rouge_l", "ROUGE-L ↑"), ("cosine", "cosine ↑"), ("accuracy", "MMLU acc ↑"),
           ("exact_match", "GSM8K EM ↑"))


LOWER_IS_BETTER = frozenset({"bpb", "bpb_plain", "nll"})


BASELINE = "local"


def client_scores(per_client: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, float]:
    """Per client, the metric averaged over the eval domains where it exists."""
    scores = {}
    for client, per_domain in per_client.items():
        values = [m[metric] for m in per_domain.values() if metric in m]
        if values:
            scores[client] = float(np.mean(values))
    return scores


def seed_scores(summary: dict, metric: str) -> dict[str, float]:
    """Per client of one run, the metric after training averaged over the eval domains."""
    return client_scores(summary.get("eval_after") or {}, metric)


def paired_differences(runs: Runs, method: str, metric: str, baseline: str = BASELINE) -> dict[int, dict[str, float]]:
    """``method - baseline`` per seed both ran and per client of that seed; a method with one model (centralized)
    pairs it with each of the baseline's clients."""
    diffs: dict[int, dict[str, float]] = {}
    for seed, base in runs[baseline].items():
        if seed not in runs[method]:
            continue
        ours, baseline_scores = seed_scores(runs[method][seed], metric), seed_scores(base, metric)
        single = next(iter(ours.values())) if len(ours) == 1 and not ours.keys() & baseline_scores.keys() else None
        per_client = {c: value - theirs for c, theirs in baseline_scores.items()
                      if (value := ours.get(c, single)) is not None}
        if per_client:
            diffs[seed] = per_client
    return diffs


def split_own(per_domain: dict[str, dict], domain: str | None, metric: str) -> tuple[float | None, float | None]:
    """One client's metric on its own domain, and its mean over the other domains (None where absent)."""
    rest = [m[metric] for d, m in per_domain.items() if d != domain and metric in m]
    return per_domain.get(domain, {}).get(metric), (float(np.mean(rest)) if rest else None)


def own_other(summary: dict, metric: str) -> tuple[float | None, float | None]:
    """Client-mean of the metric on each client's own domain, and of its mean over the other domains."""
    own, other = [], []
    after = summary.get("eval_after") or {}
    for client, domain in (summary.get("own_domain") or {}).items():
        if domain is None:
            continue
        mine, rest = split_own(after.get(client, {}), domain, metric)
        own += [mine] if mine is not None else []
        other += [rest] if rest is not None else []
    return (float(np.mean(own)) if own else None), (float(np.mean(other)) if other else None)


def mean_or_none(values) -> float | None:
    return float(np.mean(values)) if values else None


def seed_mean(per_seed: dict[int, dict], value: Callable[[dict], float]) -> float:
    return float(np.mean([value(s) for s in per_seed.values()]))


def training_budget(summary: dict) -> dict[str, tuple[int, int]]:
    """Per client, the optimizer steps and trained tokens of the whole run (from its rounds' losses and tokens)."""
    budget: dict[str, tuple[int, int]] = {}
    for r in summary["per_round"]:
        for client, losses in (r.get("train_loss") or {}).items():
            steps, tokens = budget.get(client, (0, 0))
            budget[client] = (steps + len(losses), tokens + (r.get("train_tokens") or {}).get(client, 0))
    return budget


def per_client_round(summary: dict) -> float:
    """Mean bytes (up + down) per client per communicating round."""
    rounds = [r for r in summary["per_round"] if r["bytes_up"] or r["bytes_down"]]
    total = sum(r["bytes_up"] + r["bytes_down"] for r in rounds)
    return total / max(len(rounds) * len(summary["clients"]), 1)


def adapter_bytes(cfg: RunConfig, summary: dict | None = None) -> int | None:
    """The fp32 LoRA adapter of the run's first client in bytes: as the run recorded it at its end (``summary``),
    else from its model's shapes (runs from before it was recorded)."""
    if summary is not None and "adapter_bytes" in summary:
        return summary["adapter_bytes"]
    return comm_adapter_bytes(cfg.clients[0].model, cfg.train.lora.r, cfg.train.lora.target_modules)


def analytic_ratio(cfg: RunConfig, summary: dict) -> str | None:
    """LoRA-FedAvg over semantic-consensus bytes for this run's model, from its shapes and the measured
    mean answer bytes (so the report puts the analytic figure beside the measured one)."""
    up = [r for r in summary["per_round"] if r.get("prompts")]
    if not up or (one := adapter_bytes(cfg, summary)) is None:
        return None
    adapter = 2 * one  # up and down
    text = np.mean([(r["bytes_up"] + r["bytes_down"]) / max(len(r.get("accepted", [])), 1) for r in up])
    return (f"{adapter / text:,.0f}x per client per round (fp32 adapter {human_bytes(one)} each way vs "
            f"{human_bytes(text)} of encoded text up + down, this run's mean)")


def transfer_s(summary: dict) -> float:
    return sum(r.get("modelled_transfer_s") or 0 for r in summary["per_round"])


def compute_s(summary: dict) -> float:
    return sum(sum(r["seconds"].values()) for r in summary["per_round"])


def privacy_numbers(summary: dict) -> dict | None:
    """The audit at the end of a run (its last round's row): canaries in the planting client's uploads, in any
    pseudo-label, in the other clients' completions; mean exposure for the planting client and the others; and the
    filter's withheld and redacted answers over all rounds."""
    owner = summary.get("canary_client")
    rows = [r.get("privacy") or {} for r in summary["per_round"]]
    if not any(rows):
        return None
    last = next((r for r in reversed(rows) if r), {})
    others = [v for n, v in last.items() if n != owner]
    uploads = [r.get(owner, {}).get("uploaded", 0) for r in rows]
    return {"in_uploads": max(uploads, default=0), "in_labels": max((v.get("received", 0) for r in rows
                                                                     for v in r.values()), default=0),
            "in_others_completions": max((v.get("completed", 0) for v in others), default=0),
            "exposure_owner": mean_or_none(last.get(owner, {}).get("exposure", [])),
            "exposure_others": mean_or_none([x for v in others for x in v.get("exposure", [])]),
            "withheld": sum(v.get("withheld", 0) for r in rows for v in r.values()),
            "redacted": sum(v.get("redacted", 0) for r in rows for v in r.values())}


def exposure_change(summary: dict) -> tuple[str, str]:
    """Mean exposure after round 0 (before any exchange: the others have never seen a canary, so theirs is the
    base model's prior over codes, not chance) → after the last round, for the planting client and the others."""
    owner = summary.get("canary_client")
    rows = [r["privacy"] for r in summary["per_round"] if r.get("privacy")]

    def mean(row: dict, mine: bool) -> float:
        values = [x for c, v in row.items() if (c == owner) == mine for x in v.get("exposure", [])]
        return sum(values) / len(values) if values else float("nan")

    return tuple(f"{mean(rows[0], mine):.2f} → {mean(rows[-1], mine):.2f}" for mine in (True, False))


PHASES = {"train": "training", "answer": "answers", "exchange": "exchange", "rest": "evaluation and setup"}


def phase_seconds(summary: dict) -> dict[str, float]:
    """A run's wall seconds split into training, answering the public prompts, the exchange (upload, embedding,
    aggregation, transfer) and the rest (evaluation and setup), which the rounds do not time."""
    phases = dict.fromkeys(("train", "answer", "exchange"), 0.0)
    for r in summary["per_round"]:
        for phase, seconds in r["seconds"].items():
            phases[{"train": "train", "generate": "answer"}.get(phase, "exchange")] += seconds
    return phases | {"rest": summary["seconds"] - sum(phases.values())}


def round_bpb(row: dict) -> float | None:
    """Held-out bits per byte after this round, mean over clients and domains (None without scores)."""
    values = [m["bpb"] for per_domain in (row.get("reference") or {}).values() for m in per_domain.values()
              if "bpb" in m]
    return mean_or_none(values)


def per_round_mean(per_seed: dict[int, dict], value: Callable[[dict], float | None]) -> tuple[list[int], list[float]]:
    """Rounds and, per round, the mean over seeds of ``value(row)`` where a seed has it."""
    by_round: dict[int, list[float]] = {}
    for s in per_seed.values():
        for r in s["per_round"]:
            if (v := value(r)) is not None:
                by_round.setdefault(r["round"], []).append(v)
    rounds = sorted(by_round)
    return rounds, [float(np.mean(by_round[r])) for r in rounds]


def dig(node, *keys):
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def label_quality(summary: dict, metric: str) -> float | None:
    """A run's pseudo-label ``metric`` (rouge_l or cosine to the held-back references), mean over its rounds."""
    return mean_or_none([v for r in summary["per_round"] if (v := dig(r.get("answer_quality"), "consensus", metric))
                  is not None])


def mean_expert_share(summary: dict) -> float | None:
    """The share of each domain's labels that its expert supplied, mean over domains and rounds."""
    return mean_or_none([v for r in summary["per_round"] for v in (r.get("expert_share") or {}).values()])


def client_mean(summary: dict, metric: str = "bpb") -> float | None:
    return mean_or_none(list(seed_scores(summary, metric).values()))


def honest_mean(summary: dict, metric: str = "bpb", excluded: set[str] = frozenset()) -> float | None:
    """The metric's mean over the clients that do not attack, and not in ``excluded`` either (a sweep passes
    every cell's attackers, so that all its cells average the same clients)."""
    skip = set(summary.get("attackers") or []) | set(excluded)
    return mean_or_none([v for c, v in seed_scores(summary, metric).items() if c not in skip])


def honest_delta(summary: dict, clean: dict, metric: str = "bpb") -> dict[str, float]:
    """Per client that does not attack in ``summary``, its ``metric`` minus its own in ``clean`` (the same setting
    and seed with no attacker): paired, so that attackers that rotate across clients compare like with like."""
    ours, theirs = seed_scores(summary, metric), seed_scores(clean, metric)
    skip = set(summary.get("attackers") or [])
    return {c: v - theirs[c] for c, v in ours.items() if c not in skip and c in theirs}


def attacker_share(summary: dict) -> float | None:
    """The attackers' share of all pseudo-labels, mean over rounds (None: no labels; 0 without attackers)."""
    attackers = summary.get("attackers") or []
    shares = [sum((r.get("label_share") or {}).get(a, 0.0) for a in attackers) for r in summary["per_round"]
              if r.get("label_share")]
    return mean_or_none(shares)
