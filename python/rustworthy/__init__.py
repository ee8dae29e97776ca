"""rustworthy: machine unlearning, adversarial robustness, pruning and zeroth-order optimization
on PyTorch models and tensors, computed by the rustworthy library (Rust, over the same libtorch
as the installed torch).

Tensors are exchanged without copies. Models are TorchScript modules (scripted or traced in
this process; no file needed), paths to any model file rustworthy reads, or a zoo architecture
name with a state dict: ``("lenet", state_dict)``. Results are plain dicts and lists. Bad
arguments raise ``ValueError`` (``TypeError`` for a wrong type), other failures
``RuntimeError``; Ctrl-C stops a long call between batches with ``KeyboardInterrupt``.

    >>> import rustworthy
    >>> r = rustworthy.attack(scripted, x, y, "pgd", eps=8 / 255)
    >>> r.summary["robust_accuracy"]
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch

try:
    from . import _rustworthy as _native
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"rustworthy's native extension did not load with torch {torch.__version__}: {e}. "
        "The package is built against one torch version (2.11.0); reinstall it with "
        "`pip install . -c constraints.txt` in an environment holding that torch."
    ) from e

_BUILT = _native.built_libtorch()
if torch.__version__.split("+")[0] != _BUILT.split("+")[0]:
    raise ImportError(
        f"rustworthy was built against torch {_BUILT} but this environment has torch "
        f"{torch.__version__}; install torch=={_BUILT.split('+')[0]} (pip install -c "
        "constraints.txt) or rebuild rustworthy here"
    )

from . import zo  # noqa: E402

__all__ = [
    "Model",
    "load",
    "attack",
    "robust_eval",
    "unlearn",
    "bench_unlearn",
    "prune",
    "zo",
    "AttackResult",
    "UnlearnResult",
    "PruneResult",
]
__version__ = "0.1.0"

Model = _native.Model
ModelLike = Union["Model", torch.jit.ScriptModule, str, os.PathLike, Tuple[str, Mapping[str, torch.Tensor]]]


def _geometry(x: Optional[torch.Tensor], input_shape: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
    elif isinstance(x, torch.Tensor) and x.dim() == 4:
        shape = tuple(int(d) for d in x.shape[1:])
    else:
        raise ValueError("cannot tell the model's input shape: pass images x as [N, C, H, W] or input_shape=(C, H, W)")
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def load(
    model: ModelLike,
    *,
    x: Optional[torch.Tensor] = None,
    input_shape: Optional[Sequence[int]] = None,
    arch: Optional[str] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_classes: Optional[int] = None,
    device: str = "cpu",
) -> "Model":
    """A model rustworthy can run.

    ``model`` is a ``torch.jit.ScriptModule`` (saved to memory, not to disk), a path to a
    TorchScript file, a run folder, our ``model.safetensors`` or a bare weights file (``arch``
    then names the zoo architecture), or ``(arch, state_dict)``. The input geometry comes
    from ``x`` or ``input_shape``; ``mean``/``std`` is the normalization the model applies to
    [0, 1] inputs (TorchScript default: none).
    """
    if isinstance(model, Model):
        given = {"arch": arch, "mean": mean, "std": std, "num_classes": num_classes}
        given = [k for k, v in given.items() if v is not None] + (["device"] if device != "cpu" else [])
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be changed on a loaded Model; pass them when loading it"
            )
        return model
    if isinstance(model, torch.jit.ScriptModule):
        c, h, w = _geometry(x, input_shape)
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return Model.from_script(
            buf.getvalue(),
            f"<TorchScript module {type(model).__name__}>",
            c,
            h,
            w,
            _floats(mean),
            _floats(std),
            num_classes,
            device,
        )
    if isinstance(model, (str, os.PathLike)):
        c, h, w = _geometry(x, input_shape)
        return Model.from_path(os.fspath(model), c, h, w, arch, _floats(mean), _floats(std), num_classes, device)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], str):
        name, sd = model
        if not isinstance(sd, Mapping):
            raise TypeError(f"(arch, state_dict): state_dict must be a mapping of tensors, got {type(sd).__name__}")
        items = []
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"state_dict[{k!r}] is a {type(v).__name__}, not a tensor")
            items.append((str(k), v.detach()))
        return Model.from_state_dict(name, items, device)
    if isinstance(model, torch.nn.Module):
        raise TypeError(
            "a plain nn.Module cannot be run outside Python: pass torch.jit.script(model) "
            "(or torch.jit.trace(model, x)), or (arch, model.state_dict()) for a zoo architecture"
        )
    raise TypeError(f"cannot use a {type(model).__name__} as a model")


def _floats(v: Optional[Sequence[float]]) -> Optional[List[float]]:
    return None if v is None else [float(a) for a in v]


def _tensor(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.requires_grad:
        t = t.detach()
    return t


def _pair(name: str, pair: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"{name} must be a pair (images, labels)")
    return _tensor(f"{name}[0]", pair[0]), _tensor(f"{name}[1]", pair[1])


ATTACKS = ("fgsm", "pgd", "apgd", "apgd-t", "cw", "square", "zoo", "zo-signsgd", "nes")


def _count(name: str, v: Any, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < least:
        raise ValueError(f"{name} must be >= {least}, got {v}")
    return v


def _settings(kw: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in kw.items() if v is not None})


class AttackResult(NamedTuple):
    """What :func:`attack` returns."""

    x_adv: torch.Tensor
    """Adversarial images, in input order (clean images where no attack ran)."""
    success: torch.Tensor
    """Per sample: attacked and fooled (bool)."""
    summary: Dict[str, Any]
    """Clean and robust accuracy, success rate, queries, norms, seconds."""
    per_sample: Dict[str, List[Any]]
    """Per-sample lists: clean_correct, success, queries, linf, l2."""


def attack(
    model: ModelLike,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "pgd",
    *,
    eps: Optional[float] = None,
    norm: str = "linf",
    steps: Optional[int] = None,
    step_size: Optional[float] = None,
    restarts: int = 1,
    loss: str = "ce",
    random_start: bool = True,
    early_stop: bool = True,
    queries: int = 5000,
    batch_size: int = 500,
    seed: int = 0,
    attack_all: bool = False,
    progress: bool = False,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    device: str = "cpu",
    **settings: Any,
) -> AttackResult:
    """Attacks images ``x`` (``[N, C, H, W]`` float32 in [0, 1]) with labels ``y``.

    ``method`` is one of ``fgsm``, ``pgd``, ``apgd``, ``apgd-t``, ``cw``, ``square``, ``zoo``,
    ``zo-signsgd``, ``nes``, with the defaults of ``rustworthy attack`` (PGD: 10 steps of
    ``eps/4`` from a random start, stopping each sample at its first success). Further
    settings (``q``, ``mu``, ``momentum``, ``targets``, ``cw_c``, ``cw_search``) pass as keywords.
    Only clean-correct samples are attacked unless ``attack_all``. ``progress`` draws a bar
    over the samples (with the running count of fooled ones) on stderr. ``x_adv`` comes back
    on the CPU.
    """
    if method not in ATTACKS:
        raise ValueError(f"unknown attack `{method}`: {', '.join(ATTACKS)}")
    if eps is not None and not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    _count("batch_size", batch_size, 1)
    _count("seed", seed, 0)
    x, y = _tensor("x", x), _tensor("y", y)
    m = load(model, x=x, mean=mean, std=std, device=device)
    kw = dict(
        norm=norm, steps=steps, step_size=step_size, restarts=restarts, loss=loss,
        random_start=random_start, early_stop=early_stop, queries=queries, **settings,
    )
    x_adv, success, summary, per_sample = _native.attack(
        m, x, y, method, eps, _settings(kw), batch_size, seed, attack_all, progress
    )
    return AttackResult(x_adv, success, json.loads(summary), json.loads(per_sample))


def robust_eval(
    model: ModelLike,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    suite: str = "quick",
    batch_size: int = 500,
    seed: int = 0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    device: str = "cpu",
    **settings: Any,
) -> Dict[str, Any]:
    """The robust-evaluation suite (``quick`` or ``standard``: FGSM, PGD, APGD-CE, APGD-T,
    Square, their worst case per sample, and an accuracy-vs-eps curve) on ``(x, y)``.
    Suite fields (``pgd_steps``, ``curve``, ...) can be changed by keyword. Returns the report
    as a dict (``clean_accuracy``, ``worst_case_accuracy``, ``ensemble``, ``curve``, ``flags``,
    ``samples``, ...)."""
    _count("batch_size", batch_size, 1)
    _count("seed", seed, 0)
    x, y = _tensor("x", x), _tensor("y", y)
    m = load(model, x=x, mean=mean, std=std, device=device)
    out = _native.robust_eval(m, x, y, suite, norm, float(eps), batch_size, seed, _settings(settings))
    return json.loads(out)


class UnlearnResult(NamedTuple):
    """What :func:`unlearn` returns."""

    state_dict: Dict[str, torch.Tensor]
    """The unlearned model's parameters and buffers."""
    metrics: Dict[str, float]
    """UA, RA, TA, MIA-Efficacy (all in percent) and RTE (seconds) after unlearning."""
    before: Dict[str, float]
    """The same metrics for the original model."""
    report: Dict[str, Any]
    """The method, its full config and what it reported about its run."""
    model: "Model"
    """The unlearned model, ready for :func:`attack` or another call."""


