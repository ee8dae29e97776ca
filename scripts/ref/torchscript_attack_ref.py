#!/usr/bin/env python3
"""TorchScript parity fixture: two PyTorch models a user would bring, trained briefly on the real
Fashion-MNIST and saved with torch.jit.script, plus torchattacks' PGD on the same test images.

Writes into OUT:
  resnet18.pt   torchvision's ResNet-18 (its own code; first convolution for 1 channel)
  cnn.pt        a small custom CNN with batch norm and dropout
  train.npz, test.npz   the Fashion-MNIST subsets used (uint8 x [N,1,28,28], int64 y)
  reference.json        per model: clean accuracy and torchattacks PGD robust accuracy on the
                        first N test images, with and without random start

Usage: scripts/ref/torchscript_attack_ref.py OUT [--n 300] [--train 3000] [--eps 0.1]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_ref import find_data_dir, load_fashion_mnist, to_unit_float  # noqa: E402


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(self.drop(torch.flatten(x, 1)))


def resnet18():
    import torchvision

    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def train(model, x, y, epochs, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 100):
            idx = perm[i:i + 100]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def robust_accuracy(model, x, y, eps, random_start, seed):
    import torchattacks as ta

    atk = ta.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=random_start)
    torch.manual_seed(seed)
    xa = atk(x, y)
    with torch.no_grad():
        return 100.0 * (model(xa).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist(find_data_dir(args.data_dir))
    xtr_u8, ytr = data["train"]
    xte_u8, yte = data["test"]
    xtr_u8, ytr = xtr_u8[: args.train], ytr[: args.train]
    xte_u8, yte = xte_u8[: args.n], yte[: args.n]
    np.savez(out / "train.npz", x=xtr_u8.numpy(), y=ytr.numpy().astype(np.int64))
    np.savez(out / "test.npz", x=xte_u8.numpy(), y=yte.numpy().astype(np.int64))
    xtr, xte = to_unit_float(xtr_u8), to_unit_float(xte_u8)
    ref = {"eps": args.eps, "n": args.n, "torch": torch.__version__}
    for name, build, epochs, lr in (("cnn", SmallCnn, 2, 0.05), ("resnet18", resnet18, 2, 0.05)):
        torch.manual_seed(0)
        model = train(build(), xtr, ytr, epochs, lr, seed=1)
        scripted = torch.jit.script(model)
        scripted.save(str(out / f"{name}.pt"))
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            clean = 100.0 * (model(xte).argmax(1) == yte).float().mean().item()
        ref[name] = {
            "clean_accuracy": clean,
            "pgd_no_random_start": robust_accuracy(model, xte, yte, args.eps, False, 0),
            "pgd_random_start": robust_accuracy(model, xte, yte, args.eps, True, 0),
        }
    (out / "reference.json").write_text(json.dumps(ref, indent=1))
    print(json.dumps(ref))


if __name__ == "__main__":
    main()
