#!/usr/bin/env bash
# The third study's runs (configs/study3.yaml's comment says what each answers), one at a time, seed by seed, so that
# an interruption leaves paired seeds. Run it again after an interruption: finished runs are kept, an interrupted one
# resumes from its last round. With KEEP set, each finished run is copied there without checkpoints and adapters
# (the layout scripts/study3_table.py reads), so it can be committed as it lands, and a run already there is not run
# again (a new box with only the committed runs picks up where they end).
#
#   SEMCON="python -m semcon" OUT=runs/study3 KEEP=docs/results/study3/runs bash scripts/study3_queue.sh
#
# Run it from a checkout of the study's commit (configs/study3.yaml is read from the current folder).
set -uo pipefail
SEMCON=${SEMCON:-semcon}
OUT=${OUT:-runs/study3}
KEEP=${KEEP:-}
mkdir -p "$OUT"

# one NAME SEED METHODS [SETTING ...]: a compare of METHODS at one seed into $OUT/NAME/sSEED, then kept.
one() {
  local name=$1 seed=$2 methods=$3
  shift 3
  local out="$OUT/$name/s$seed" sets=(--set "seed=$seed")
  for s in "$@"; do sets+=(--set "$s"); done
  if [ -n "$KEEP" ] && kept "$name" "$seed" "$methods"; then
    echo "$(date -u +%FT%TZ) kept already: $name seed $seed" >> "$OUT/queue.log"
    return 0
  fi
  local resume=()
  [ -f "$out/compare.json" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $name seed $seed ($methods) $(python_kernels)" >> "$OUT/queue.log"
  $SEMCON compare configs/study3.yaml --methods "$methods" "${sets[@]}" --seeds 1 --out "$out" "${resume[@]}" \
    >> "$OUT/$name-s$seed.log" 2>&1 || { echo "$(date -u +%FT%TZ) FAILED $name seed $seed" >> "$OUT/queue.log"; return 1; }
  echo "$(date -u +%FT%TZ) done $name seed $seed" >> "$OUT/queue.log"
  [ -n "$KEEP" ] || return 0
  for run in "$out"/*/seed-"$seed"; do
    local dest="$KEEP/$name/$(basename "$(dirname "$run")")"
    mkdir -p "$dest"
    tar -C "$(dirname "$run")" --exclude=checkpoints --exclude=adapters -cf - "seed-$seed" | tar -C "$dest" -xf -
  done
}

# kept NAME SEED METHODS: every method's run at SEED is already in $KEEP (a new box need not run it again).
kept() {
  local m
  for m in ${3//,/ }; do
    [ -f "$KEEP/$1/$m/seed-$2/summary.json" ] || return 1
  done
}

python_kernels() {
  $SEMCON --version 2>/dev/null | head -1 | tr '\n' ' '
  ${PYTHON:-python} -c "import torch; print('torch', torch.__version__, torch.backends.cpu.get_cpu_capability())" 2>/dev/null
}

# 1. Is the gain real? local, gated and local+ (as many extra private steps: 6 a training x 4 = gated's 8 x 3).
for seed in 0 1 2 3 4; do
  one gain "$seed" local,semantic_consensus || exit 1
  one gain-plus "$seed" local+ train.label_steps=6 || exit 1
done
# 2. The paper's rule under the same schedule, and parameter averaging on these rows.
for seed in 0 1 2; do
  one medoid "$seed" semantic_consensus consensus.rule=medoid || exit 1
  one fedavg "$seed" fedavg || exit 1
done
# 3. The budget: gated at 4x the prompts (fresh each round) and local+ with its steps (24 x 4 = gated's 32 x 3), the
# references-only bound across 9x, the expert bound.
for seed in 0 1 2; do
  one gated-256 "$seed" semantic_consensus public.num_prompts=256 public.per_round=fresh train.label_steps=32 || exit 1
  one plus-256 "$seed" local+ train.label_steps=24 || exit 1
done
for seed in 0 1; do
  for n in 64 192 576; do
    one "reference-$n" "$seed" semantic_consensus consensus.rule=oracle_reference public.per_round=fresh \
      "public.num_prompts=$n" "train.label_steps=$((n / 8))" || exit 1
  done
done
one expert-256 0 semantic_consensus consensus.rule=oracle_expert public.num_prompts=256 public.per_round=fresh \
  train.label_steps=32 || exit 1
echo "$(date -u +%FT%TZ) study3 queue finished" >> "$OUT/queue.log"