def unlearn(
    model: ModelLike,
    train: Tuple[torch.Tensor, torch.Tensor],
    forget: Union[Sequence[int], torch.Tensor],
    test: Tuple[torch.Tensor, torch.Tensor],
    method: str = "salun",
    *,
    profile: str = "reference",
    seed: int = 0,
    recipe: str = "fmnist-lenet",
    progress: bool = False,
    lr: Optional[float] = None,
    epochs: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    device: str = "cpu",
    **settings: Any,
) -> UnlearnResult:
    """Makes ``model``, trained on ``train = (x, y)``, forget the training samples at indices
    ``forget``, with one of the methods of ``rustworthy unlearn`` (``retrain``, ``ft``, ``ga``,
    ``rl``, ``salun``, ``l1-sparse``, ``neggrad+``, ``scrub``, ...). Metrics are measured as
    ``rustworthy unlearn`` measures them (UA/RA on forget/retain, TA on ``test``, MIA-Efficacy
    from a shadow SVM). ``recipe`` names the original training recipe (a training preset),
    which Retrain and the methods that follow it reuse. Method settings (``lr``, ``epochs``,
    ``alpha``, ...) pass as keywords over the ``profile``'s defaults."""
    tx, ty = _pair("train", train)
    sx, sy = _pair("test", test)
    if isinstance(forget, torch.Tensor):
        forget = forget.flatten().tolist()
    idx = [int(i) for i in forget]
    if not idx:
        raise ValueError("the forget set is empty")
    bad = [i for i in idx if not 0 <= i < len(tx)]
    if bad:
        raise ValueError(f"forget index {bad[0]} is out of range (train holds {len(tx)} samples)")
    _count("seed", seed, 0)
    m = load(model, x=tx, mean=mean, std=std, device=device)
    kw = dict(settings)
    kw.update(lr=lr, epochs=epochs)
    new, report = _native.unlearn(m, tx, ty, sx, sy, idx, method, _settings(kw), profile, seed, recipe, progress)
    r = json.loads(report)
    return UnlearnResult(dict(new.state_dict()), r["metrics"], r["before"], r, new)


