#!/usr/bin/env python3
"""Markdown for docs/RESULTS.md from the issue-4 runs (runs/norm): per experiment, clean / PGD-20 /
APGD-CE per branch (mean over seeds and each seed), the E9 swap matrices and the E8 domain gap.
Usage: python3 scripts/experiments/norm_results.py [runs/norm]"""
import json, pathlib, re, sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/norm")
ev = {}
for j in sorted(root.glob("*-seed*/eval/*.json")):
    m = re.match(r"(.+)-seed(\d+)$", j.parent.parent.name)
    if not m:
        continue
    name, seed = m.group(1), int(m.group(2))
    if j.stem.startswith("soup-"):
        continue
    attack = "apgd-ce" if j.stem.endswith("apgd-ce") else "pgd"
    d = json.loads(j.read_text())
    e = ev.setdefault((name, d["route"]), {}).setdefault(seed, {})
    e["clean"] = d["clean_accuracy"]
    e[attack] = d["robust_accuracy"]


def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    mean = 100 * sum(vals) / len(vals)
    return f"**{mean:.1f}** ({' / '.join(f'{100 * v:.1f}' for v in vals)})" if len(vals) > 1 else f"{100 * vals[0]:.1f}"


def table(title, names):
    print(f"\n{title}\n")
    print("| recipe | branch (route) | seeds | clean | PGD-20 | APGD-CE |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for (n, route), r in sorted(ev.items()):
            if n != name:
                continue
            seeds = sorted(r)
            c = lambda k: cell([r[s].get(k) for s in seeds])
            print(f"| {name} | {route} | {','.join(map(str, seeds))} | {c('clean')} | {c('pgd')} | {c('apgd-ce')} |")


table("E7 / E10 (hybrid, every image used clean and adversarially, a = 0.5)", ["e7-single-cat", "e7-single-separate", "e7-dual-bn", "e7-dual-ap", "e7-dual-ns", "e10-dual-linear", "e7-cross-bn", "advprop"])
table("E1 / E3 / E5 (clean fraction r mixed into one batch)", ["e1-single-r0", "e1-single-r25", "e1-single-r50", "e3-mbn-r50", "e5-group-r0", "e5-group-r50"])

print("\nE10 adapter interpolation (Dual-AP, AP = w * AP_adv + (1 - w) * AP_clean; clean / PGD-20, n = 500)\n")
soups = {}
for j in sorted(root.glob("e7-dual-ap-seed*/eval/soup-*-pgd.json")):
    d = json.loads(j.read_text())
    soups.setdefault(d["soup"], []).append((j.parent.parent.name, d["clean_accuracy"], d["robust_accuracy"]))
if soups:
    print("| w | clean | PGD-20 |")
    print("|---|---|---|")
    for w in sorted(soups):
        v = soups[w]
        print(f"| {w} | {cell([c for _, c, _ in v])} | {cell([r for _, _, r in v])} |")

print("\nE9 swap matrix (clean / PGD-20 robust accuracy, n = 500)\n")
for f in sorted(root.glob("e7-dual-bn-seed*/analysis/bn-swap.json")):
    d = json.loads(f.read_text())
    print(f"{f.parent.parent.name} (re-estimated = NS_clean re-estimated on {d['reestimate']['batches']} x {d['reestimate']['batch_size']} clean training images):\n")
    print("| NS \\ AP | AP adv | AP clean |")
    print("|---|---|---|")
    for ns in ["adv", "clean", "re-estimated"]:
        row = []
        for ap in ["adv", "clean"]:
            c = next(c for c in d["cells"] if c["ns"] == ns and c["ap"] == ap)
            row.append(f"{100 * c['clean_accuracy']:.1f} / {100 * c['robust_accuracy']:.1f}")
        print(f"| NS {ns} | {row[0]} | {row[1]} |")
    print()

print("\nbn-divergence of the Dual-BN models (mean over layers, W1 between branches)\n")
print("| run | mu | sigma | gamma | beta |")
print("|---|---|---|---|---|")
for f in sorted(root.glob("e7-dual-bn-seed*/analysis/bn-divergence.json")):
    s = json.loads(f.read_text())["summary"]
    print(f"| {f.parent.parent.name} | {s['mu']['w1']:.4f} | {s['sigma']['w1']:.4f} | {s['gamma']['w1']:.4f} | {s['beta']['w1']:.4f} |")

print("\nE8 domain gap (W1 to the clean running statistics, per BN layer)\n")
for f in sorted(root.glob("e8-clean-seed*/analysis*/domain-gap.json")):
    d = json.loads(f.read_text())
    print(f"{f.parent.parent.name} ({f.parent.name}), eps {d['eps']}, n {d['n']} (batch accuracy clean {100 * d['clean_batch_accuracy']:.1f}%, adv {100 * d['adv_batch_accuracy']:.1f}%, noise {100 * d['noise_batch_accuracy']:.1f}%):\n")
    print("| layer | adv mu | noise mu | clean mu | adv sigma | noise sigma | clean sigma |")
    print("|---|---|---|---|---|---|---|")
    for l in d["layers"]:
        print(f"| {l['layer']} | {l['adv_mu']:.4f} | {l['noise_mu']:.4f} | {l['clean_mu']:.4f} | {l['adv_sigma']:.4f} | {l['noise_sigma']:.4f} | {l['clean_sigma']:.4f} |")
    print()
