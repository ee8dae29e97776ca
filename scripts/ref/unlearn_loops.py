"""Plain PyTorch re-statements of the first-order unlearning loops, written from the official
code (Unlearn-Saliency's Classification/unlearn/*.py and generate_mask.py; the SCRUB
repository's NegGrad+ notebook cell), for the order-of-updates check in
crates/unlearn/tests/loop_reference.rs.

The check uses full batches (every set fits one batch), so the official loaders' shuffling does
not matter, and two classes with RL's "a label other than the true one", so the random labels
are fixed: what is compared is the order of the updates, the loss reductions, the saliency mask
and the optimizer semantics (torch.optim.SGD).

Usage: python scripts/ref/unlearn_loops.py DIR
DIR holds data.safetensors (x_forget, y_forget, x_retain, y_retain), init.safetensors (the
original model's state dict), spec.json (the model spec) and cases.json (a list of
{"name", "method", settings...}); for each case the final state dict is written to
py-NAME.safetensors.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402


def sgd(model, c):
    return torch.optim.SGD(
        model.parameters(),
        lr=c["lr"],
        momentum=c.get("momentum", 0.9),
        weight_decay=c.get("weight_decay", 5e-4),
    )


def step(opt, loss, mask=None, model=None):
    opt.zero_grad()
    loss.backward()
    if mask is None:
        opt.step()
        return
    # SalUn (official HEAD): gradients masked, then frozen entries restored to their values
    # before the step (so momentum and weight decay never move them).
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad *= mask[n]
    opt.step()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.where(mask[n].bool(), p, before[n]))


def other_label(y):
    # Two classes: the only label other than the true one.
    return 1 - y


def saliency_mask(model, xf, yf, ratio):
    # generate_mask.py: eval mode, loss = -CE (mean), gradients summed over the forget batches,
    # magnitude, global top int(n * ratio) entries.
    model.eval()
    model.zero_grad()
    (-F.cross_entropy(model(xf), yf)).backward()
    names = [n for n, _ in model.named_parameters()]
    grads = {n: p.grad.detach().abs() for n, p in model.named_parameters()}
    flat = torch.cat([grads[n].flatten() for n in names])
    k = int(len(flat) * ratio)
    top = torch.argsort(flat, descending=True, stable=True)[:k]
    m = torch.zeros_like(flat)
    m[top] = 1.0
    out, start = {}, 0
    for n in names:
        size = grads[n].numel()
        out[n] = m[start : start + size].reshape(grads[n].shape)
        start += size
    model.zero_grad()
    model.train()
    return out


def run(model, c, d):
    xf, yf, xr, yr = d["x_forget"], d["y_forget"], d["x_retain"], d["y_retain"]
    method, epochs = c["method"], c["epochs"]
    model.train()
    if method == "ft":
        opt = sgd(model, c)
        for _ in range(epochs):
            step(opt, F.cross_entropy(model(xr), yr))
    elif method == "ga":
        opt = sgd(model, c)
        for _ in range(epochs):
            step(opt, -F.cross_entropy(model(xf), yf))
    elif method in ("rl", "salun"):
        mask = saliency_mask(model, xf, yf, c["mask_ratio"]) if method == "salun" else None
        opt = sgd(model, c)
        for _ in range(epochs):
            yrand = other_label(yf)
            if c["forget_first"]:
                # RL.py, CIFAR-10 path: every forget batch, then every retain batch.
                step(opt, F.cross_entropy(model(xf), yrand), mask, model)
                step(opt, F.cross_entropy(model(xr), yr), mask, model)
            else:
                # RL.py, CIFAR-100 path: one shuffled loader over forget (random labels) + retain.
                x = torch.cat([xf, xr])
                y = torch.cat([yrand, yr])
                step(opt, F.cross_entropy(model(x), y), mask, model)
    elif method == "l1-sparse":
        # FT.py FT_l1: CE + alpha_e * ||theta||_1, alpha_e = alpha * (1 - e / E).
        opt = sgd(model, c)
        for e in range(epochs):
            a = c["alpha"] * (1 - e / epochs)
            l1 = torch.linalg.norm(torch.cat([p.flatten() for p in model.parameters()]), ord=1)
            step(opt, F.cross_entropy(model(xr), yr) + a * l1)
    elif method == "neggrad-plus":
        # The NegGrad+ notebook cell: plain SGD, eval mode, zip(retain, cycle(forget)),
        # alpha * (CE_r + wd/2 * ||w - w0||^2) - (1 - alpha) * CE_f.
        opt = torch.optim.SGD(model.parameters(), lr=c["lr"])
        w0 = [p.detach().clone() for p in model.parameters()]
        model.eval()
        for _ in range(epochs):
            l2 = sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), w0))
            retain = F.cross_entropy(model(xr), yr) + c["l2_to_original"] / 2 * l2
            forget = F.cross_entropy(model(xf), yf)
            step(opt, c["beta"] * retain - (1 - c["beta"]) * forget)
    else:
        raise SystemExit(f"unknown method {method}")


def main():
    root = sys.argv[1]
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    d = load_file(os.path.join(root, "data.safetensors"))
    d = {k: (v.long() if k.startswith("y") else v) for k, v in d.items()}
    with open(os.path.join(root, "spec.json")) as f:
        spec = json.load(f)
    init = load_file(os.path.join(root, "init.safetensors"))
    with open(os.path.join(root, "cases.json")) as f:
        cases = json.load(f)
    for c in cases:
        model = models.build_model(spec)
        model.load_state_dict(init)
        run(model, c, d)
        out = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(out, os.path.join(root, f"py-{c['name']}.safetensors"))
        print(f"{c['name']}: done")


if __name__ == "__main__":
    main()
