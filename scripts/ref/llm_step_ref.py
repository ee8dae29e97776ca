#!/usr/bin/env python3
"""Reference for `rustworthy bench llm-step`: the same unlearning steps in PyTorch with the model
`transformers` builds, on the batches rustworthy wrote (exact token ids, masks, labels).

A step is what OpenUnlearning's trainer does per batch: the method's loss (with the frozen
reference model's forward pass where the method needs one), backward, gradient-norm clipping
at 1, and an AdamW update (torch's default implementation) with the method's lr and weight
decay. Prints JSON: the first step's loss and the seconds of each timed step.

Usage: llm_step_ref.py BATCHES_JSON MODEL [--threads N]
MODEL is a .gguf file (transformers dequantizes it with the `gguf` package) or a folder.
"""

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

IGNORE = -100


def seq_nll(lg, labels):
    ce = F.cross_entropy(lg[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none")
    return ce.sum(-1)


def pooled(lg, labels):
    return F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def logits(m, x):
    return m(input_ids=x[0], attention_mask=x[1]).logits.float()


def loss_fn(method, cfg, model, ref, f, r):
    alpha, gamma, beta = cfg["alpha"], cfg["gamma"], cfg["beta"]
    if method == "ga":
        return -pooled(logits(model, f), f[2])
    if method == "grad-diff":
        return -gamma * pooled(logits(model, f), f[2]) + alpha * pooled(logits(model, r), r[2])
    if method == "npo":
        cur = seq_nll(logits(model, f), f[2])
        with torch.no_grad():
            rn = seq_nll(logits(ref, f), f[2])
        lose = -(cur - rn)
        return gamma * (-2 / beta) * F.logsigmoid(-beta * lose).mean() + alpha * pooled(logits(model, r), r[2])
    if method == "sim-npo":
        n = (f[2] != IGNORE).sum(-1)
        x = seq_nll(logits(model, f), f[2]) / n - cfg["delta"]
        return gamma * (-2 / beta) * F.logsigmoid(beta * x).mean() + alpha * pooled(logits(model, r), r[2])
    raise SystemExit(f"llm_step_ref.py: method {method} is not in the reference")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("batches")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    spec = json.loads(Path(a.batches).read_text())
    cfg = spec["method"]
    method = cfg["method"]
    path = Path(a.model)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.train()  # as the trainer runs it (the model has no dropout)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if method in ("npo",) else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    def tensors(b):
        return tuple(torch.tensor(b[k]) for k in ("ids", "mask", "labels"))

    steps = [(tensors(s["forget"]), tensors(s["retain"])) for s in spec["steps"]]
    first, secs = None, []
    for i, (f, r) in enumerate(steps):
        t = time.perf_counter()
        loss = loss_fn(method, cfg, model, ref, f, r)
        if i == 0:
            first = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        if i >= spec["warmup"]:
            secs.append(time.perf_counter() - t)
    s = sorted(secs)
    print(json.dumps({"first_loss": first, "step_seconds": secs, "median_step_s": s[len(s) // 2],
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
