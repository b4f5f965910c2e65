#!/usr/bin/env bash
# Side-by-side benchmark in one run: advtrain and the PyTorch eager twin, same models, batch,
# threads (default 2) and device. Prints both JSON lines per model and the ratio advtrain/pytorch.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/env.sh
threads="${THREADS:-2}"; batch="${BATCH:-128}"; iters="${ITERS:-10}"; device="${DEVICE:-cpu}"
models="${MODELS:-small-cnn,preact-resnet18}"
out="$(mktemp)"
target/release/advtrain --threads "$threads" bench --models "$models" --batch-size "$batch" --iters "$iters" --device "$device" | tee -a "$out"
OMP_NUM_THREADS="$threads" python bench/pytorch_pgd_at.py --models "$models" --batch-size "$batch" --iters "$iters" --threads "$threads" --device "$device" | tee -a "$out"
python - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["model"], {})[r["impl"]] = r["images_per_s"]
print(f"{'model':<18}{'advtrain img/s':>16}{'pytorch img/s':>16}{'ratio':>8}")
for m, d in by.items():
    print(f"{m:<18}{d['advtrain']:>16.1f}{d['pytorch']:>16.1f}{d['advtrain'] / d['pytorch']:>8.2f}")
PY
rm -f "$out"
