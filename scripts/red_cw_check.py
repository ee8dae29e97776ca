#!/usr/bin/env python3
"""Can a denoiser trained on C&W examples alone beat the identity on C&W?

Reads the C&W shards of a RED dataset folder (`rustworthy red generate` or `bench red`'s
`data/`), keeps the successful examples, trains a small DnCNN-style residual denoiser (depth 5,
width 24, last layer at zero so it starts as the identity) on the training split's C&W examples
with a mean squared or absolute pixel loss, and prints the mean per-example PSNR to the clean
image on the test split's C&W examples beside the identity's, every 10 epochs.

    .venv/bin/python scripts/red_cw_check.py --data runs/bench-red/data
"""
import argparse
import glob
import time

import torch
from safetensors.torch import load_file


def load(data, split):
    clean, adv = [], []
    for f in sorted(glob.glob(f"{data}/shards/{split}/*__cw-l2.safetensors")):
        d = load_file(f)
        ok = d["success"] == 1
        clean.append(d["x_clean"][ok])
        adv.append(d["x_adv"][ok])
    if not clean:
        raise SystemExit(f"no C&W shards under {data}/shards/{split}")
    return torch.cat(clean), torch.cat(adv)


def psnr(est, clean):
    mse = ((est - clean) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


class Denoiser(torch.nn.Module):
    def __init__(self, depth=5, width=24):
        super().__init__()
        layers = [torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [
                torch.nn.Conv2d(width, width, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(width),
                torch.nn.ReLU(),
            ]
        last = torch.nn.Conv2d(width, 1, 3, padding=1)
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x):
        return (x - self.net(x)).clamp(0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a RED dataset folder")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--loss", choices=["mse", "l1"], default="mse")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    c_tr, a_tr = load(a.data, "train")
    c_te, a_te = load(a.data, "test")
    print(f"C&W examples: train {len(c_tr)}, test {len(c_te)}")
    print(f"identity PSNR: test {psnr(a_te, c_te).mean():.2f} dB, train {psnr(a_tr, c_tr).mean():.2f} dB")
    d = Denoiser()
    opt = torch.optim.Adam(d.parameters(), 1e-3)
    t0 = time.time()
    for ep in range(a.epochs):
        d.train()
        perm = torch.randperm(len(a_tr))
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            err = d(a_tr[idx]) - c_tr[idx]
            loss = (err**2).mean() if a.loss == "mse" else err.abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (ep + 1) % 10 == 0 or ep + 1 == a.epochs:
            d.eval()
            with torch.no_grad():
                te = psnr(d(a_te), c_te).mean()
                tr = psnr(d(a_tr), c_tr).mean()
            print(f"{a.loss} epoch {ep + 1}: test {te:.2f} dB, train {tr:.2f} dB ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
