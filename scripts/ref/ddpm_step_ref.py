#!/usr/bin/env python3
"""DDPM training steps in PyTorch on the files `rustworthy bench ddpm-step` writes: the same
U-Net (scripts/ref/ddpm_ref.py), initial weights and batches; forward, summed epsilon loss,
backward, clip_grad_norm_(1.0), torch.optim.Adam and a per-parameter EMA update (as the
reference's EMA helper). Writes DIR/pytorch.json with the median seconds per step and the
first batch's loss with dropout off.

Usage: ddpm_step_ref.py DIR [THREADS]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddpm_ref import CondUNet  # noqa: E402


def main():
    d = Path(sys.argv[1])
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    bench = json.loads((d / "bench.json").read_text())
    model = CondUNet(bench["unet"])
    model.load_state_dict(load_file(str(d / "weights.safetensors")), strict=True)
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = load_file(str(d / "batches.safetensors"))
    b = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64)).float()
    abar = (1 - b).cumprod(dim=0)
    opt = torch.optim.Adam(model.parameters(), lr=bench["lr"], betas=(0.9, 0.999), eps=1e-8)

    def loss_of(k):
        x0, t, e = batches[f"x0_{k}"], batches[f"t_{k}"], batches[f"e_{k}"]
        a = abar.index_select(0, t).view(-1, 1, 1, 1)
        xt = x0 * a.sqrt() + e * (1.0 - a).sqrt()
        out = model(xt, t.float(), batches[f"labels_{k}"], batches[f"keep_{k}"].bool())
        return (e - out).square().sum(dim=(1, 2, 3)).mean(dim=0)

    model.eval()
    with torch.no_grad():
        first = float(loss_of(0))
    model.train()
    n = bench["warmup"] + bench["steps"]
    times = []
    for k in range(n):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_of(k)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for name, p in model.named_parameters():
                ema[name].mul_(bench["ema_rate"]).add_((1 - bench["ema_rate"]) * p.data)
        float(loss)
        if k >= bench["warmup"]:
            times.append(time.perf_counter() - t0)
    out = {"median_s": float(np.median(times)), "step_s": times, "first_loss_eval": first,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    (d / "pytorch.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
