#!/usr/bin/env bash
# E13 (docs/RESULTS.md "Training objectives"): gradient conflict between the classification terms
# (clean-ce, adv-ce) and the two invariance directions (dist-sg = Dist(sg z', z), arat-asym =
# 1 - cos(h(z'), sg z)) at each run's ARAT hooks, one batch of N test images, PGD-10 at EPS.
#   scripts/experiments/grad_conflict.sh RUN_DIR...
# Env: ADVTRAIN (binary, default target/release/advtrain), THREADS (1), N (128), EPS (0.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${ADVTRAIN:-target/release/advtrain}
for run in "$@"; do
  for pair in clean-ce,dist-sg clean-ce,arat-asym adv-ce,dist-sg adv-ce,arat-asym clean-ce,adv-ce; do
    out=$run/analysis/${pair/,/_}
    mkdir -p "$run/analysis"
    [ -f "$out/grad-conflict.json" ] && continue
    $B --threads "${THREADS:-1}" analyze grad-conflict --run "$run" --terms "$pair" --eps "${EPS:-0.1}" \
      --n "${N:-128}" --seed 0 --device cpu --out "$out" > "$out.log" 2>&1 || { mkdir -p "$out"; echo "failed: see $out.log"; exit 1; }
  done
  echo "done $run"
done
