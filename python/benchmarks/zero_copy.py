#!/usr/bin/env python3
"""Zero-copy check: 1 GiB of images passed to rustworthy.attack and the adversarial images
returned. The process's peak resident memory may grow by the returned tensor (1 GiB) plus
per-batch work, but not by a copy of the input or of the output.

Usage: .venv/bin/python python/benchmarks/zero_copy.py [--gib 1.0]
"""

import argparse
import resource

import torch
import torch.nn as nn

import rustworthy


def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=2048)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                         nn.Flatten(), nn.Linear(64, 10)).eval())
    n = int(args.gib * 2**30 / (32 * 32 * 4))
    x = torch.rand(n, 1, 32, 32)
    with torch.no_grad():
        y = torch.cat([net(x[i:i + 8192]).argmax(1) for i in range(0, n, 8192)])
    size = x.numel() * 4 / 2**30
    # Warm up the model and the allocator on a small slice first.
    rustworthy.attack(net, x[:args.batch], y[:args.batch], "fgsm", eps=0.01, batch_size=args.batch)
    before = peak_gib()
    r = rustworthy.attack(net, x, y, "fgsm", eps=0.01, batch_size=args.batch)
    after = peak_gib()
    grew = after - before
    print(f"input {size:.2f} GiB ({n} images), output {r.x_adv.numel() * 4 / 2**30:.2f} GiB")
    print(f"peak RSS {before:.2f} -> {after:.2f} GiB: grew {grew:.2f} GiB = {grew / size:.2f}x the input "
          f"(1.00x is the returned tensor itself)")
    assert r.x_adv.shape == x.shape


if __name__ == "__main__":
    main()
