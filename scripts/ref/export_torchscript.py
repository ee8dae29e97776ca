"""Exports TorchScript modules and PyTorch reference results for the Rust TorchScript tests
(crates/models/tests/torchscript.rs). Plain torch only.

Modules (each written as NAME.pt):
  lenet-script / lenet-trace        LeNet-5 of scripts/ref/models.py (Fashion-MNIST geometry)
  resnet20-script / resnet20-trace  ResNet-20 of scripts/ref/models.py (CIFAR-10 geometry)
  cnn-script / cnn-trace            a small CNN with batch norm and dropout (3x16x16 inputs)
Both twins normalize inside the module (Rust loads them with mean 0, std 1). Traced modules are
traced in eval mode, so they always compute as in eval mode (tracing bakes `self.training`);
their references come from the traced module itself, like every reference here.

For each module NAME.ref.safetensors holds, computed by the module as saved (torch.jit.load):
  x, y                   input [B, C, H, W] in [0, 1] and labels
  eval_logits            eval-mode logits of x
  eval_grad_x            d CE(eval logits, y) / dx
  eval_grad.P            d CE / dP for every parameter P
  dbl_grad.P             d |d CE / dx|^2 / dP (double backward, eval mode)
  train_logits           train-mode logits of x, after torch.manual_seed(TRAIN_SEED)
  train_grad_x, train_grad.P   the gradients of that train-mode loss
  train_buffers.B        every buffer after that train-mode pass
  sgd.P                  every parameter after one SGD step (lr, momentum, weight decay below)
                         on the train-mode gradients
and manifest.json lists the modules with their geometry, parameter and buffer names.

Files that must be refused (3x16x16 inputs):
  bad-statedict.pt   torch.save of a state dict (a zip archive, but no TorchScript code)
  bad-shape.pt       a TorchScript module returning [B, C, H*W] instead of logits
  bad-tuple.pt       a TorchScript module returning a tuple

Usage: python scripts/ref/export_torchscript.py --out DIR
       python scripts/ref/export_torchscript.py --fixture tests/fixtures/torchscript/small-cnn.pt

--fixture writes only the committed test fixture that the unlearn, prune and robust tests load
without Python: the small CNN for 1x12x12 inputs and 4 classes, scripted, seed 0.
--fixture-fmnist writes the committed, untrained module of the PGD-on-TorchScript example: the
small CNN for Fashion-MNIST (1x28x28, 10 classes; it takes [0, 1] images), scripted, seed 0.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

TRAIN_SEED = 1234
SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
BATCH = 4


class BadShape(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 2)


class BadTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = self.fc(x.mean((2, 3)))
        return y, y


class SmallCnn(nn.Module):
    """conv-BN-ReLU-pool, conv-BN-ReLU, global pool, dropout, linear."""

    def __init__(self, in_channels=3, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.head(self.drop(x))


def perturb(model, gen):
    """Random BN affine parameters, jittered weights and running statistics from a few
    train-mode passes, so every parameter and buffer matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)


def warm_up(model, shape, gen):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand((8,) + shape, generator=gen))
    model.eval()


def grads(loss, x, params, create_graph=False):
    return torch.autograd.grad(loss, [x] + params, create_graph=create_graph)


def reference(module, x, y):
    """The reference results of a loaded TorchScript module (see the module docstring)."""
    out = {"x": x, "y": y}
    names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]

    module.eval()
    xe = x.clone().requires_grad_(True)
    logits = module(xe)
    loss = F.cross_entropy(logits, y)
    g = grads(loss, xe, params, create_graph=True)
    out["eval_logits"] = logits.detach()
    out["eval_grad_x"] = g[0].detach()
    for n, t in zip(names, g[1:]):
        out[f"eval_grad.{n}"] = t.detach()
    penalty = g[0].pow(2).sum()
    # allow_unused: a traced module's graph may not depend on every parameter twice.
    dg = torch.autograd.grad(penalty, params, allow_unused=True)
    for n, p, t in zip(names, params, dg):
        out[f"dbl_grad.{n}"] = torch.zeros_like(p) if t is None else t.detach()

    module.train()
    torch.manual_seed(TRAIN_SEED)
    xt = x.clone().requires_grad_(True)
    logits = module(xt)
    loss = F.cross_entropy(logits, y)
    for p in params:
        p.grad = None
    loss.backward()
    out["train_logits"] = logits.detach()
    out["train_grad_x"] = xt.grad.detach()
    for n, p in zip(names, params):
        out[f"train_grad.{n}"] = p.grad.detach().clone()
    for n, b in module.named_buffers():
        out[f"train_buffers.{n}"] = b.detach().clone()
    opt = torch.optim.SGD(params, **SGD)
    opt.step()
    for n, p in zip(names, params):
        out[f"sgd.{n}"] = p.detach().clone()
    module.eval()
    return {k: v.contiguous() for k, v in out.items()}


def export(out_dir, name, model, shape, num_classes, gen, check_eager):
    """Scripts (or traces) `model`, writes it, reloads it and writes its references."""
    path = os.path.join(out_dir, f"{name}.pt")
    x = torch.rand((BATCH,) + shape, generator=gen)
    y = torch.randint(num_classes, (BATCH,), generator=gen)
    if name.endswith("-trace"):
        model.eval()
        scripted = torch.jit.trace(model, torch.rand((2,) + shape, generator=gen))
    else:
        scripted = torch.jit.script(model)
    scripted.save(path)
    module = torch.jit.load(path)
    if check_eager:
        model.eval()
        with torch.no_grad():
            diff = (model(x) - module(x)).abs().max().item()
        assert diff < 1e-5, f"{name}: TorchScript and eager eval logits differ by {diff}"
    ref = reference(module, x, y)
    save_file(ref, os.path.join(out_dir, f"{name}.ref.safetensors"))
    return {
        "name": name,
        "file": f"{name}.pt",
        "ref": f"{name}.ref.safetensors",
        "in_channels": shape[0],
        "input_size": list(shape[1:]),
        "num_classes": num_classes,
        "params": [n for n, _ in module.named_parameters()],
        "buffers": [n for n, _ in module.named_buffers()],
        "sgd": SGD,
        "train_seed": TRAIN_SEED,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out")
    ap.add_argument("--fixture")
    ap.add_argument("--fixture-fmnist")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for path, classes in ((args.fixture, 4), (args.fixture_fmnist, 10)):
        if path:
            torch.manual_seed(args.seed)
            model = SmallCnn(1, classes).eval()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            torch.jit.script(model).save(path)
            print(f"wrote {path}")
            return
    if not args.out:
        ap.error("--out (or --fixture) is required")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    manifest = []
    jobs = [
        ("lenet", lambda: models.build_model(models.fashion_mnist_spec("lenet")), (1, 28, 28), 10),
        ("resnet20", lambda: models.build_model(models.cifar10_spec("resnet20")), (3, 32, 32), 10),
        ("cnn", lambda: SmallCnn(3, 5), (3, 16, 16), 5),
    ]
    for base, build, shape, classes in jobs:
        model = build()
        perturb(model, gen)
        warm_up(model, shape, gen)
        for kind in ("script", "trace"):
            manifest.append(
                export(args.out, f"{base}-{kind}", model, shape, classes, gen, kind == "script")
            )
    torch.save(SmallCnn().state_dict(), os.path.join(args.out, "bad-statedict.pt"))
    torch.jit.script(BadShape()).save(os.path.join(args.out, "bad-shape.pt"))
    torch.jit.script(BadTuple()).save(os.path.join(args.out, "bad-tuple.pt"))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest)} TorchScript modules to {args.out}")


if __name__ == "__main__":
    main()
