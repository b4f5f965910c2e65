#!/usr/bin/env bash
# Data-parallel PGD-AT step on this machine (docs/BENCHMARKS.md): 1 worker x 2 threads
# (batch 256) vs 2 workers x 1 thread (batch 128 each, the same global batch), small-cnn PGD-10 on
# 2048 Fashion-MNIST images, ROUNDS alternating rounds; prints training img/s (metrics.csv) and
# the gradient all-reduce per step (the end-of-run line). Then the all-reduce per step of
# PreAct-ResNet-18 (2 workers, 4 steps of 16 images each, PGD-1: communication only matters).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/advtrain"
recipe="$root/recipes/fmnist-small-cnn-pgd-at.toml"
rounds="${ROUNDS:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
common=(--epochs 1 --train-limit 2048 --set data.val_size=200 --set validation.pgd_limit=0 --device cpu)
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
  OMP_NUM_THREADS=2 RUST_LOG=warn "$bin" --threads 2 train --recipe "$recipe" --out "$work/one$i" \
    "${common[@]}" --set train.batch_size=256 >/dev/null 2>&1
  two "$work/two$i" --recipe "$recipe" "${common[@]}" --set train.batch_size=128
  echo "round $i: 1 worker x 2 threads $(rate "$work/one$i") img/s | 2 workers x 1 thread $(rate "$work/two$i") img/s | $(grep -o 'gradient all-reduce per step.*' "$work/two$i.log0")"
done
two "$work/rn" --recipe "$recipe" --epochs 1 --train-limit 128 --set data.val_size=16 \
  --set validation.pgd_limit=0 --set model.name=\"preact-resnet18\" --set train.batch_size=16 \
  --set train.attack.steps=1 --device cpu
echo "preact-resnet18: $(grep -o 'model preact-resnet18 ([0-9]* parameters' "$work/rn.log0") | $(grep -o 'gradient all-reduce per step.*' "$work/rn.log0")"
