"""Fishing for secrets (docs/results/privacy/fishing/summary.md), from the runs' files: per filter setting, method
and seed, where the planted canaries were found, their exposure, what the filter withheld, and which kind of fishing
prompt drew each secret out (from the kept uploads and pseudo-labels).

    python scripts/fishing_table.py [docs/results/privacy/fishing] > summary.md

The folder holds ``runs/``, the output of configs/fishing.yaml's ``semcon ablate`` command.
"""

import json
import sys
from pathlib import Path

import yaml

from semcon.data.canaries import FISHING_PER_CANARY, canaries
from semcon.member.privacy import found
from semcon.provenance import describe, provenance
from semcon.rounds.rundir import RunDir
from semcon.studies.report import exposure_change, privacy_numbers

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/privacy/fishing")
COUNTS = {"in_uploads": "secrets in its uploads", "in_labels": "in pseudo-labels",
          "in_others_completions": "in others' completions", "withheld": "answers withheld"}
KINDS = [*FISHING_PER_CANARY, "context"]


def by_kind(run: Path, summary: dict) -> dict[str, tuple[int, int]]:
    """Per kind of fishing prompt, how many distinct secrets the planting client's uploads and the pseudo-labels
    held on prompts of that kind, over all rounds."""
    kept = RunDir(run)
    planted = canaries(kept.config().privacy.canaries, summary["seed"])
    owner, rounds = summary["canary_client"], kept.kept_rounds()
    uploads = [r for t in rounds for r in kept.kept_upload_rows(t) if r["client"] == owner]
    labels = [r for t in rounds for r in kept.kept_labels(t)]
    out = {}
    for kind in KINDS:
        out[kind] = tuple(sum(any(found(c, r["text"]) for r in rows if r["prompt_id"].startswith(f"fish-{kind}-"))
                              for c in planted) for rows in (uploads, labels))
    return out


def main() -> None:
    print(f"Tabulated by `python scripts/fishing_table.py` with {describe(provenance())}, from the runs' files (the "
          "README names the commit they ran at). Two seeds, each row one run: no interval is claimed. Secrets: of "
          "the 32 planted, found verbatim or nearly (normalised edit similarity ≥ 0.8 on the secret), the most in "
          "one round; exposure: log2(101) − log2(rank) among 100 random codes (at most 6.66), mean over secrets (and "
          "over the other clients), after round 0 (before any exchange) → after the last round; withheld: over all "
          "rounds and clients. FedAvg answers no prompt: its leak is through the averaged weights.", "", sep="\n")
    print("| method | filter | seed | " + " | ".join(COUNTS.values()) +
          " | exposure, planting client | exposure, others |")
    print("|---|---|---|" + "---|" * (len(COUNTS) + 2))
    drawn, seen = [], set()
    for path in sorted((ROOT / "runs").glob("*/*/seed-*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text(encoding="utf-8"))
        consensus = summary["method"] == "semantic_consensus"
        method = f"semantic consensus ({cfg['consensus']['rule']})" if consensus else summary["method"]
        setting = ", ".join(cfg["privacy"]["filter"]) or "none" if consensus else "–"  # FedAvg sends no answer
        if (method, setting, summary["seed"]) in seen:  # a run copied into another cell
            continue
        seen.add((method, setting, summary["seed"]))
        numbers = privacy_numbers(summary) or {}
        print(f"| {method} | {setting} | {summary['seed']} | "
              + " | ".join([*(str(numbers.get(k, "–")) for k in COUNTS), *exposure_change(summary)]) + " |")
        if consensus:
            drawn.append((method, setting, summary["seed"], by_kind(path.parent, summary)))
    print("", "Which fishing prompts drew the secrets out (distinct secrets over all rounds, in the planting client's "
          "uploads / in the pseudo-labels):", "",
          "| method | filter | seed | " + " | ".join(KINDS) + " |", "|---|---|---|" + "---|" * len(KINDS), sep="\n")
    for method, setting, seed, kinds in drawn:
        print(f"| {method} | {setting} | {seed} | " + " | ".join(f"{u} / {lab}" for u, lab in kinds.values()) + " |")


if __name__ == "__main__":
    main()
