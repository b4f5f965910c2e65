#!/usr/bin/env python3
"""Tables of the bf16 validation (scripts/experiments/precision.sh) for docs/RESULTS.md.

  python3 scripts/experiments/precision_results.py [runs/precision]

(a) per training variant and seed: clean, PGD-20 (first N test images) and AutoAttack (first
N_AA) accuracy, all evaluated with fp32 attacks, and the difference to the fp32-trained model of
the same seed; (b) the fp32-trained models attacked with bf16 attack generation vs fp32."""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "runs/precision"


def load(run, tag):
    p = os.path.join(root, run, "eval", tag + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def diff(a, b):
    return "-" if a is None or b is None else f"{100 * (a - b):+.1f}"


def accs(run, prefix):
    pgd, aa = load(run, prefix + "-pgd20"), load(run, prefix + "-autoattack")
    return (pgd and pgd["clean_accuracy"], pgd and pgd["robust_accuracy"],
            aa and aa["clean_accuracy"], aa and aa["robust_accuracy"], pgd and pgd["n"], aa and aa["n"])


seeds = sorted({d.rsplit("-seed", 1)[1] for d in os.listdir(root) if "-seed" in d and os.path.isdir(os.path.join(root, d))})
print("(a) training precision, evaluated with fp32 attacks\n")
print("| variant | seed | clean (N) | PGD-20 (N) | AA clean (N_AA) | AutoAttack (N_AA) | d clean | d PGD-20 | d AA |")
print("|---|---|---|---|---|---|---|---|---|")
for variant in ["fp32", "bf16-attack", "bf16-all"]:
    for s in seeds:
        run = f"{variant}-seed{s}"
        c, p, ac, a, n, naa = accs(run, "fp32")
        rc, rp, _, ra, _, _ = accs(f"fp32-seed{s}", "fp32")
        print(f"| {variant} | {s} | {pct(c)} | {pct(p)} | {pct(ac)} | {pct(a)} | {diff(c, rc)} | {diff(p, rp)} | {diff(a, ra)} |")
ref = [accs(f"fp32-seed{s}", "fp32") for s in seeds]
print(f"\nN = {ref[0][4] if ref else '-'}, N_AA = {ref[0][5] if ref else '-'}\n")
print("(b) the fp32-trained models attacked with bf16 vs fp32 attack generation\n")
print("| seed | clean fp32 / bf16 | PGD-20 fp32 / bf16 | d PGD-20 | AutoAttack fp32 / bf16 | d AA | AA time fp32 / bf16 (s) |")
print("|---|---|---|---|---|---|---|")
for s in seeds:
    run = f"fp32-seed{s}"
    f32p, b16p = load(run, "fp32-pgd20"), load(run, "bf16-pgd20")
    f32a, b16a = load(run, "fp32-autoattack"), load(run, "bf16-autoattack")
    g = lambda r, k: r and r[k]
    print(f"| {s} | {pct(g(f32p, 'clean_accuracy'))} / {pct(g(b16p, 'clean_accuracy'))} | "
          f"{pct(g(f32p, 'robust_accuracy'))} / {pct(g(b16p, 'robust_accuracy'))} | "
          f"{diff(g(b16p, 'robust_accuracy'), g(f32p, 'robust_accuracy'))} | "
          f"{pct(g(f32a, 'robust_accuracy'))} / {pct(g(b16a, 'robust_accuracy'))} | "
          f"{diff(g(b16a, 'robust_accuracy'), g(f32a, 'robust_accuracy'))} | "
          f"{'-' if not f32a else round(f32a['elapsed_s'])} / {'-' if not b16a else round(b16a['elapsed_s'])} |")
