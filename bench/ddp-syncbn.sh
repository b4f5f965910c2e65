#!/usr/bin/env bash
# Cost of distributed.sync_bn (docs/BENCHMARKS.md): 2 workers x 1 thread, small-cnn (BatchNorm)
# PGD-10 AT on 2048 Fashion-MNIST images, batch 128 per worker, ROUNDS alternating rounds of
# sync_bn = false / true (attack on running statistics, the recipe's default) and sync_bn = true
# with attack_bn_mode = "train-frozen" (every attack step synchronises too); prints training
# img/s (metrics.csv) and the end-of-run communication line of rank 0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/advtrain"
recipe="$root/recipes/fmnist-small-cnn-pgd-at.toml"
rounds="${ROUNDS:-2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
common=(--recipe "$recipe" --epochs 1 --train-limit 2048 --set data.val_size=200
  --set validation.pgd_limit=0 --device cpu --set train.batch_size=128)
rate() { tail -1 "$1/metrics.csv" | cut -d, -f8; }
two() { # two OUT ARGS...: a 2-worker launch on 127.0.0.1
  local out="$1"; shift
  local port=$((20000 + RANDOM % 20000))
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      RUST_LOG=info "$bin" --threads 1 train --out "$out" "$@" >"$out.log$r" 2>&1 &
  done
  wait
}
for i in $(seq "$rounds"); do
  for cfg in off on frozen; do
    extra=()
    case $cfg in
      on) extra=(--set distributed.sync_bn=true) ;;
      frozen) extra=(--set distributed.sync_bn=true --set train.attack_bn_mode=\"train-frozen\") ;;
    esac
    two "$work/$cfg$i" "${common[@]}" "${extra[@]}"
    echo "round $i sync_bn=$cfg: $(rate "$work/$cfg$i") img/s | $(grep -o 'distributed: [0-9]* collectives.*' "$work/$cfg$i.log0")"
  done
done
