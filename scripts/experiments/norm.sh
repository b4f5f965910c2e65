#!/usr/bin/env bash
# Issue-4 and issue-5 experiments on Fashion-MNIST (docs/RESULTS.md "Multi-domain normalisation",
# "Training objectives"): train each named recipe of recipes/fmnist/ for one seed, then evaluate every branch with clean,
# PGD-20 and APGD-CE on the first N test images (eps 0.1). Resumable: finished steps are skipped,
# a killed training run resumes from its last checkpoint.
#   scripts/experiments/norm.sh SEED [recipe names...]     (default: the issue-4 set below)
#   OUT=runs/obj scripts/experiments/norm.sh SEED pgd-at trades arat ...   (issue 5)
# Env: ADVTRAIN (binary, default target/release/advtrain), THREADS (default 1), N (default 500),
#      OUT (default runs/norm), RECIPES (default recipes/fmnist; recipes/fmnist-eps0.2 with EPS=0.2),
#      EPS (evaluation eps, default 0.1; PGD-20 step EPS/10).
set -euo pipefail
cd "$(dirname "$0")/../.."
seed=${1:?usage: norm.sh SEED [names...]}
shift
B=${ADVTRAIN:-target/release/advtrain}
T=${THREADS:-1}
N=${N:-500}
OUT=${OUT:-runs/norm}
RECIPES=${RECIPES:-recipes/fmnist}
EPS=${EPS:-0.1}
STEP=$(python3 -c "print($EPS / 10)")
mkdir -p "$OUT"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(e7-single-cat e7-single-separate e7-dual-bn e7-dual-ap e7-dual-ns e10-dual-linear
         e1-single-r0 e1-single-r25 e1-single-r50 e3-mbn-r50 e5-group-r0 e5-group-r50
         e7-cross-bn advprop e8-clean)
fi
branches() {
  case $1 in
    e7-dual-bn|e7-dual-ap|e7-dual-ns|e10-dual-linear|e3-mbn-r50|advprop) echo "adv clean" ;;
    trades-dual-bn|arat|e12-inv-split|e12-symmetric) echo "adv" ;;
    e7-cross-bn) echo "ns=clean,ap=adv clean" ;;
    e8-clean) echo "" ;;
    *) echo "clean" ;;
  esac
}
for name in "${names[@]}"; do
  run=$OUT/$name-seed$seed
  if [ ! -f "$run/summary.json" ]; then
    resume=""
    [ -f "$run/checkpoints/last.safetensors" ] && resume="--resume"
    $B --threads "$T" train --recipe "$RECIPES/$name.toml" --out "$run" --set seed="$seed" $resume \
      > "$run.train.log" 2>&1 || { echo "training $name seed $seed failed: see $run.train.log"; exit 1; }
  fi
  for route in $(branches "$name"); do
    tag=${route//[=,]/_}
    for attack in pgd apgd-ce; do
      json=$run/eval/$tag-$attack.json
      [ -f "$json" ] && continue
      extra=""
      [ "$attack" = pgd ] && extra="--steps 20 --step-size $STEP"
      mkdir -p "$run/eval"
      $B --threads "$T" eval --run "$run" --route "$route" --attack "$attack" $extra --eps "$EPS" \
        --test-limit "$N" --seed 0 --device cpu --json "$json" > "$run/eval/$tag-$attack.log" 2>&1 \
        || { echo "eval $name $route $attack failed: see $run/eval/$tag-$attack.log"; exit 1; }
    done
  done
  echo "$(date +%T) done $name seed $seed"
done
