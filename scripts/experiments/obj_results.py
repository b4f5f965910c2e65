#!/usr/bin/env python3
"""Markdown for docs/RESULTS.md from the issue-5 runs (runs/obj): per objective clean / PGD-20 /
APGD-CE (mean over seeds and each seed) and training throughput; the E12 ladder; the E13
gradient-conflict numbers (runs/obj/*/analysis/<termA>_<termB>/grad-conflict.json).
With a second folder (runs/mixacm) also the MixACM ladder (E15) with its teacher
(runs/fmnist-teacher/eval).
Usage: python3 scripts/experiments/obj_results.py [runs/obj [runs/mixacm]]"""
import csv, json, pathlib, re, sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/obj")
roots = [root] + [pathlib.Path(a) for a in sys.argv[2:]]
for extra in ["runs/obj-extra", "runs/mixacm-extra"]:  # exploratory runs (e.g. arat-lambda3)
    if pathlib.Path(extra).is_dir():
        roots.append(pathlib.Path(extra))
ev, speed, notes = {}, {}, {}
for run in sorted(r for base in roots for r in base.glob("*-seed*")):
    m = re.match(r"(.+)-seed(\d+)$", run.name)
    if not m or not run.is_dir():
        continue
    name, seed = m.group(1), int(m.group(2))
    for j in sorted(run.glob("eval/*.json")):
        attack = "apgd-ce" if j.stem.endswith("apgd-ce") else "pgd"
        d = json.loads(j.read_text())
        e = ev.setdefault(name, {}).setdefault(seed, {})
        e["clean"] = d["clean_accuracy"]
        e[attack] = d["robust_accuracy"]
        e["route"] = d["route"]
    mcsv = run / "metrics.csv"
    if mcsv.exists():
        rows = list(csv.DictReader(mcsv.open()))
        if rows:
            speed.setdefault(name, {})[seed] = sum(float(r["images_per_s"]) for r in rows) / len(rows)
    summ = run / "summary.json"
    if summ.exists():
        o = json.loads(summ.read_text()).get("overfitting")
        if o:
            notes.setdefault(name, []).append(f"seed {seed}: collapse in epoch {o['epoch']}")


def cell(vals, scale=100, fmt="{:.1f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    mean = scale * sum(vals) / len(vals)
    if len(vals) == 1:
        return fmt.format(mean)
    return f"**{fmt.format(mean)}** ({' / '.join(fmt.format(scale * v) for v in vals)})"


def table(names, labels):
    print("| recipe | what | route | seeds | clean | PGD-20 | APGD-CE | train img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        r = ev.get(name)
        if not r:
            print(f"| {name} | {labels[name]} | - | - | not run | | | |")
            continue
        seeds = sorted(r)
        c = lambda k: cell([r[s].get(k) for s in seeds])
        sp = cell([speed.get(name, {}).get(s) for s in seeds], scale=1, fmt="{:.0f}")
        note = f" ({'; '.join(notes[name])})" if name in notes else ""
        print(f"| {name} | {labels[name]}{note} | {r[seeds[0]]['route']} | {','.join(map(str, seeds))} | {c('clean')} | {c('pgd')} | {c('apgd-ce')} | {sp} |")


OBJ = {
    "pgd-at": "PGD-AT", "trades": "TRADES, beta 6 (separate passes)",
    "trades-mixed": "mixed-batch TRADES (one BN pass over [x'; x])", "trades-dual-bn": "TRADES with Dual BN",
    "mart": "MART, lambda 6", "awp-at": "AWP-AT, gamma 0.01", "fgsm-rs": "FGSM-RS, step 1.25 eps",
    "arat": "ARAT (split BN + SG + predictor), lambda 30",
    "arat-lambda3": "ARAT with lambda 3 (exploratory, --set train.arat.lambda=3.0)",
}
LADDER = {
    "pgd-at": "AT (no clean CE, no invariance)",
    "e12-inv": "+ clean CE + naive invariance 1 - cos(z', z), single BN",
    "e12-inv-sg": "+ stop-gradient (asymmetric), single BN",
    "e12-inv-sg-pred": "+ predictor, single BN",
    "e12-inv-split": "naive invariance + split BN",
    "e12-symmetric": "split BN + SG + predictor, symmetric",
    "arat": "split BN + SG + predictor (ARAT)",
}
print("\n### Objectives (same budget)\n")
table(list(OBJ), OBJ)
print("\n### E12: the ARAT ablation ladder\n")
table(list(LADDER), LADDER)

print("\n### E13: gradient conflict (one batch of 128 test images, PGD-10 at eps 0.1, forwards in train-frozen)\n")
print("| model | term A | term B | cosine (all parameters) | opposite-sign fraction | opposite among both non-zero | shared conv weights: cosine / opposite among both non-zero |")
print("|---|---|---|---|---|---|---|")
for f in sorted(root.glob("*-seed*/analysis/*/grad-conflict.json")):
    d = json.loads(f.read_text())
    o = d["overall"]
    both = o["both_nonzero_fraction"]
    cond = o["opposite_sign_fraction"] / both if both else float("nan")
    convs = [l for l in d["layers"] if l["layer"].startswith("conv")]
    num = sum(l["cosine"] * l["norm_a"] * l["norm_b"] for l in convs if l["cosine"] is not None)
    na = sum(l["norm_a"] ** 2 for l in convs) ** 0.5
    nb = sum(l["norm_b"] ** 2 for l in convs) ** 0.5
    ccos = num / (na * nb) if na and nb else float("nan")
    cb = sum(l["both_nonzero_fraction"] * l["parameters"] for l in convs)
    copp = sum(l["opposite_sign_fraction"] * l["parameters"] for l in convs)
    print(f"| {f.parent.parent.parent.name} | {d['terms'][0]} | {d['terms'][1]} | {o['cosine']:.3f} | {o['opposite_sign_fraction']:.3f} | {cond:.3f} | {ccos:.3f} / {copp / cb if cb else float('nan'):.3f} |")

if len(sys.argv) > 2:
    print("\n### E15: MixACM ladder (students: 20k images x 5 epochs, no attacks)\n")
    t = {}
    for j in sorted(pathlib.Path("runs/fmnist-teacher/eval").glob("*.json")):
        d = json.loads(j.read_text())
        t["clean"] = d["clean_accuracy"]
        t["apgd-ce" if j.stem.endswith("apgd-ce") else "pgd"] = d["robust_accuracy"]
    if t:
        ev["teacher"] = {0: dict(t, route="ns=clean,ap=clean")}
    LAD = {
        "teacher": "PGD-AT teacher (recipes/fmnist-small-cnn-pgd-at.toml, 55k images x 10 epochs, PGD-10)",
        "mixacm-mixup-only": "mixup only", "mixacm-kd-clean": "KD only, clean inputs",
        "mixacm-mixup-kd": "mixup + KD", "mixacm-mixup-kd-acm": "mixup + KD + ACM (full MixACM)",
        "mixacm-acm-only": "ACM without mixup",
        "mixacm-beta20": "full MixACM with beta_acm 20 (exploratory, --set train.mixacm.beta_acm=20.0)",
    }
    table(list(LAD), LAD)
