#!/bin/bash
# The offline half of the robustness study (docs/results/robustness/replay/): the first study's seed-0 uploads
# (docs/results/replay/run) replayed with 1 and 2 attackers of each kind under each rule and defence. No training:
# attacker share and label quality only (the honest clients' bits per byte need configs/robustness.yaml).
# Usage: scripts/robustness_replay.sh [OUT]   (about 2-3 min per attack on 2 cores)
set -euo pipefail
out=${1:-docs/results/robustness/replay}
run=docs/results/replay/run
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
