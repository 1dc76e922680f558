"""The second study's table (docs/results/study2/summary.md): each rule and baseline over its seeds, from the
committed runs' files, with the seed as the replicate. The medoid, local and FedAvg are the first study's runs
(docs/results/study), reused because local seed 0 re-run at the second study's commit gave the same bits per
byte. Then the mixed setting (Dirichlet α = 0.5), where each client holds all four domains in different shares.

    python scripts/study2_table.py > docs/results/study2/summary.md
"""

import json
import sys
from pathlib import Path

import numpy as np

from semcon.provenance import describe, provenance
from semcon.studies.report import (difference_cell, label_quality, mean_expert_share, over_seeds, own_other,
                           paired_differences, seed_scores)
from semcon.rounds.rundir import read_rows
from semcon.studies.stats import MIN_SEEDS

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
ROWS = [  # label, folder of seed-N directories
    ("local (first study)", "study/runs/local"),
    ("medoid (first study)", "study/runs/semantic_consensus"),
    ("gated on knn, gate 0.75 (the chosen rule)", "study2/runs/consensus.rule=gated/semantic_consensus"),
    ("oracle_expert (a bound)", "study2/runs/consensus.rule=oracle_expert/semantic_consensus"),
    ("oracle_reference (a bound)", "study2/runs/consensus.rule=oracle_reference/semantic_consensus"),
    ("FedAvg (first study)", "study/runs/fedavg"),
]
MIXED = "study2/runs/dirichlet/data.partition=dirichlet+consensus.rule="
MIXED_ROWS = [
    ("local", MIXED + "medoid/local"),
    ("medoid", MIXED + "medoid/semantic_consensus"),
    ("gated on knn, gate 0.75", MIXED + "gated/semantic_consensus"),
]


def runs_in(folder: Path) -> dict[int, dict]:
    """Each seed's summary, with its run directory under ``"dir"``."""
    return {int(p.parent.name.removeprefix("seed-")): {**json.loads(p.read_text()), "dir": p.parent}
            for p in sorted(folder.glob("seed-*/summary.json"))}


def client_mean(summary: dict) -> float:
    scores = seed_scores(summary, "bpb")
    return sum(scores.values()) / len(scores)


def expert_share(summary: dict) -> float | None:
    """The share of each domain's labels that are its expert's answer, mean over domains and rounds: from the metrics
    where the run wrote it, else from its pseudo-label files (the first study's runs predate the metric)."""
    if (share := mean_expert_share(summary)) is not None or summary["method"] != "semantic_consensus":
        return share
    experts = {d: c for c, d in (summary.get("own_domain") or {}).items() if d}
    domain = {p["id"]: p["domain"] for p in read_rows(summary["dir"] / "public.jsonl")}
    shares = []
    for path in sorted((summary["dir"] / "pseudo_labels").glob("round_*.jsonl")):
        labels = read_rows(path)
        for d, expert in experts.items():
            mine = [lab for lab in labels if domain[lab["prompt_id"]] == d]
            if mine:
                shares.append(sum(lab["client"] == expert for lab in mine) / len(mine))
    return float(np.mean(shares)) if shares else None


def random_rouge(summary: dict) -> float | None:
    """ROUGE-L of a random client's answer on the same labelled prompts, mean over rounds: what the labels' ROUGE-L
    is compared with."""
    values = [(r.get("answer_quality") or {}).get("random", {}).get("rouge_l") for r in summary["per_round"]]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table(rows: list[tuple[str, str]]) -> list[list[str]]:
    """One row per (label, folder), paired against the rows' local; returns the per-client differences."""
    local = runs_in(ROOT / next(folder for label, folder in rows if folder.endswith("/local")))
    print("| method | seeds | bits/byte ↓ | − local, seed-level | own ↓ | other ↓ | label ROUGE-L | a random client's "
          "ROUGE-L | expert share |")
    print("|---|---|---|---|---|---|---|---|---|")
    clients = []
    for label, folder in rows:
        per_seed = runs_in(ROOT / folder)
        paired = "–"
        if not folder.endswith("/local"):
            diffs = paired_differences({"local": local, "x": per_seed}, "x", "bpb")
            paired = difference_cell(diffs)
            names = dict.fromkeys(c for per in diffs.values() for c in per)
            clients += [[label, c, *(f"{diffs[s][c]:+.3f}" if c in diffs.get(s, {}) else "–" for s in sorted(local))]
                        for c in names]
        print(f"| {label} | {', '.join(map(str, sorted(per_seed)))} | {over_seeds(per_seed, client_mean)} | {paired} | "
              f"{over_seeds(per_seed, lambda s: own_other(s, 'bpb')[0])} | {over_seeds(per_seed, lambda s: own_other(s, 'bpb')[1])} | "
              f"{over_seeds(per_seed, lambda s: label_quality(s, 'rouge_l'))} | {over_seeds(per_seed, random_rouge)} | "
              f"{over_seeds(per_seed, expert_share, 2)} |")
    return clients


def per_client(clients: list[list[str]], seeds: list[int]) -> None:
    print("\nPer client, (method − local) in bits per byte, seed by seed:\n")
    print("| method | client | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|" + "---|" * len(seeds))
    for row in clients:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    print(f"Tabulated by `python scripts/study2_table.py` with {describe(provenance())}, from the runs' files (each "
          "summary.json names the commit it ran at: the first study's local, medoid and FedAvg runs `e0eb7b9`, the "
          "second study's `10dc51a`).\n")
    print(f"The seed is the replicate: the clients of one seed share one label set. '− local, seed-level' is, per seed, "
          f"the mean over clients of (method − local) on the same client and seed, then the mean over seeds; with fewer "
          f"than {MIN_SEEDS} seeds every seed's value is printed and no interval is claimed (the earlier version of this "
          "table gave a bootstrap over the 12 client-seed pairs as if they were independent). Bits per byte, own, "
          "other, ROUGE-L and expert share: mean over seeds and, with more than one seed, the seeds' range in "
          "brackets. Label ROUGE-L is against the held-back references on the labelled prompts, beside a random "
          "client's answer on the same prompts; expert share is the mean over domains and rounds (the first study's "
          "medoid runs: from their pseudo-label files).\n")
    clients = table(ROWS)
    per_client(clients, sorted(runs_in(ROOT / ROWS[0][1])))
    if (ROOT / MIXED_ROWS[0][1]).is_dir():
        print("\nThe mixed setting, `data.partition: dirichlet` with α = 0.5 (each client holds every domain in its own "
              "shares; a domain's expert is the client holding most of its rows), seed 0; own/other are absent because "
              "no client has one own domain:\n")
        table(MIXED_ROWS)


if __name__ == "__main__":
    main()
