"""The second study's table (docs/results/study2/summary.md): each rule and baseline over its seeds, from the
committed runs' summary.json files. The medoid, local and FedAvg are the first study's runs (docs/results/study),
reused because local seed 0 re-run at the second study's commit gave the same bits per byte. Then the mixed
setting (Dirichlet α = 0.5), where each client holds all four domains in different shares."""

import json
import sys
from pathlib import Path

from semcon.provenance import describe, provenance
from semcon.report import label_quality, mean_expert_share, over_seeds, own_other, paired_differences, seed_scores
from semcon.stats import paired_bootstrap

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
ROWS = [  # label, folder of seed-N directories
    ("local (first study)", "study/local"),
    ("medoid (first study)", "study/semantic_consensus"),
    ("gated on knn, gate 0.75 (the chosen rule)", "study2/consensus.rule=gated/semantic_consensus"),
    ("oracle_expert (a bound)", "study2/consensus.rule=oracle_expert/semantic_consensus"),
    ("oracle_reference (a bound)", "study2/consensus.rule=oracle_reference/semantic_consensus"),
    ("FedAvg (first study)", "study/fedavg"),
]
MIXED = "study2/dirichlet/data.partition=dirichlet+consensus.rule="
MIXED_ROWS = [
    ("local", MIXED + "medoid/local"),
    ("medoid", MIXED + "medoid/semantic_consensus"),
    ("gated on knn, gate 0.75", MIXED + "gated/semantic_consensus"),
]


def runs_in(folder: Path) -> dict[int, dict]:
    return {int(p.parent.name.removeprefix("seed-")): json.loads(p.read_text()) for p in sorted(folder.glob("seed-*/summary.json"))}


def client_mean(summary: dict) -> float:
    scores = seed_scores(summary, "bpb")
    return sum(scores.values()) / len(scores)


def table(rows: list[tuple[str, str]]) -> None:
    """One row per (label, folder), paired against the rows' local."""
    local = runs_in(ROOT / next(folder for label, folder in rows if folder.endswith("/local")))
    print("| method | seeds | bits/byte ↓ | − local, paired (95% bootstrap) | own ↓ | other ↓ | label ROUGE-L | expert share |")
    print("|---|---|---|---|---|---|---|---|")
    for label, folder in rows:
        per_seed = runs_in(ROOT / folder)
        paired = "–"
        if not folder.endswith("/local"):
            diffs = paired_differences({"local": local, "x": per_seed}, "x", "bpb")
            mean, lo, hi = paired_bootstrap(diffs)
            paired = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={len(diffs)})"
        share = over_seeds(per_seed, mean_expert_share, 2)
        print(f"| {label} | {', '.join(map(str, sorted(per_seed)))} | {over_seeds(per_seed, client_mean)} | {paired} | "
              f"{over_seeds(per_seed, lambda s: own_other(s, 'bpb')[0])} | {over_seeds(per_seed, lambda s: own_other(s, 'bpb')[1])} | "
              f"{over_seeds(per_seed, lambda s: label_quality(s, 'rouge_l'))} | {share} |")


def main() -> None:
    print(f"Tabulated by `python scripts/study2_table.py` with {describe(provenance())}, from the runs' summary.json "
          "files (each names the commit it ran at: the first study's in docs/results/study/README.md, the second's "
          "`10dc51a`).\n")
    table(ROWS)
    if (ROOT / MIXED_ROWS[0][1]).is_dir():
        print("\nThe mixed setting, `data.partition: dirichlet` with α = 0.5 (each client holds every domain in its own "
              "shares; a domain's expert is the client holding most of its rows), seed 0; own/other are absent because "
              "no client has one own domain:\n")
        table(MIXED_ROWS)


if __name__ == "__main__":
    main()
