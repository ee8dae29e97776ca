#!/usr/bin/env python3
"""Rows of scripts/gpu-bench.sh: reads each phase's own result files and appends one JSON line
per comparison to ROWS; `show` prints them as one Markdown table of ratios.

    gpu_table.py add ROWS train-step DIR       (rustworthy.json, pytorch-eager/compile.json)
    gpu_table.py add ROWS lenet-epoch DIR      (scripts/bench-train.sh results.json)
    gpu_table.py add ROWS attack DIR LABEL     (scripts/bench_attack.py results.json)
    gpu_table.py add ROWS zo DIR               (scripts/bench-zo.sh results.json)
    gpu_table.py add ROWS unlearn DIR PRESET   (bench unlearn results.json, retrain-ref.json,
                                                official/results.json)
    gpu_table.py skip ROWS NAME WHY
    gpu_table.py show ROWS

A ratio is the reference's time over rustworthy's (above 1: rustworthy is faster). Peak
throughput for the share of peak is the vendor's dense figure for the device named in the
results (bf16 tensor cores for bf16; TF32 tensor cores for fp32, which cuDNN uses for
convolutions by default on both sides).
"""

import json
import os
import sys

# Dense peak TFLOP/s (vendor data sheets, SXM parts): (bf16, tf32).
PEAKS = {"H100": (989.4, 494.7), "H200": (989.4, 494.7), "A100": (312.0, 156.0)}


def peak(device, precision):
    for name, (bf16, tf32) in PEAKS.items():
        if name in device:
            return bf16 if precision == "bf16" else tf32
    return None


def load(path):
    with open(path) as f:
        return json.load(f)


def add_train_step(d):
    rw = load(os.path.join(d, "rustworthy.json"))
    b = rw["bench"]
    name = f"{b['spec']['arch']} step, batch {b['batch']}, {b['precision']}"
    if b["channels_last"]:
        name += ", channels-last"
    out = []
    for mode, bar in (("eager", 1.3), ("compile", None)):
        p = os.path.join(d, f"pytorch-{mode}.json")
        if not os.path.exists(p):
            continue
        pt = load(p)
        row = {
            "bench": name,
            "reference": f"PyTorch {pt['torch']} {mode}",
            "rustworthy": f"{rw['median_s'] * 1e3:.2f} ms",
            "reference_value": f"{pt['median_s'] * 1e3:.2f} ms",
            "ratio": pt["median_s"] / rw["median_s"],
            "bar": bar,
            "device": rw["device"],
            "first_loss": [rw["first_loss_eval"], pt["first_loss_eval"]],
        }
        flops = pt.get("flops_per_step")
        if flops:
            tf = flops / rw["median_s"] / 1e12
            pk = peak(rw["device"], b["precision"])
            row["note"] = f"rustworthy {tf:.1f} TFLOP/s" + (f" ({tf / pk:.1%} of peak)" if pk else "")
            row["note"] += f"; {mode} {flops / pt['median_s'] / 1e12:.1f} TFLOP/s"
        out.append(row)
    return out


def add_lenet_epoch(d):
    r = load(os.path.join(d, "results.json"))
    rows = {x["implementation"]: x for x in r["rows"]}
    rw = rows["rustworthy"]
    out = []
    for ref, bar in (("pytorch-tensor", 2.0), ("pytorch-dataloader", None)):
        if ref not in rows:
            continue
        x = rows[ref]
        out.append({
            "bench": f"LeNet epoch on Fashion-MNIST ({r['settings']['epochs']} epochs)",
            "reference": ref,
            "rustworthy": f"{rw['best_epoch_seconds']:.2f} s/epoch",
            "reference_value": f"{x['best_epoch_seconds']:.2f} s/epoch",
            "ratio": x["best_epoch_seconds"] / rw["best_epoch_seconds"],
            "bar": bar,
            "device": r["settings"]["device"],
            "note": f"test accuracy {rw['test_accuracy']:.2f} vs {x['test_accuracy']:.2f}",
        })
    return out


def add_attack(d, label):
    r = load(os.path.join(d, "results.json"))
    out = []
    for x in r["results"]:
        eps = x["examples_per_second"]
        acc = x["robust_accuracy"]
        name = {"pgd": "PGD-10", "apgd": "APGD-CE"}.get(x["attack"], x["attack"])
        out.append({
            "bench": f"{name} on {label}, n {x['n']}",
            "reference": f"torchattacks {r['info'].get('torchattacks', '')}".strip(),
            "rustworthy": f"{eps['exact']:.0f} ex/s",
            "reference_value": f"{eps['torchattacks']:.0f} ex/s",
            "ratio": x["ratio_exact"],
            "bar": 1.2,
            "device": r["info"]["device_name"],
            "note": f"robust accuracy {acc['exact']:.1f} vs {acc['torchattacks']:.1f}; "
                    f"with early stopping {x['ratio_default']:.2f}x",
        })
    return out


