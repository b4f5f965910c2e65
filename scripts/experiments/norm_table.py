#!/usr/bin/env python3
"""Markdown tables of the issue-4 experiments from runs/norm/<recipe>-seed<s>/eval/*.json
(written by scripts/experiments/norm.sh): clean / PGD-20 / APGD-CE per branch, per seed and the
mean over seeds. Usage: python3 scripts/experiments/norm_table.py [runs/norm]"""
import json, pathlib, re, sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/norm")
rows = {}
for j in sorted(root.glob("*-seed*/eval/*.json")):
    m = re.match(r"(.+)-seed(\d+)$", j.parent.parent.name)
    if not m:
        continue
    name, seed = m.group(1), int(m.group(2))
    tag, attack = j.stem.rsplit("-", 1) if not j.stem.endswith("apgd-ce") else (j.stem[: -len("-apgd-ce")], "apgd-ce")
    d = json.loads(j.read_text())
    r = rows.setdefault((name, d["route"]), {})
    r.setdefault(seed, {})["clean"] = d["clean_accuracy"]
    r[seed][attack] = d["robust_accuracy"]
    r[seed]["n"] = d["n"]

def fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    per = " / ".join(f"{100 * v:.1f}" for v in vals)
    mean = 100 * sum(vals) / len(vals)
    return f"{mean:.1f} ({per})" if len(vals) > 1 else per

print("| recipe | branch (route) | seeds | clean | PGD-20 | APGD-CE |")
print("|---|---|---|---|---|---|")
for (name, route), r in sorted(rows.items()):
    seeds = sorted(r)
    col = lambda k: fmt([r[s].get(k) for s in seeds])
    print(f"| {name} | {route} | {','.join(map(str, seeds))} | {col('clean')} | {col('pgd')} | {col('apgd-ce')} |")