def bench_unlearn(
    preset: str = "fmnist-lenet-random10",
    *,
    profile: Optional[str] = None,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    fresh: bool = False,
    progress: bool = False,
    **settings: Any,
) -> Dict[str, Any]:
    """The unlearning benchmark of a preset, as ``rustworthy bench unlearn --preset`` runs it:
    trains (or reuses) the original model, runs Retrain and the methods, and writes the run
    folder (``results.md``, ``results.csv``, ``results.json``, plot). Config fields (``methods``,
    ``out``, ``seed``, ``original_epochs``, ...) can be changed by keyword. Returns the Markdown
    table, the original model's metrics, one dict per row and the output folder."""
    if "out" in settings and settings["out"] is not None:
        settings["out"] = os.fspath(settings["out"])
    out = _native.bench_unlearn(preset, _settings(settings), profile,
                                None if data_dir is None else os.fspath(data_dir), fresh, progress)
    return json.loads(out)


class PruneResult(NamedTuple):
    """What :func:`prune` returns."""

    masks: Dict[str, torch.Tensor]
    """One 0/1 mask per pruned weight tensor."""
    state_dict: Dict[str, torch.Tensor]
    """The pruned model's parameters and buffers (masked entries are zero)."""
    sparsity: float
    """The share of prunable weights removed."""
    layers: List[Dict[str, Any]]
    """Per-layer sparsity."""
    model: "Model"
    """The pruned model."""


def prune(
    model: ModelLike,
    method: str = "omp",
    sparsity: float = 0.9,
    *,
    scope: str = "global",
    data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    input_shape: Optional[Sequence[int]] = None,
    seed: int = 0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    device: str = "cpu",
) -> PruneResult:
    """Prunes ``model`` in one shot to ``sparsity`` with ``omp`` (magnitude), ``snip``,
    ``grasp`` (both score on ``data = (x, y)``), ``synflow`` or ``random``; ``scope`` is
    ``global`` or ``layer``. The model given is not changed (a copy is pruned)."""
    if not 0 <= float(sparsity) < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    _count("seed", seed, 0)
    x = y = None
    if data is not None:
        x, y = _pair("data", data)
    m = load(model, x=x, input_shape=input_shape, mean=mean, std=std, device=device)
    if m is model:
        m = m.copy()  # a Model passed in stays as it was
    masks, stats = _native.prune(m, method, float(sparsity), scope, x, y, seed)
    s = json.loads(stats)
    return PruneResult(dict(masks), dict(m.state_dict()), s["sparsity"], s["layers"], m)
