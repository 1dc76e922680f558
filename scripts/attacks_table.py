"""The trained sweep of the recommended rule against attackers (docs/results/robustness/trained/summary.md), from
the runs' summary.json files: per attack and number of attackers, who attacked at each seed, the attackers' share
of the labels, the honest experts' share of their own domains' labels, and the honest clients' quality paired with
the same clients at the same seed without attackers (bits per byte and the task metrics), per seed and per client.

    python scripts/attacks_table.py [docs/results/robustness/trained] > summary.md

The folder holds ``runs/sweep`` (random, plausible-wrong, sybil), ``runs/inflate`` (targeted inflation) and
``runs/dose`` (8x training), each a ``semcon ablate`` output (configs/attacks.yaml's commands A, B and C).
"""

import json
import sys
from pathlib import Path

import numpy as np

from semcon.provenance import describe, provenance
from semcon.studies.report import honest_delta
from semcon.studies.stats import MIN_SEEDS, seed_level

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/robustness/trained")
SWEEPS = [  # folder, what it varies
    ("sweep", "random, plausible-wrong and sybil attackers"),
    ("inflate", "targeted inflation: top competence and certainty claimed on the domain after the attacker's own, "
                "one fixed text there"),
    ("dose", "the dose: 8x the training (16 private steps of 8 and 8 passes over the labels a round)"),
]
# The quality measures, each on the domains where it means something: (metric, domains, lower is better).
MEASURES = {
    "bits/byte": ("bpb", None, True),
    "ROUGE-L (wiki, chat)": ("rouge_l", {"wiki:Geography", "chatterbot"}, False),
    "GSM8K exact match": ("exact_match", {"gsm8k"}, False),
    "MMLU accuracy": ("accuracy", {"mmlu:medicine"}, False),
}


def cells(folder: Path) -> dict[tuple[str, int], dict[int, dict]]:
    """{(kind, count): {seed: summary}} for every finished run of one ablation."""
    found: dict[tuple[str, int], dict[int, dict]] = {}
    if not (folder / "ablation.json").is_file():
        return found
    for record in json.loads((folder / "ablation.json").read_text(encoding="utf-8")):
        if record.get("error") or record.get("method") != "semantic_consensus":
            continue
        overrides = dict(o.split("=", 1) for o in record["overrides"])
        for path in sorted((folder / record["cell"] / "semantic_consensus").glob("seed-*/summary.json")):
            summary = json.loads(path.read_text(encoding="utf-8"))
            kind = overrides.get("adversaries.kind") or folder.name
            found.setdefault((kind, int(overrides["adversaries.count"])), {})[summary["seed"]] = summary
    return found


def measured(summary: dict, metric: str, domains: set[str] | None) -> dict:
    """``summary`` with each client's scores kept to ``domains`` (all: None), for ``honest_delta``."""
    keep = {c: {d: m for d, m in per.items() if (domains is None or d in domains) and metric in m}
            for c, per in (summary.get("eval_after") or {}).items()}
    return {**summary, "eval_after": keep}


def shares(summary: dict) -> tuple[list[float], float | None]:
    """The attackers' share of each consensus round's labels, and the honest experts' share of their own domains'
    labels (mean over rounds and over the domains whose only member is honest)."""
    attackers = set(summary.get("attackers") or [])
    rounds = [r for r in summary["per_round"] if r.get("label_share")]
    attacked = [sum(r["label_share"].get(a, 0.0) for a in attackers) for r in rounds]
    honest_domains = {d for c, d in summary["own_domain"].items() if c not in attackers}
    own = [v for r in rounds for d, v in (r.get("expert_share") or {}).items() if d in honest_domains]
    return attacked, (float(np.mean(own)) if own else None)


def seed_text(values: dict[int, float], digits: int = 3) -> str:
    """Mean over seeds with the seed-level t-interval from MIN_SEEDS seeds on; below that, the values by seed."""
    if not values:
        return "–"
    stats = seed_level({s: [v] for s, v in values.items()})
    if stats["t"] is not None:
        return f"{stats['mean']:+.{digits}f} [{stats['t'][0]:+.{digits}f}, {stats['t'][1]:+.{digits}f}]"
    by_seed = ", ".join(f"s{s} {v:+.{digits}f}" for s, v in sorted(values.items()))
    return f"{stats['mean']:+.{digits}f} ({by_seed})"


def table(runs: dict, clean: dict[int, dict]) -> None:
    """Per (kind, count) with attackers: shares by seed and the paired quality differences over seeds."""
    print("| attack | × | seed: attackers | attacker share, round 1 → 2 | honest experts' own share | "
          + " | ".join(f"Δ {m}" for m in MEASURES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(MEASURES))
    per_client_rows = []
    for (kind, count), per_seed in sorted(runs.items()):
        if count == 0:
            continue
        who = "; ".join(f"s{s}: {', '.join(x['attackers'])}" for s, x in sorted(per_seed.items()))
        by_seed = {s: shares(x) for s, x in sorted(per_seed.items())}
        attacked = "; ".join(f"s{s}: " + " → ".join(f"{100 * v:.0f}%" for v in rounds) for s, (rounds, _) in by_seed.items())
        own = "; ".join(f"s{s}: {100 * v:.0f}%" for s, (_, v) in by_seed.items() if v is not None)
        cols = []
        for measure, (metric, domains, _) in MEASURES.items():
            diffs = {s: honest_delta(measured(x, metric, domains), measured(clean[s], metric, domains), metric)
                     for s, x in per_seed.items() if s in clean}
            means = {s: float(np.mean(list(d.values()))) for s, d in diffs.items() if d}
            cols.append(seed_text(means))
            if measure == "bits/byte":
                per_client_rows.append((kind, count, diffs))
        print(f"| {kind} | {count} | {who} | {attacked} | {own or '–'} | " + " | ".join(cols) + " |")
    names = sorted(next(iter(clean.values()))["own_domain"])
    print("", "Per honest client, Δ bits/byte (this run minus the same client's at the same seed without attackers):",
          "", "| attack | × | seed | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names), sep="\n")
    for kind, count, diffs in per_client_rows:
        for s, d in sorted(diffs.items()):
            print(f"| {kind} | {count} | {s} | " + " | ".join(f"{d[c]:+.3f}" if c in d else "attacks" for c in names)
                  + " |")
    print()


def main() -> None:
    print(f"Tabulated by `python scripts/attacks_table.py` with {describe(provenance())}, from the runs' summary.json "
          f"files (the README names the commit they ran at). Δ: paired, per seed the mean over the clients honest in "
          f"the run of (their value − their own in the run with no attacker at that seed); below {MIN_SEEDS} seeds "
          "the values by seed are printed and no interval is claimed. Bits per byte: lower is better; the task "
          "metrics: higher is better. Attacker share: of each consensus round's labels (25% is one attacker's fair "
          "share of 4 clients); honest experts' own share: of the labels of the domains whose member is honest, "
          "the share that member supplied.", "", sep="\n")
    sweep = cells(ROOT / "runs" / "sweep")
    clean = next((per_seed for (kind, count), per_seed in sweep.items() if count == 0), {})
    for folder, what in SWEEPS:
        runs = sweep if folder == "sweep" else cells(ROOT / "runs" / folder)
        base = next((per_seed for (_, count), per_seed in runs.items() if count == 0), clean)
        if runs and base:
            print(f"## `{folder}`: {what}", "", sep="\n")
            table(runs, base)


if __name__ == "__main__":
    main()
