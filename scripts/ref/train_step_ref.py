"""PyTorch side of `rustworthy bench train-step`: the same training steps on the same weights
and batches (written by the Rust side into OUT), in eager mode or under torch.compile.

    python scripts/ref/train_step_ref.py OUT [--mode eager|compile] [--threads N]

A step: zero_grad, forward (inside torch.autocast(dtype=bfloat16) for bf16), cross-entropy,
backward, torch.optim.SGD(momentum 0.9, nesterov, weight decay 5e-4) with PyTorch's default
implementation for the device. Channels-last moves the model and the batches to
torch.channels_last. Steps are timed in blocks with one synchronization before and after each
block, as on the Rust side. Writes OUT/pytorch-MODE.json.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import build_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    bench = json.load(open(os.path.join(a.out, "bench.json")))
    rw = json.load(open(os.path.join(a.out, "rustworthy.json")))
    device = torch.device("cuda" if rw["device"].startswith("cuda") else "cpu")
    model = build_model(bench["spec"]).to(device)
    model.load_state_dict(load_file(os.path.join(a.out, "weights.safetensors")), strict=False)
    batches = load_file(os.path.join(a.out, "batches.safetensors"))
    data = []
    for k in range(bench["batches"]):
        x = batches[f"x_{k}"].to(device)
        y = batches[f"y_{k}"].to(device)
        data.append((x, y))
    model.eval()
    with torch.no_grad():
        first = F.cross_entropy(model(data[0][0]), data[0][1]).item()
    model.train()
    if bench["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]
    # Floating-point operations of one step (forward and backward), counted on a copy.
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model)
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=bench["precision"] == "bf16"):
            loss = F.cross_entropy(probe(data[0][0]), data[0][1])
        loss.backward()
    flops = fc.get_total_flops()
    del probe
    opt = torch.optim.SGD(
        model.parameters(), lr=bench["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    bf16 = bench["precision"] == "bf16"
    fwd = torch.compile(model) if a.mode == "compile" else model

    def step(k):
        x, y = data[k % len(data)]
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    k = 0
    # torch.compile needs more warm-up (the first calls compile).
    warm = bench["warmup"] + (10 if a.mode == "compile" else 0)
    t_compile = time.perf_counter()
    for _ in range(warm):
        last = step(k)
        k += 1
    sync()
    warm_s = time.perf_counter() - t_compile
    blocks = []
    for _ in range(bench["repeats"]):
        sync()
        t0 = time.perf_counter()
        for _ in range(bench["steps"]):
            last = step(k)
            k += 1
        sync()
        blocks.append((time.perf_counter() - t0) / bench["steps"])
    med = sorted(blocks)[len(blocks) // 2]
    res = {
        "mode": a.mode,
        "median_s": med,
        "block_s": blocks,
        "images_per_s": bench["batch"] / med,
        "first_loss_eval": first,
        "last_loss": float(last),
        "warmup_s": warm_s,
        "flops_per_step": flops,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    with open(os.path.join(a.out, f"pytorch-{a.mode}.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(
        f"{a.mode}: {med:.4f} s per step ({res['images_per_s']:.0f} images/s); "
        f"first loss {first:.6f}, last {res['last_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
