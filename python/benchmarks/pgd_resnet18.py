#!/usr/bin/env python3
"""PGD-10 from Python on a scripted ResNet-18: rustworthy.attack against torchattacks' PGD, on the
same model, the same images and the same libtorch (one process, same thread count), both sides
warmed up. Prints robust accuracy and seconds of each and the speed ratio.

The model is torchvision's ResNet-18 (first convolution for 1 channel), trained for 2 epochs on
3,000 Fashion-MNIST images as scripts/ref/torchscript_attack_ref.py trains it, then scripted.
Three settings are compared: PGD without random start (deterministic on both sides), with a
random start, and rustworthy's default (random start, each sample stopped at its first
success; torchattacks has no such option).

Usage: .venv/bin/python python/benchmarks/pgd_resnet18.py [--n 256] [--eps 0.1] [--threads 2]
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "ref"))
from torchscript_attack_ref import resnet18, train  # noqa: E402
from train_ref import find_data_dir, load_fashion_mnist, to_unit_float  # noqa: E402

import rustworthy  # noqa: E402


def timed(f, reps):
    f()  # warm-up
    best = float("inf")
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--train", type=int, default=3000)
    args = ap.parse_args()
    import torchattacks as ta

    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(find_data_dir(None))
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    xtr, ytr = to_unit_float(xtr[: args.train]), ytr[: args.train]
    x, y = to_unit_float(xte[: args.n]), yte[: args.n]
    torch.manual_seed(0)
    model = train(resnet18(), xtr, ytr, 2, 0.05, seed=1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(model)
    rw_model = rustworthy.load(scripted, x=x)
    eps = args.eps
    with torch.no_grad():
        clean = 100.0 * (model(x).argmax(1) == y).float().mean().item()

    def ta_pgd(random_start):
        def run():
            torch.manual_seed(0)
            atk = ta.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=random_start)
            xa = atk(x, y)
            with torch.no_grad():
                return 100.0 * (model(xa).argmax(1) == y).float().mean().item()

        return run

    def rw_pgd(random_start, early_stop):
        def run():
            r = rustworthy.attack(
                rw_model, x, y, "pgd", eps=eps, steps=10, step_size=eps / 4,
                random_start=random_start, early_stop=early_stop, batch_size=args.n,
            )
            return r.summary["robust_accuracy"]

        return run

    rows = []
    for name, ta_f, rw_f in (
        ("no random start", ta_pgd(False), rw_pgd(False, False)),
        ("random start", ta_pgd(True), rw_pgd(True, False)),
        ("rustworthy default (early stop)", ta_pgd(True), rw_pgd(True, True)),
    ):
        ta_acc, ta_s = timed(ta_f, args.reps)
        rw_acc, rw_s = timed(rw_f, args.reps)
        rows.append({"setting": name, "torchattacks_robust": ta_acc, "rustworthy_robust": rw_acc,
                     "diff_points": rw_acc - ta_acc, "torchattacks_s": ta_s, "rustworthy_s": rw_s,
                     "speedup": ta_s / rw_s})
    print(f"ResNet-18 (scripted), n={args.n}, eps={eps}, PGD-10 step eps/4, clean accuracy {clean:.2f}%")
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(f"{'setting':<34} {'torchattacks':>12} {'rustworthy':>10} {'diff':>6} {'ta s':>7} {'rw s':>7} {'speedup':>7}")
    for r in rows:
        print(f"{r['setting']:<34} {r['torchattacks_robust']:>12.2f} {r['rustworthy_robust']:>10.2f} "
              f"{r['diff_points']:>+6.2f} {r['torchattacks_s']:>7.2f} {r['rustworthy_s']:>7.2f} {r['speedup']:>6.2f}x")
    print(json.dumps({"clean": clean, "rows": rows}))


if __name__ == "__main__":
    main()
