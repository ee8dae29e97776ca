#!/usr/bin/env python3
"""Summarizes scripts/robust-results.sh runs as a Markdown table (reads the reports only)."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/robust")
rows = []
for d in sorted(out.glob("eps*")):
    rep = d / "report.json"
    ev = d / "robust-eval" / "report.json"
    if not rep.exists() or not ev.exists():
        continue
    r = json.loads(rep.read_text())
    e = json.loads(ev.read_text())
    m = e["metrics"]
    hist = r.get("history", [])
    pgd_hist = [h.get("extra", {}).get("val_pgd_accuracy") for h in hist]
    co = r["metrics"].get("catastrophic_overfitting_epochs") or []
    ens = {s["attack"]: s["robust_accuracy"] for s in m["ensemble"]}
    rows.append([
        d.name,
        f"{m['clean_accuracy']:.2f}",
        f"{m['fgsm']['robust_accuracy']:.2f}",
        f"{m['pgd']['robust_accuracy']:.2f}",
        f"{m['ensemble_accuracy']:.2f}",
        f"{m['worst_case_accuracy']:.2f}",
        " ".join("-" if p is None else f"{p:.0f}" for p in pgd_hist),
        ",".join(map(str, co)) or "-",
        f"{r['timings_s']['train']:.0f}",
        "; ".join(m["flags"]) or "-",
    ])
head = ["run", "clean", "FGSM", "PGD-50x10", "ensemble", "worst case",
        "monitor PGD-10 by epoch", "CO epochs", "train s", "flags"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for r in rows:
    print("| " + " | ".join(r) + " |")
