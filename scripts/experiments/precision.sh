#!/usr/bin/env bash
# Issue-7 bf16 validation on Fashion-MNIST (docs/RESULTS.md "bf16 validation").
#  (a) training: recipes/fmnist/pgd-at.toml trained with attack generation in fp32, in bf16
#      autocast, and with attack + training loss in bf16; each model evaluated in fp32: clean and
#      PGD-20 on the first N test images, AutoAttack-standard on the first N_AA;
#  (b) evaluation: the fp32-trained model attacked with PGD-20 and AutoAttack generated in bf16.
#   scripts/experiments/precision.sh SEED
# Env: ADVTRAIN (binary), THREADS (default 1), N (default 1000), N_AA (default 200),
#      OUT (default runs/precision). Resumable: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
seed=${1:?usage: precision.sh SEED}
B=${ADVTRAIN:-target/release/advtrain}
T=${THREADS:-1}
N=${N:-1000}
N_AA=${N_AA:-200}
OUT=${OUT:-runs/precision}
mkdir -p "$OUT"
ev() { # run-dir tag precision attack limit [extra...]
  local run=$1 tag=$2 prec=$3 attack=$4 n=$5; shift 5
  local json=$run/eval/$tag.json
  [ -f "$json" ] && return 0
  mkdir -p "$run/eval"
  $B --threads "$T" --precision-attack "$prec" eval --run "$run" --attack "$attack" "$@" --eps 0.1 \
    --test-limit "$n" --seed 0 --device cpu --json "$json" > "$run/eval/$tag.log" 2>&1 \
    || { echo "eval $run $tag failed: see $run/eval/$tag.log"; exit 1; }
}
for variant in fp32 bf16-attack bf16-all; do
  case $variant in
    fp32) flags=(--precision-attack fp32 --precision-train fp32) ;;
    bf16-attack) flags=(--precision-attack bf16 --precision-train fp32) ;;
    bf16-all) flags=(--precision-attack bf16 --precision-train bf16) ;;
  esac
  run=$OUT/$variant-seed$seed
  if [ ! -f "$run/summary.json" ]; then
    resume=""
    [ -f "$run/checkpoints/last.safetensors" ] && resume="--resume"
    $B --threads "$T" "${flags[@]}" train --recipe recipes/fmnist/pgd-at.toml --out "$run" \
      --set seed="$seed" $resume > "$run.train.log" 2>&1 \
      || { echo "training $variant seed $seed failed: see $run.train.log"; exit 1; }
  fi
  ev "$run" fp32-pgd20 fp32 pgd "$N" --steps 20 --step-size 0.01
  ev "$run" fp32-autoattack fp32 autoattack "$N_AA"
  echo "$(date +%T) done $variant seed $seed"
done
run=$OUT/fp32-seed$seed
ev "$run" bf16-pgd20 bf16 pgd "$N" --steps 20 --step-size 0.01
ev "$run" bf16-autoattack bf16 autoattack "$N_AA"
echo "$(date +%T) done bf16 evaluation seed $seed"
