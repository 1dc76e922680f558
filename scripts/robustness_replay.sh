#!/bin/bash
# The offline half of the robustness study (docs/results/robustness/replay/): the first study's seed-0 uploads
# (docs/results/replay/runs/run) replayed with 1 and 2 attackers of each kind under each rule and defence. No training:
# attacker share and label quality only (the honest clients' bits per byte need configs/robustness.yaml).
# Usage: scripts/robustness_replay.sh [OUT]   (about 2-3 min per attack on 2 cores)
set -euo pipefail
out=${1:-docs/results/robustness/replay}
run=docs/results/replay/runs/run
gated="gated:signal=knn,gate=0.75"
rules=(--rule medoid --rule medoid:reputation=10 --rule medoid:sybil_merge=0.995
       --rule medoid:reputation=10,sybil_merge=0.995 --rule "$gated" --rule "$gated,support=0.5"
       --rule "$gated,reputation=10,sybil_merge=0.995")
for kind in random plausible_wrong sybil inflate_competence; do
  extra=""; [ "$kind" = inflate_competence ] && extra=",answers=constant"
  semcon replay "$run" "${rules[@]}" --attack "chat:kind=$kind$extra" --out "$out/$kind-1"
  semcon replay "$run" "${rules[@]}" --attack "medicine:kind=$kind$extra" --attack "chat:kind=$kind$extra" \
      --out "$out/$kind-2"
done
# Round 1's attacker share and label ROUGE-L per rule and attack, one table each, from the replay.json files.
python3 - "$out" <<'PY' > "$out/summary.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
cols = [(k, n) for k in ("random", "plausible_wrong", "sybil", "inflate_competence") for n in (1, 2)]
cells = {}
for kind, n in cols:
    for r in json.loads((out / f"{kind}-{n}" / "replay.json").read_text()):
        if r["round"] == 1:
            share = sum(r["label_share"].get(a, 0.0) for a in r["attackers"])
            cells.setdefault(r["rule"], {})[kind, n] = (share, r["quality"]["consensus"]["rouge_l"], r["labelled"])
import subprocess
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"Tabulated by scripts/robustness_replay.sh at commit `{commit}` from the replay.json files below (each "
      "replay.md names the commit that replayed it).\n")
head = "| rule | " + " | ".join(f"{k} ×{n}" for k, n in cols) + " |"
for title, pick in (("attackers' share of the labels", lambda c: f"{100 * c[0]:.0f}%"),
                    ("label ROUGE-L to the references (share of prompts labelled)", lambda c: f"{c[1]:.3f} ({100 * c[2]:.0f}%)")):
    print(f"Round 1, {title}:\n\n{head}\n|---|" + "---|" * len(cols))
    for rule, row in cells.items():
        print(f"| `{rule}` | " + " | ".join(pick(row[c]) for c in cols) + " |")
    print()
PY
