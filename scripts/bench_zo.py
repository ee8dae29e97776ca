"""Reference for the CGE benchmark: DeepZero's coordinate loop in PyTorch.

For each coordinate of the sparse set the parameter is moved by mu in place, the network is run
forward on the batch from the cached input of the module that holds the parameter (DeepZero's
feature reuse at module granularity; `--no-reuse` starts from the input), the loss is recorded
and the parameter is restored: one forward pass per coordinate, as in the published
`DistributedCGEModel.calculate_grads`. Batch norm runs in training mode (batch statistics).

The coordinate set takes `1 - sparsity` of every conv/linear weight plus every bias; a stratified
sample of `--coords` of them is timed and the step time is extrapolated to the whole set.
FLOPs of each query (a forward pass from its module on, counted by torch's FlopCounterMode) give
the rate the queries reach, against the sgemm rate measured on the same device.

Prints one JSON object.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "ref"))
from models import build_model  # noqa: E402


def units_of(net, arch):
    """The network as a list of (name prefixes, callable) modules run in sequence."""
    if arch == "resnet20":
        us = [(["conv1", "bn1"], lambda x: F.relu(net.bn1(net.conv1(net.normalize(x)))))]
        for i in range(1, 4):
            for j, blk in enumerate(getattr(net, f"layer{i}")):
                us.append(([f"layer{i}.{j}."], blk))
        us.append((["fc"], lambda x: net.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))))
        return us
    if arch == "lenet":
        pool = lambda t: F.max_pool2d(t, 2)  # noqa: E731
        return [
            (["conv1"], lambda x: pool(F.relu(net.conv1(net.normalize(x))))),
            (["conv2"], lambda x: pool(F.relu(net.conv2(x)))),
            (["fc1"], lambda x: F.relu(net.fc1(torch.flatten(x, 1)))),
            (["fc2"], lambda x: F.relu(net.fc2(x))),
            (["fc3"], lambda x: net.fc3(x)),
        ]
    raise SystemExit(f"unsupported arch {arch}")


def unit_of(name, units):
    for i, (prefixes, _) in enumerate(units):
        if any(name.startswith(p) for p in prefixes):
            return i
    raise KeyError(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--coords", type=int, default=2000)
    ap.add_argument("--mu", type=float, default=5e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-reuse", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    spec = {"arch": a.arch, "in_channels": 1, "num_classes": 10, "input_size": [28, 28],
            "mean": [0.5], "std": [0.25]}
    net = build_model(spec).to(dev).train()
    net.requires_grad_(False)
    units = units_of(net, a.arch)
    x = torch.rand(a.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def run_from(start, h):
        for _, u in units[start:]:
            h = u(h)
        return h

    # The coordinate set and a stratified sample of it.
    params = [(n, p) for n, p in net.named_parameters()
              if (p.dim() >= 2 or n.endswith(".bias")) and not n.startswith("bn")
              and ".bn" not in n]
    full = {}
    for n, p in params:
        k = p.numel() if p.dim() < 2 else round((1 - a.sparsity) * p.numel())
        full[n] = k
    total = sum(full.values())
    g = torch.Generator().manual_seed(a.seed)
    sample = []
    for n, p in params:
        k = max(1, round(a.coords * full[n] / total)) if full[n] else 0
        idx = torch.randperm(p.numel(), generator=g)[: min(k, full[n])]
        sample += [(n, p, int(i)) for i in idx]

    with torch.no_grad():
        caches = [x]
        h = x
        for _, u in units:
            h = u(h)
            caches.append(h)
        # FLOPs of a forward pass from each module on (batch `a.batch`).
        from torch.utils.flop_counter import FlopCounterMode
        flops_from = []
        for s in range(len(units)):
            fc = FlopCounterMode(display=False)
            with fc:
                run_from(s, caches[s])
            flops_from.append(fc.get_total_flops())

        def step(coords):
            out = []
            base = F.cross_entropy(run_from(0, x), y)
            for n, p, i in coords:
                s = 0 if a.no_reuse else unit_of(n, units)
                flat = p.view(-1)
                flat[i] += a.mu
                loss = F.cross_entropy(run_from(s, caches[s]), y)
                flat[i] -= a.mu
                out.append((loss - base) / a.mu)
            return torch.stack(out)

        step(sample[: min(20, len(sample))])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        g_hat = step(sample)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert torch.isfinite(g_hat).all()

        # sgemm rate on the same device.
        m = 2048 if dev.type == "cpu" else 8192
        A = torch.randn(m, m, device=dev)
        B = torch.randn(m, m, device=dev)
        A @ B
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = 3 if dev.type == "cpu" else 20
        t1 = time.perf_counter()
        for _ in range(reps):
            A @ B
        if dev.type == "cuda":
            torch.cuda.synchronize()
        sgemm = 2 * m**3 * reps / (time.perf_counter() - t1)

    per_unit = {}
    for n, _, _ in sample:
        u = 0 if a.no_reuse else unit_of(n, units)
        per_unit[u] = per_unit.get(u, 0) + 1
    flops = sum(flops_from[u] * c for u, c in per_unit.items())
    qps = len(sample) / dt
    print(json.dumps({
        "impl": "pytorch-deepzero-loop" + ("-no-reuse" if a.no_reuse else ""),
        "arch": a.arch, "batch": a.batch, "sparsity": a.sparsity, "device": str(dev),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "coords_timed": len(sample), "coords_per_step": total,
        "seconds": dt, "queries_per_s": qps,
        "step_seconds": total / qps,
        "query_gflop": flops / len(sample) / 1e9,
        "gflops_per_s": flops / dt / 1e9,
        "sgemm_gflops_per_s": sgemm / 1e9,
        "fraction_of_sgemm": flops / dt / sgemm,
        "flops_from_unit": flops_from,
    }))


if __name__ == "__main__":
    main()
