#!/usr/bin/env bash
# Evaluation benchmark, side by side in one run: `advtrain eval` and its PyTorch twin
# (bench/pytorch_eval.py, with the reference AutoAttack) on the same checkpoint, the first N test
# images, eps, threads and CPU. Prints images/s of PGD-20, APGD-CE and AutoAttack-standard for
# both, the ratio advtrain/pytorch and both robust accuracies.
#   CKPT=runs/fmnist-full-seed0/checkpoints/best.safetensors AUTOATTACK_DIR=/path/to/auto-attack \
#   N=100 bench/eval.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/env.sh
ckpt="${CKPT:?set CKPT to an advtrain small-cnn checkpoint (.safetensors)}"
: "${AUTOATTACK_DIR:?set AUTOATTACK_DIR to a checkout of fra31/auto-attack}"
n="${N:-100}"; eps="${EPS:-0.1}"; threads="${THREADS:-2}"; attacks="${ATTACKS:-pgd-20,apgd-ce,autoattack}"
out="$(mktemp)"; tmp="$(mktemp -d)"
for attack in ${attacks//,/ }; do
  case "$attack" in
    pgd-20) args=(--attack pgd --steps 20) ;;
    apgd-ce) args=(--attack apgd-ce) ;;
    autoattack) args=(--attack autoattack --preset standard --state "$tmp/aa.state.json") ;;
    *) echo "unknown attack $attack"; exit 2 ;;
  esac
  target/release/advtrain --threads "$threads" eval --checkpoint "$ckpt" "${args[@]}" --eps "$eps" \
    --test-limit "$n" --device cpu --json "$tmp/$attack.json" >/dev/null 2>>"$tmp/advtrain.log"
  python - "$tmp/$attack.json" "$attack" "$n" "$threads" <<'PY' | tee -a "$out"
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[3])
print(json.dumps({"impl": "advtrain", "attack": sys.argv[2], "n": n, "threads": int(sys.argv[4]),
                  "elapsed_s": r["elapsed_s"], "images_per_s": n / r["elapsed_s"],
                  "clean_accuracy": r["clean_accuracy"], "robust_accuracy": r["robust_accuracy"]}))
PY
done
OMP_NUM_THREADS="$threads" python bench/pytorch_eval.py --checkpoint "$ckpt" --n "$n" --eps "$eps" \
  --threads "$threads" --attacks "$attacks" --autoattack-dir "$AUTOATTACK_DIR" | grep '^{' | tee -a "$out"
python - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["attack"], {})[r["impl"]] = r
print(f"{'attack':<12}{'advtrain img/s':>16}{'pytorch img/s':>15}{'ratio':>7}{'robust ours':>13}{'robust ref':>12}")
for k, d in by.items():
    o, p = d["advtrain"], d["pytorch"]
    print(f"{k:<12}{o['images_per_s']:>16.2f}{p['images_per_s']:>15.2f}{o['images_per_s'] / p['images_per_s']:>7.2f}"
          f"{100 * o['robust_accuracy']:>12.1f}%{100 * p['robust_accuracy']:>11.1f}%")
PY
rm -rf "$out" "$tmp"
