#!/usr/bin/env python3
"""Summarises one scripts/bench-train.sh invocation: reads rustworthy's report.json and the
JSON lines of the PyTorch reference runs, prints the comparison table, and writes
OUT/table.md and OUT/results.json.

    bench_train.py --out DIR --rust DIR/rustworthy/report.json \
        --ref DIR/pytorch-tensor.json --ref DIR/pytorch-dataloader.json --settings '{...}'

A run that failed is passed as a missing or empty file; it appears in the table as "failed"
and the exit status is 1.
"""

import argparse
import json
import os
import platform
import subprocess
import sys


def load_json(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text:
        return None
    # The reference prints one JSON line; take the last one that parses.
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def best_epoch(history):
    secs = [h["seconds"] for h in history or [] if h.get("seconds") is not None]
    return min(secs) if secs else None


def rust_row(report):
    epochs = report["config"]["train"]["epochs"]
    t = report["timings_s"]["train"]
    return {
        "implementation": "rustworthy",
        "train_seconds": t,
        "seconds_per_epoch": t / epochs,
        "best_epoch_seconds": best_epoch(report.get("history")),
        "test_accuracy": report["metrics"]["test_accuracy"],
        "train_accuracy": report["metrics"].get("train_accuracy"),
        "device": report.get("device"),
        "threads": report.get("versions", {}).get("torch_threads"),
    }


def ref_row(result):
    s = result["settings"]
    return {
        "implementation": result["implementation"],
        "train_seconds": result["train_seconds"],
        "seconds_per_epoch": result["seconds_per_epoch"],
        "best_epoch_seconds": best_epoch(result.get("history")),
        "test_accuracy": result["test_accuracy"],
        "train_accuracy": result.get("train_accuracy"),
        "device": s.get("device"),
        "threads": s.get("threads"),
    }


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rust", required=True)
    ap.add_argument("--ref", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--contention", default=None,
                    help="JSON lines {name, wall_s, cpu_stall_pct} written by bench-train.sh")
    args = ap.parse_args()

    settings = json.loads(args.settings)
    rows, raw, failed = [], {}, []
    stall = {}
    if args.contention and os.path.exists(args.contention):
        with open(args.contention) as f:
            for line in f:
                if line.strip():
                    c = json.loads(line)
                    stall[c["name"]] = c.get("cpu_stall_pct")

    report = load_json(args.rust)
    raw["rustworthy"] = report
    if report is None:
        failed.append("rustworthy")
        rows.append({"implementation": "rustworthy", "failed": True})
        rust_t = rust_best = None
    else:
        r = rust_row(report)
        rows.append(r)
        rust_t = r["train_seconds"]
        rust_best = r["best_epoch_seconds"]
    for item in args.ref:
        name, path = item.split("=", 1)
        result = load_json(path)
        raw[name] = result
        if result is None:
            failed.append(name)
            rows.append({"implementation": name, "failed": True})
            continue
        r = ref_row(result)
        if rust_t:
            r["ratio"] = r["train_seconds"] / rust_t
        if rust_best and r["best_epoch_seconds"]:
            r["ratio_best_epoch"] = r["best_epoch_seconds"] / rust_best
        rows.append(r)

    torch_version = next((v["settings"]["torch"] for v in raw.values()
                          if v and "settings" in v), None)
    machine = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch": torch_version,
        "libtorch_of_rustworthy": (report or {}).get("versions", {}).get("libtorch"),
        "git_commit": git_commit(),
    }

    for r in rows:
        r["cpu_stall_pct"] = stall.get(r["implementation"])
    header = ["implementation", "train s", "s/epoch", "test acc %", "ratio (ref/rustworthy)",
              "best epoch s", "ratio (best epoch)", "cpu stall %"]
    table = []
    for r in rows:
        if r.get("failed"):
            table.append([r["implementation"], "failed"] + ["-"] * (len(header) - 2))
            continue
        ratio, ratio_best = r.get("ratio"), r.get("ratio_best_epoch")
        table.append([
            r["implementation"],
            fmt(r["train_seconds"], ".2f"),
            fmt(r["seconds_per_epoch"], ".2f"),
            fmt(r["test_accuracy"], ".2f"),
            "-" if ratio is None else f"{ratio:.2f}x",
            fmt(r["best_epoch_seconds"], ".2f"),
            "-" if ratio_best is None else f"{ratio_best:.2f}x",
            fmt(r["cpu_stall_pct"], ".0f"),
        ])

    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    desc = ", ".join(f"{k} {v}" for k, v in settings.items())
    print(f"\n{desc}")
    print(f"machine: {machine['nproc']} cpus, {machine['cpu_model']}, torch {torch_version}")
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in table:
        print(line(row))
    print("ratio > 1: rustworthy trains faster than that reference pipeline; cpu stall %: share "
          "of the run's wall time in which some task waited for a CPU (high = disturbed)")

    md = [f"Settings: {desc}", "",
          f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), torch {torch_version}", "",
          "| " + " | ".join(header) + " |",
          "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in table]
    md += ["", "ratio = reference train seconds / rustworthy train seconds "
           "(> 1: rustworthy is faster); best epoch = fastest single epoch of the run; "
           "cpu stall % = share of the run's wall time in which some task waited for a CPU "
           "(/proc/pressure/cpu; high values mean the timing was disturbed)", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"settings": settings, "machine": machine, "rows": rows, "raw": raw}, f,
                  indent=2)
        f.write("\n")
    print(f"wrote {os.path.join(args.out, 'table.md')} and results.json")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
