"""Minimize a black box you can only query: a badly scaled quadratic behind a Python function,
with random-direction estimates and ZO-Adam, under a query budget.

    .venv/bin/python python/examples/zo_blackbox.py
"""

import torch

import rustworthy

target = torch.linspace(-1, 1, 20, dtype=torch.float64)
scale = torch.logspace(0, 1, 20, dtype=torch.float64)


def black_box(v: torch.Tensor) -> float:
    return float(((v - target) ** 2 * scale).sum())


r = rustworthy.zo.minimize(black_box, torch.zeros(20), estimator="rge", optimizer="zo-adam",
                           lr=0.05, steps=3000, budget=30_000, q=10)
print(f"f(x0) = {black_box(torch.zeros(20)):.3f} -> {r.f:.2e} in {r.steps} steps, {r.queries} queries"
      + (f" ({r.stopped})" if r.stopped else ""))
