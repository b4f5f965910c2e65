#!/usr/bin/env bash
# Side-by-side benchmark in one run: a thin wrapper around `advtrain bench`, which times each part
# (PGD-10 AT step, PGD-20, AutoAttack-standard) in-process, then its PyTorch eager twin
# bench/pytorch_bench.py on the same weights, points, batch, threads and device, and prints
# images/s of both, the ratio advtrain/PyTorch and GFLOP/s next to the measured fp32 GEMM rate.
# Settings (environment, defaults in brackets):
#   THREADS [2]  BATCH [128]  ITERS [10]  WARMUP [2]  DEVICE [cpu]  PARTS [at,pgd20,autoattack]
#   N [100] points for pgd20/autoattack   REPEAT [1] rounds per part (median reported)
#   MODELS [small-cnn,preact-resnet18] fresh models on random points, or
#   CKPT   a trained checkpoint (its test images; use one for reported AutoAttack figures)
#   AUTOATTACK_DIR  checkout of fra31/auto-attack (without it the twin skips autoattack)
#   JSON   write the full report there
# Further arguments go to `advtrain bench` (e.g. --channels-last, --no-pytorch).
#   CKPT=runs/fmnist-full-seed0/checkpoints/best.safetensors AUTOATTACK_DIR=/tmp/aa bench/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/env.sh
args=(--batch-size "${BATCH:-128}" --iters "${ITERS:-10}" --warmup "${WARMUP:-2}"
  --device "${DEVICE:-cpu}" --parts "${PARTS:-at,pgd20,autoattack}" --n "${N:-100}"
  --repeat "${REPEAT:-1}")
if [[ -n "${CKPT:-}" ]]; then
  args+=(--checkpoint "$CKPT")
else
  args+=(--models "${MODELS:-small-cnn,preact-resnet18}")
fi
if [[ -n "${JSON:-}" ]]; then
  args+=(--json "$JSON")
fi
exec target/release/advtrain --threads "${THREADS:-2}" bench "${args[@]}" "$@"
