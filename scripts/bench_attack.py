#!/usr/bin/env python3
"""Attack throughput benchmark: rustworthy against torchattacks on the same model, data, batch
size, device and thread count, measured in one run.

For each attack (PGD-10 l_inf, step eps/4, random start; APGD-CE l_inf, 100 steps), the same
first N Fashion-MNIST test images are attacked in batches by
  * torchattacks (the model rebuilt in PyTorch by scripts/ref/models.py from the same
    safetensors weights; eval mode; inputs in [0, 1], normalization inside the model), and
  * `rustworthy attack` twice: `exact` does the same work as torchattacks (every sample,
    every step: --attack-all --no-early-stop), `default` stops on samples once fooled.
Only the attack loop is timed on both sides, after a warm-up run on one batch (rustworthy:
`--warmup` and the `attack` timing of its report, which also includes its clean forward pass,
the verification forward pass and per-sample statistics; torchattacks: the calls to the attack,
synchronized on CUDA). Each configuration runs REPEATS times, alternating; the
median is reported. Prints a table with examples/s and the ratio rustworthy/torchattacks and
writes OUT/results.json.

Usage: scripts/bench_attack.py --model runs/.../model.safetensors [--n 1000] [--batch-size 500]
         [--device cpu|cuda] [--threads N] [--repeats 3] [--eps 0.1] [--out runs/bench-attack]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "ref"))
from models import build_model  # noqa: E402
from train_ref import find_data_dir, load_fashion_mnist, to_unit_float  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_torchattacks(atk_name, model, x, y, eps, batch, device):
    import torchattacks as ta

    if atk_name == "pgd":
        atk = ta.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)
    else:
        atk = ta.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", rho=0.75)
    torch.manual_seed(0)
    # Warm-up on one batch (allocator, cuDNN autotuning).
    atk(x[:batch], y[:batch])
    sync(device)
    t0 = time.perf_counter()
    robust = 0
    for i in range(0, len(x), batch):
        xa = atk(x[i:i + batch], y[i:i + batch])
        with torch.no_grad():
            robust += (model(xa).argmax(1) == y[i:i + batch]).sum().item()
    sync(device)
    return time.perf_counter() - t0, 100.0 * robust / len(x)


def run_rustworthy(binary, atk_name, args, exact, out):
    cmd = [binary, "attack", "--model", args.model, "--attack", atk_name, "--eps", str(args.eps),
           "--n", str(args.n), "--batch-size", str(args.batch_size), "--device", args.device,
           "--threads", str(args.threads), "--out", str(out), "--progress", "quiet", "--warmup"]
    cmd += ["--steps", "10" if atk_name == "pgd" else "100"]
    if exact:
        # The same work as torchattacks: its PGD attacks every input, its APGD (AutoAttack's
        # code) only the correctly classified ones; neither stops early.
        cmd += ["--no-early-stop"] + (["--attack-all"] if atk_name == "pgd" else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rep = json.loads((out / "report.json").read_text())
    return rep["timings_s"]["attack"], rep["metrics"]["robust_accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--attacks", default="pgd,apgd")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="runs/bench-attack")
    ap.add_argument("--bin", default=os.environ.get("RUSTWORTHY_BIN", "target/release/rustworthy"))
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    side = Path(args.model).with_suffix("").with_suffix(".json")
    if not side.exists():
        side = Path(args.model).parent / "model.json"
    spec = json.loads(side.read_text())["model_spec"]
    model = build_model(spec)
    from safetensors.torch import load_file
    model.load_state_dict(load_file(args.model), strict=False)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    xte, yte = load_fashion_mnist(find_data_dir(args.data_dir))["test"]
    x = to_unit_float(xte[: args.n]).to(device)
    y = yte[: args.n].to(device)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item() * 100

    results = []
    for atk in args.attacks.split(","):
        times = {"torchattacks": [], "exact": [], "default": []}
        accs = {}
        for r in range(args.repeats):
            t, a = run_torchattacks(atk, model, x, y, args.eps, args.batch_size, device)
            times["torchattacks"].append(t)
            accs["torchattacks"] = a
            for mode, exact in (("exact", True), ("default", False)):
                t, a = run_rustworthy(args.bin, atk, args, exact, out / f"{atk}-{mode}")
                times[mode].append(t)
                accs[mode] = a
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "attack": atk, "n": args.n, "batch_size": args.batch_size, "device": args.device,
            "clean_accuracy": clean, "seconds": times, "median_seconds": med,
            "examples_per_second": {k: args.n / v for k, v in med.items()},
            "robust_accuracy": accs,
            "ratio_exact": med["torchattacks"] / med["exact"],
            "ratio_default": med["torchattacks"] / med["default"],
        }
        results.append(row)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": args.model, "arch": spec["arch"], "eps": args.eps, "repeats": args.repeats,
    }
    try:
        import torchattacks
        info["torchattacks"] = torchattacks.__version__
    except Exception:  # noqa: BLE001
        pass
    (out / "results.json").write_text(json.dumps({"info": info, "results": results}, indent=2))
    print(f"{spec['arch']} on {info['device_name']}, n={args.n}, batch {args.batch_size}, eps {args.eps}, "
          f"clean {clean:.2f}%, torch {info['torch']}, torchattacks {info.get('torchattacks')}")
    print("| attack | torchattacks ex/s | rustworthy exact ex/s | ratio | rustworthy default ex/s | ratio | robust acc (ta / exact / default) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        e = r["examples_per_second"]
        a = r["robust_accuracy"]
        print(f"| {r['attack']} | {e['torchattacks']:.0f} | {e['exact']:.0f} | {r['ratio_exact']:.2f}x | "
              f"{e['default']:.0f} | {r['ratio_default']:.2f}x | {a['torchattacks']:.1f} / {a['exact']:.1f} / {a['default']:.1f} |")


if __name__ == "__main__":
    main()
