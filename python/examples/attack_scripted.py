"""Attack your own PyTorch model from a notebook or script: train a small CNN on a Fashion-MNIST
subset, script it in this process, and compare FGSM, PGD-10 and APGD-CE on 500 test images.

    .venv/bin/python python/examples/attack_scripted.py
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import rustworthy

DATA = Path("/usr/share/datasets/fashion-mnist")


def idx(name):
    p = DATA / name if (DATA / name).exists() else DATA / (name + ".gz")
    raw = p.read_bytes()
    raw = gzip.decompress(raw) if p.suffix == ".gz" else raw
    dims = struct.unpack(">" + "I" * raw[3], raw[4 : 4 + 4 * raw[3]])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def images(name, n):
    return torch.from_numpy(idx(name)[:n].copy()).float().div(255).unsqueeze(1)


def labels(name, n):
    return torch.from_numpy(idx(name)[:n].astype(np.int64))


x, y = images("train-images-idx3-ubyte", 6000), labels("train-labels-idx1-ubyte", 6000)
xt, yt = images("t10k-images-idx3-ubyte", 500), labels("t10k-labels-idx1-ubyte", 500)

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
)
opt = torch.optim.Adam(net.parameters(), 1e-3)
for epoch in range(2):
    for i in range(0, len(x), 64):
        opt.zero_grad()
        F.cross_entropy(net(x[i : i + 64]), y[i : i + 64]).backward()
        opt.step()
net.eval()
scripted = torch.jit.script(net)  # no file needed

for method, kw in (("fgsm", {}), ("pgd", {"steps": 10}), ("apgd", {"steps": 20})):
    r = rustworthy.attack(scripted, xt, yt, method, eps=0.1, **kw)
    s = r.summary
    print(f"{method:5s} clean {s['clean_accuracy']:.1f}%  robust {s['robust_accuracy']:.1f}%  "
          f"({s['seconds']:.2f} s, {int(r.success.sum())} fooled)")
