"""Zeroth-order optimization of black boxes: only function values are used, and every query is
counted."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import torch

from . import _rustworthy as _native

__all__ = ["minimize", "ZoResult"]


class ZoResult(NamedTuple):
    """What :func:`minimize` returns."""

    x: torch.Tensor
    """The best point found (float64, the shape of ``x0``)."""
    f: float
    """Its value."""
    x_last: torch.Tensor
    """The last iterate."""
    queries: int
    """Calls of ``f``, logging included (never more than ``budget``)."""
    steps: int
    """Optimization steps taken."""
    stopped: Optional[str]
    """Why the run ended early (e.g. the budget), else ``None``."""
    history: List[Dict[str, Any]]
    """Logged values: step, queries, f."""


def minimize(
    f: Callable[[torch.Tensor], float],
    x0: Union[torch.Tensor, Sequence[float]],
    *,
    estimator: str = "rge",
    optimizer: str = "zo-adam",
    lr: float = 0.05,
    steps: int = 1000,
    budget: Optional[int] = None,
    q: int = 10,
    mu: float = 1e-3,
    seed: int = 0,
) -> ZoResult:
    """Minimizes the black box ``f`` (called with one float64 point, shaped like ``x0``,
    returning a float) from ``x0``.

    ``estimator``: ``rge`` (``q`` random directions on the sphere, forward differences of
    radius ``mu``) or ``cge`` (one forward difference per coordinate). ``optimizer``:
    ``zo-sgd``, ``zo-signsgd`` or ``zo-adam``. The run stops before a step would exceed
    ``budget`` queries. An exception raised by ``f`` stops the run and is re-raised.
    """
    if not callable(f):
        raise TypeError("f must be callable")
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    shape = x0.shape
    if x0.numel() == 0:
        raise ValueError("x0 is empty")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 holds NaN or infinite values")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if steps < 1 or lr <= 0 or q < 1 or mu <= 0:
        raise ValueError("need steps >= 1, lr > 0, q >= 1 and mu > 0")
    if budget is not None and budget < 1:
        raise ValueError("budget must be >= 1")

    def g(row: torch.Tensor) -> float:
        return float(f(row.reshape(shape)))

    best, last, summary = _native.zo_minimize(
        g, x0.flatten(), estimator, optimizer, float(lr), int(steps), budget, int(q), float(mu), int(seed)
    )
    s = json.loads(summary)
    f_best = float("nan") if s["f_best"] is None else s["f_best"]
    return ZoResult(
        best.reshape(shape), f_best, last.reshape(shape), s["queries"], s["steps"], s["stopped"], s["history"]
    )
