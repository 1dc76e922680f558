"""The privacy audit's table (docs/results/privacy/summary.md), from the committed runs' summary.json files: per
filter setting and method, where the planted canaries were found, their exposure, what the filter withheld, and
the clients' held-out bits per byte.

    python scripts/privacy_table.py [docs/results/privacy] > summary.md
"""

import json
import sys
from pathlib import Path

import yaml

from semcon.provenance import describe, provenance
from semcon.studies.report import exposure_change, privacy_numbers, seed_scores

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/privacy")
COUNTS = {"in_uploads": "canaries in its uploads", "in_labels": "in pseudo-labels",
          "in_others_completions": "in others' completions", "withheld": "answers withheld"}


def main() -> None:
    print(f"Tabulated by `python scripts/privacy_table.py` with {describe(provenance())}, from the runs' "
          "summary.json files (the README names the commit they ran at). One seed. Canaries: found verbatim or nearly "
          "(normalised edit similarity ≥ 0.8 on the secret), the most in one round; exposure: log2(C + 1) − "
          "log2(rank) among C random codes, mean over canaries (and over the other clients), after round 0 (before "
          "any exchange) → after the last round; withheld: over all rounds and clients.", "", sep="\n")
    print("| filter | method | " + " | ".join(COUNTS.values()) +
          " | exposure, planting client | exposure, others | bits/byte, planting client ↓ | bits/byte, others ↓ |")
    print("|---|---|" + "---|" * (len(COUNTS) + 4))
    for path in sorted((ROOT / "runs").glob("*/*/seed-0/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        numbers = privacy_numbers(summary) or {}
        owner = summary.get("canary_client")
        scores = seed_scores(summary, "bpb")
        others = [v for c, v in scores.items() if c != owner]
        owner_bpb = f"{scores[owner]:.3f}" if owner in scores else "–"
        counts = [str(numbers.get(k, "–")) for k in COUNTS]
        run_filter = yaml.safe_load((path.parent / "config.yaml").read_text(encoding="utf-8"))["privacy"]["filter"]
        setting = ", ".join(run_filter) or "none"
        print(f"| {setting} | {summary['method']} | " + " | ".join([*counts, *exposure_change(summary)]) +
              f" | {owner_bpb} | {sum(others) / len(others):.3f} |")


if __name__ == "__main__":
    main()
