"""The trained robustness sweeps' table (docs/results/robustness/summary.md), from the committed runs'
summary.json files: per attack kind and defence, the attackers' share of the labels in each consensus round and
the honest clients' bits per byte, against the number of attackers.

    python scripts/robustness_table.py [docs/results/robustness] > summary.md
"""

import json
import sys
from pathlib import Path

from semcon.provenance import describe, provenance
from semcon.studies.report import honest_mean, label_quality

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/robustness")
SWEEPS = [  # folder, what it varies
    ("sweep", "each kind against the medoid, without and with `reputation` (β = 10)"),
    ("sybil_merge", "two sybils against the medoid, without and with `sybil_merge` (0.995)"),
    ("dose", "two sybils against the medoid with 8x the training (8 steps of 8 a round)"),
    ("competence", "inflated competence with a constant text against the gated rule on knn (rank-normalized)"),
    ("competence_raw", "the same without the rank bound (`competence_norm: raw`)"),
]


def cells(folder: Path) -> list[tuple[dict[str, str], dict]]:
    """(the cell's overrides, its seed-0 summary) for each finished cell of one sweep, in the sweep's order."""
    if not (folder / "ablation.json").is_file():
        return []
    records = {r["cell"]: r["overrides"] for r in json.loads((folder / "ablation.json").read_text(encoding="utf-8"))}
    found = []
    for name, overrides in records.items():
        if (path := folder / name / "semantic_consensus" / "seed-0" / "summary.json").is_file():
            found.append((dict(o.split("=", 1) for o in overrides), json.loads(path.read_text(encoding="utf-8"))))
    return found


def consensus_rounds(summary: dict) -> list[dict]:
    return [r for r in summary["per_round"] if r.get("label_share")]


def labelled(summary: dict) -> str:
    """How many prompts got a label in each consensus round, e.g. '16, 11 of 16'."""
    rounds = consensus_rounds(summary)
    return f"{', '.join(str(r['pseudo_labels']) for r in rounds)} of {rounds[0]['prompts']}" if rounds else "–"


def shares(summary: dict) -> str:
    """The attackers' share of each consensus round's labels, with how many got one: '6% → 0% (16, 11 of 16)'."""
    attackers = summary.get("attackers") or []
    per_round = [sum(r["label_share"].get(a, 0.0) for a in attackers) for r in consensus_rounds(summary)]
    return " → ".join(f"{100 * s:.0f}%" for s in per_round) + f" ({labelled(summary)})"


def table(found: list[tuple[dict[str, str], dict]]) -> None:
    """One row per setting of the axes other than the number of attackers; per count: shares, honest bits per
    byte (the clients that attack in no cell) and its difference to no attackers, label ROUGE-L."""
    ever = {a for _, s in found for a in s.get("attackers") or []}
    counts = sorted({int(o["adversaries.count"]) for o, _ in found})
    rows: dict[str, dict[int, dict]] = {}
    for overrides, summary in found:
        key = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items() if k != "adversaries.count") or "–"
        rows.setdefault(key, {})[int(overrides["adversaries.count"])] = summary
    names = ", ".join(sorted(set(found[0][1]["clients"]) - ever))
    print(f"Honest clients: {names} (they attack in no cell).", "", sep="\n")
    attacked = [n for n in counts if n]
    per_count = (f"×{n}: attacker share per round | ×{n}: honest bits/byte (Δ to ×0) | ×{n}: label ROUGE-L"
                 for n in attacked)
    print("| setting | ×0: labels per round | ×0: honest bits/byte | ×0: label ROUGE-L | " + " | ".join(per_count) + " |")
    print("|---|---|---|---|" + "---|---|---|" * len(attacked))
    for key, by_count in rows.items():
        base = honest_mean(by_count[0], excluded=ever) if 0 in by_count else None
        cols = [labelled(by_count[0]), f"{base:.3f}", f"{label_quality(by_count[0], 'rouge_l'):.3f}"
                ] if base is not None else ["not run"] * 3
        for n in attacked:
            if (s := by_count.get(n)) is None:
                cols += ["not run"] * 3
                continue
            honest = honest_mean(s, excluded=ever)
            delta = f" ({honest - base:+.3f})" if base is not None else ""
            cols += [shares(s), f"{honest:.3f}{delta}", f"{label_quality(s, 'rouge_l'):.3f}"]
        print(f"| {key} | " + " | ".join(cols) + " |")
    print("", "The one client that supplied the most labels in each consensus round (attackers marked *):", "",
          "| setting | " + " | ".join(f"×{n}" for n in counts) + " |", "|---|" + "---|" * len(counts), sep="\n")
    for key, by_count in rows.items():
        print(f"| {key} | " + " | ".join(top(by_count[n]) if n in by_count else "not run" for n in counts) + " |")
    print()


def top(summary: dict) -> str:
    """The client with the largest share of each round's labels, e.g. 'math 100% → geography* 56%'."""
    attackers = set(summary.get("attackers") or [])
    tops = [max(r["label_share"].items(), key=lambda kv: kv[1]) for r in consensus_rounds(summary)]
    return " → ".join(f"{c}{'*' if c in attackers else ''} {100 * v:.0f}%" for c, v in tops)


def main() -> None:
    print(f"Tabulated by `python scripts/robustness_table.py` with {describe(provenance())}, from the runs' "
          "summary.json files (the README names the commit they ran at). One seed each; an attacker share of 25% "
          "is one attacker's fair share of 4 clients, 50% two attackers'.", "", sep="\n")
    for folder, what in SWEEPS:
        if found := cells(ROOT / "runs" / folder):
            print(f"## `{folder}`: {what}", "", sep="\n")
            table(found)


if __name__ == "__main__":
    main()
