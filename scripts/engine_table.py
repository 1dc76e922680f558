"""A re-run of a committed study run against it: wall time per phase, and whether every upload and pseudo-label is
the same, round by round (an answer that differs is listed with its client, prompt and first differing
character). Prints markdown.

    python scripts/engine_table.py RERUN_DIR COMMITTED_RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> dict[tuple[str, str], str]:
    """(prompt id, client) -> text of a run's kept uploads or pseudo-labels file."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out[(row["prompt_id"], row["client"])] = row["text"]
    return out


def phases(run: Path) -> dict[str, float]:
    """Seconds per phase summed over the rounds, and the whole run's."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    total: dict[str, float] = {}
    for r in summary["per_round"]:
        for phase, s in (r.get("seconds") or {}).items():
            total[phase] = total.get(phase, 0.0) + s
    return {**total, "whole run": summary["seconds"]}


def first_difference(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(rerun: Path, committed: Path) -> None:
    new, old = phases(rerun), phases(committed)
    print("| phase | committed (s) | re-run (s) | re-run / committed |\n|---|---|---|---|")
    for phase in old:
        if phase in new:
            print(f"| {phase} | {old[phase]:.0f} | {new[phase]:.0f} | {new[phase] / old[phase]:.2f} |")
    print("\n| round | uploads equal | pseudo-labels equal |\n|---|---|---|")
    differing = []
    for path in sorted((committed / "uploads").glob("round_*.jsonl")):
        t = path.stem.removeprefix("round_")
        ups_old, ups_new = rows(path), rows(rerun / "uploads" / path.name)
        labels_old = rows(committed / "pseudo_labels" / path.name)
        labels_new = rows(rerun / "pseudo_labels" / path.name)
        same_up = sum(ups_new.get(k) == v for k, v in ups_old.items())
        same_label = sum(labels_new.get(k) == v for k, v in labels_old.items()) if labels_new.keys() == \
            labels_old.keys() else f"{sum(labels_new.get(k) == v for k, v in labels_old.items())} (prompts differ)"
        print(f"| {int(t)} | {same_up} of {len(ups_old)} | {same_label} of {len(labels_old)} |")
        differing += [(int(t), k, first_difference(v, ups_new.get(k, ""))) for k, v in ups_old.items()
                      if ups_new.get(k) != v]
    if differing:
        print("\nAnswers that differ (round, prompt, client, first differing character):\n")
        for t, (prompt, client), at in differing:
            print(f"- round {t}, {prompt}, {client}: from character {at}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