def add_zo(d):
    r = load(os.path.join(d, "results.json"))
    rw = r["rustworthy"]
    out = []
    for i, ref in enumerate(r["references"]):
        out.append({
            "bench": f"DeepZero CGE on {rw['arch']}, batch {rw['batch']}",
            "reference": ref["impl"],
            "rustworthy": f"{rw['queries_per_s']:.0f} q/s",
            "reference_value": f"{ref['queries_per_s']:.0f} q/s",
            "ratio": rw["queries_per_s"] / ref["queries_per_s"],
            "bar": 5.0 if i == 0 else None,
            "device": rw["device"],
        })
    return out


def add_unlearn(d, preset="fmnist-resnet18-random10"):
    r = load(os.path.join(d, "results.json"))
    ours = {x["method"]: x["metrics"]["rte_s"] for x in r["results"]}
    out = []
    ref_path = os.path.join(d, "retrain-ref.json")
    if "retrain" in ours and os.path.exists(ref_path):
        with open(ref_path) as f:
            lines = [ln for ln in f if ln.strip().startswith("{")]
        if lines:
            ref = json.loads(lines[-1])
            out.append({
                "bench": f"unlearn {preset}: retrain",
                "reference": "scripts/ref/train_ref.py (same recipe, retain set)",
                "rustworthy": f"{ours['retrain']:.1f} s",
                "reference_value": f"{ref['train_seconds']:.1f} s",
                "ratio": ref["train_seconds"] / ours["retrain"],
                "bar": 2.0,
                "device": ref.get("device", ""),
            })
    off = os.path.join(d, "official", "results.json")
    official = {}
    if os.path.exists(off):
        for run in load(off).get("runs", []):
            official.setdefault(run["method"], run["seconds"])
    for m, s in ours.items():
        if m == "retrain":
            continue
        row = {
            "bench": f"unlearn {preset}: {m}",
            "reference": "official Unlearn-Saliency code" if m in official else "none run",
            "rustworthy": f"{s:.1f} s",
            "reference_value": f"{official[m]:.1f} s" if m in official else "-",
            "ratio": official[m] / s if m in official else None,
            "bar": None,
        }
        out.append(row)
    return out


def show(rows_path):
    rows = [json.loads(ln) for ln in open(rows_path) if ln.strip()]
    head = "| comparison | reference | rustworthy | reference | ratio | bar | met | note |"
    lines = [head, "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['bench']} | - | - | - | not run | - | - | {r['skipped']} |")
            continue
        ratio = r.get("ratio")
        bar = r.get("bar")
        met = "-" if bar is None or ratio is None else ("yes" if ratio >= bar else "no")
        lines.append(
            f"| {r['bench']} | {r['reference']} | {r['rustworthy']} | {r['reference_value']} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | {'-' if bar is None else f'{bar}x'} | "
            f"{met} | {r.get('note', '')} |"
        )
    devices = sorted({r["device"] for r in rows if r.get("device")})
    print("devices: " + (", ".join(devices) or "-"))
    print("ratio = reference time / rustworthy time (above 1: rustworthy is faster)\n")
    print("\n".join(lines))


def main():
    cmd = sys.argv[1]
    if cmd == "show":
        show(sys.argv[2])
        return
    rows_path = sys.argv[2]
    if cmd == "skip":
        new = [{"bench": sys.argv[3], "skipped": sys.argv[4]}]
    else:
        kind, args = sys.argv[3], sys.argv[4:]
        fn = {
            "train-step": add_train_step,
            "lenet-epoch": add_lenet_epoch,
            "attack": add_attack,
            "zo": add_zo,
            "unlearn": add_unlearn,
        }[kind]
        new = fn(*args)
        if kind == "train-step":
            # A later add (torch.compile) repeats the eager row: keep one row per comparison.
            old = [json.loads(ln) for ln in open(rows_path) if ln.strip()]
            keys = {(r["bench"], r.get("reference")) for r in new}
            old = [r for r in old if (r["bench"], r.get("reference")) not in keys]
            with open(rows_path, "w") as f:
                for r in old:
                    f.write(json.dumps(r) + "\n")
    with open(rows_path, "a") as f:
        for r in new:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
