#!/usr/bin/env bash
# Issue 39's training, one job at a time and never beside another heavy job: the trained sweep of the recommended rule
# (configs/attacks.yaml's commands A, B and C) and fishing for secrets (configs/fishing.yaml). Run it again after an
# interruption: `semcon ablate` keeps finished cells and resumes an interrupted run. With TRAINED and FISHING set,
# each finished ablation is copied there without checkpoints and adapters (the layouts scripts/attacks_table.py and
# scripts/fishing_table.py read), so it can be committed as it lands.
#
#   SEMCON="python -m semcon" OUT=runs/i39 TRAINED=docs/results/robustness/trained \
#     FISHING=docs/results/privacy/fishing bash scripts/attacks_queue.sh
#
# Run it from a checkout of the runs' commit (configs/ and scripts/ are read from the current folder).
set -uo pipefail
SEMCON=${SEMCON:-semcon}
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/i39}
TRAINED=${TRAINED:-}
FISHING=${FISHING:-}
mkdir -p "$OUT"

# ablate NAME KEEP ARGS...: one `semcon ablate` into $OUT/NAME, then copied to KEEP (none: not copied).
ablate() {
  local name=$1 keep=$2
  shift 2
  echo "$(date -u +%FT%TZ) start $name $($PYTHON -c "import torch; print('torch', torch.__version__, torch.backends.cpu.get_cpu_capability())")" >> "$OUT/queue.log"
  $SEMCON ablate "$@" --out "$OUT/$name" >> "$OUT/$name.log" 2>&1 \
    || { echo "$(date -u +%FT%TZ) FAILED $name" >> "$OUT/queue.log"; return 1; }
  echo "$(date -u +%FT%TZ) done $name" >> "$OUT/queue.log"
  [ -n "$keep" ] || return 0
  mkdir -p "$keep"
  tar -C "$OUT/$name" --exclude=checkpoints --exclude=adapters -cf - . | tar -C "$keep" -xf -
}

# A. random, plausible-wrong and sybil, 0..2 attackers, 2 seeds.
ablate sweep "${TRAINED:+$TRAINED/runs/sweep}" configs/attacks.yaml --grid adversaries.kind=random,plausible_wrong,sybil \
  --grid adversaries.count=0,1,2 --methods semantic_consensus --seeds 2 || exit 1
# B. targeted inflation on the domain after the attacker's own, with the maximal confidence, one fixed text there.
ablate inflate "${TRAINED:+$TRAINED/runs/inflate}" configs/attacks.yaml --grid adversaries.count=1,2 --set adversaries.kind=inflate_competence \
  --set adversaries.answers=constant --set adversaries.target=next --set adversaries.confidence=max \
  --methods semantic_consensus --seeds 2 || exit 1
# C. the dose, with the kind whose two attackers took the largest mean share of the labels in A and B (rule fixed
# before A and B ran): 0 and 2 attackers, 8x the training, 3 seeds.
kind=$(OUT="$OUT" $PYTHON - <<'EOF'
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "scripts")
from attacks_table import cells, shares

taken = {}
for folder, named in (("sweep", None), ("inflate", "inflate_competence")):
    for (kind, count), per_seed in cells(Path(os.environ["OUT"]) / folder).items():
        if count == 2:
            taken[named or kind] = float(np.mean([v for s in per_seed.values() for v in shares(s)[0]]))
print(max(taken, key=taken.get))
EOF
) || exit 1
echo "$(date -u +%FT%TZ) dose kind: $kind" >> "$OUT/queue.log"
dose=(--set "adversaries.kind=$kind")
[ "$kind" = inflate_competence ] && dose+=(--set adversaries.answers=constant --set adversaries.target=next \
  --set adversaries.confidence=max)
ablate dose "${TRAINED:+$TRAINED/runs/dose}" configs/attacks.yaml --grid adversaries.count=0,2 "${dose[@]}" --set train.steps=16 \
  --set train.batch_size=8 --set train.label_epochs=8 --methods semantic_consensus --seeds 3 || exit 1
# Fishing for secrets: two rules, with and without the upload filter, against FedAvg, 2 seeds.
ablate fishing "${FISHING:+$FISHING/runs}" configs/fishing.yaml --grid consensus.rule=gated,medoid --grid "privacy.filter=[],[ngram]" \
  --methods semantic_consensus,fedavg --seeds 2 || exit 1
echo "$(date -u +%FT%TZ) issue 39 queue finished" >> "$OUT/queue.log"
