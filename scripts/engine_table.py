"""Re-runs of a committed study run against it: wall time per phase of each, and whether every upload and
pseudo-label is the same, round by round (an answer that differs is listed with its client, prompt and first
differing character). Prints markdown.

    python scripts/engine_table.py COMMITTED_RUN_DIR NAME=RERUN_DIR [NAME=RERUN_DIR ...]

The time ratios are against the first re-run named (the same code as the committed run, on this box).
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


def same(committed: Path, rerun: Path) -> tuple[list[str], list[tuple[int, tuple[str, str], int]]]:
    """Per round, the uploads and labels equal to the committed run's; and each upload that differs."""
    lines, differing = [], []
    for path in sorted((committed / "uploads").glob("round_*.jsonl")):
        t = int(path.stem.removeprefix("round_"))
        ups_old, ups_new = rows(path), rows(rerun / "uploads" / path.name)
        labels_old, labels_new = rows(committed / "pseudo_labels" / path.name), rows(rerun / "pseudo_labels" / path.name)
        same_up = sum(ups_new.get(k) == v for k, v in ups_old.items())
        same_label = sum(labels_new.get(k) == v for k, v in labels_old.items())
        extra = "" if labels_new.keys() == labels_old.keys() else " (labelled prompts differ)"
        lines.append(f"{same_up} of {len(ups_old)} uploads, {same_label} of {len(labels_old)} labels{extra}")
        differing += [(t, k, first_difference(v, ups_new.get(k, ""))) for k, v in ups_old.items() if ups_new.get(k) != v]
    return lines, differing


def main(committed: Path, reruns: dict[str, Path]) -> None:
    times = {"committed": phases(committed), **{name: phases(path) for name, path in reruns.items()}}
    base = next(iter(reruns))
    names = list(times)
    print(f"| phase | {' | '.join(f'{n} (s)' for n in names)} | "
          f"{' | '.join(f'{n} / {base}' for n in names[2:])} |")
    print("|---|" + "---|" * (len(names) + len(names[2:])))
    for phase in times["committed"]:
        if all(phase in t for t in times.values()):
            cells = [f"{times[n][phase]:.0f}" for n in names]
            ratios = [f"{times[n][phase] / times[base][phase]:.2f}" for n in names[2:]]
            print(f"| {phase} | {' | '.join(cells + ratios)} |")
    generate = {n: [r["seconds"].get("generate", 0.0) for r in json.loads((path / "summary.json").read_text(
        encoding="utf-8"))["per_round"]] for n, path in {"committed": committed, **reruns}.items()}
    print("\nAnswering the public prompts, seconds per round:\n")
    print(f"| round | {' | '.join(names)} |\n|---|" + "---|" * len(names))
    for t in range(1, len(generate["committed"])):
        print(f"| {t} | {' | '.join(f'{generate[n][t]:.0f}' for n in names)} |")
    print("\n| re-run | round | against the committed run |\n|---|---|---|")
    differing = {}
    for name, path in reruns.items():
        lines, differing[name] = same(committed, path)
        for t, line in enumerate(lines, start=1):
            print(f"| {name} | {t} | {line} |")
    for name, found in differing.items():
        if found:
            print(f"\n{name}: answers that differ (round, prompt, client, first differing character):\n")
            for t, (prompt, client), at in found:
                print(f"- round {t}, {prompt}, {client}: from character {at}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), {name: Path(path) for name, _, path in (a.partition("=") for a in sys.argv[2:])})
