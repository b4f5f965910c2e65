#!/usr/bin/env python3
"""Replace the "Multi-domain normalisation" section of docs/RESULTS.md with HEAD + tables
(norm_results.py) + TAIL. Usage: assemble_results.py scripts/experiments/results_head.md scripts/experiments/results_tail.md"""
import pathlib, subprocess, sys

head = pathlib.Path(sys.argv[1]).read_text()
tail = pathlib.Path(sys.argv[2]).read_text()
tables = subprocess.check_output([sys.executable, "scripts/experiments/norm_results.py", "runs/norm"], text=True)
tables = tables.replace("\nE7 / E10", "\n### E7 / E10").replace("\nE1 / E3 / E5", "\n### E1 / E3 / E5")
for t in ["E10 adapter interpolation", "E9 swap matrix", "bn-divergence of the Dual-BN", "E8 domain gap"]:
    tables = tables.replace("\n" + t, "\n### " + t)
res = pathlib.Path("docs/RESULTS.md")
text = res.read_text()
marker = "\n## Multi-domain normalisation"
if marker in text:
    start = text.index(marker)
    nxt = text.find("\n## ", start + 1)
    text = text[:start] + (text[nxt:] if nxt >= 0 else "")
res.write_text(text.rstrip() + "\n" + head + tables + tail)
