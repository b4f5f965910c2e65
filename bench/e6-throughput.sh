#!/usr/bin/env bash
# E6 (docs/RESULTS.md): training throughput per resnet-cifar depth, PGD-AT (PGD-5) and standard
# training, one torch thread, CPU, batch 128: one epoch of 1,024 training images per run (the
# first 8 batches; 500 validation images), images_per_s from metrics.csv (training only: validation excluded).
# Pause other jobs first (an idle machine); usage: bench/e6-throughput.sh [BINARY] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:-target/release/advtrain}; rounds=${2:-2}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
printf "| depth | objective | round | train img/s |\n|---|---|---|---|\n"
for r in $(seq 1 "$rounds"); do for obj in pgd-at standard; do for D in 8 20 32 56 110; do
  out=$tmp/$obj-$D-$r
  "$A" --threads 1 train --recipe recipes/fmnist/e6-resnet-cifar-$obj.toml --set model.depth=$D \
    --set data.train_limit=1024 --set data.val_size=500 --set train.epochs=1 --set validation.pgd_limit=0 --set device='"cpu"' \
    --out "$out" >"$out.log" 2>&1 || { echo "failed: see $out.log"; cat "$out.log" | tail -5; exit 1; }
  ips=$(tail -n 1 "$out/metrics.csv" | cut -d, -f8)
  echo "| $D | $obj | $r | $ips |"
done; done; done
