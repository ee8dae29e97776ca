"""The Python package on real Fashion-MNIST: attacks against torchattacks, unlearning against the
command line, pruning, zeroth-order minimization, errors, zero-copy and Ctrl-C."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import torch

import rustworthy


def test_import_checks_the_torch_version():
    assert rustworthy._BUILT.split("+")[0] == torch.__version__.split("+")[0]
    assert callable(rustworthy.attack) and callable(rustworthy.zo.minimize)


def test_pgd_matches_torchattacks_without_random_start(fmnist, scripted):
    ta = pytest.importorskip("torchattacks")
    x, y = fmnist["test"]
    x, y = x[:200], y[:200]
    eps = 0.1
    r = rustworthy.attack(scripted, x, y, "pgd", eps=eps, steps=10, step_size=eps / 4,
                          random_start=False, early_stop=False)
    s = r.summary
    with torch.no_grad():
        clean = (scripted(x).argmax(1) == y).float().mean().item() * 100
        pred_adv = scripted(r.x_adv).argmax(1)
    assert abs(s["clean_accuracy"] - clean) < 1e-4
    assert s["robust_accuracy"] < s["clean_accuracy"] - 20, s
    # The adversarial images lie in the eps ball and in [0, 1], and `success` says what the
    # model does on them.
    assert (r.x_adv - x).abs().max().item() <= eps + 1e-6
    assert r.x_adv.min().item() >= 0 and r.x_adv.max().item() <= 1
    clean_ok = torch.tensor(r.per_sample["clean_correct"])
    assert torch.equal(r.success, clean_ok & (pred_adv != y))
    # torchattacks' PGD on the same module, inputs and step.
    for p in scripted.parameters():
        p.requires_grad_(False)
    xa = ta.PGD(scripted, eps=eps, alpha=eps / 4, steps=10, random_start=False)(x, y)
    with torch.no_grad():
        ref = (scripted(xa).argmax(1) == y).float().mean().item() * 100
    assert abs(s["robust_accuracy"] - ref) <= 1.0, (s["robust_accuracy"], ref)


def test_inputs_are_shared_not_copied_and_left_unchanged(fmnist, scripted):
    x, y = fmnist["test"]
    x, y = x[:64].clone(), y[:64].clone()
    before = x.clone()
    r = rustworthy.attack(scripted, x, y, "fgsm", eps=0.05)
    assert torch.equal(x, before)
    assert r.x_adv.data_ptr() != x.data_ptr() and r.x_adv.shape == x.shape
    m = rustworthy.load(scripted, x=x)
    sd = dict(m.state_dict())
    # The model's own tensors come back (a view of its memory): changing one changes the model.
    w = sd["fc.bias"]
    out0 = m.logits(x[:4])
    w.add_(1.0)
    assert torch.allclose(m.logits(x[:4]), out0 + 1.0, atol=1e-5)


def test_tensors_cross_in_any_layout_and_wrong_types_are_named(fmnist, scripted):
    x, y = fmnist["test"]
    m = rustworthy.load(scripted, x=x[:8])
    with torch.no_grad():
        ref = scripted(x[:8])
    # A non-contiguous view (DLPack carries the strides), and a tensor in an autograd graph.
    xt = x[:8].transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    assert torch.allclose(m.logits(xt), ref, atol=1e-5)
    xg = x[:8].clone().requires_grad_(True) * 1.0
    out = m.logits(xg)
    assert not out.requires_grad and torch.allclose(out, ref, atol=1e-5)
    assert xg.grad_fn is not None
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.logits(x[:8].numpy())


def test_every_attack_runs(fmnist, scripted):
    x, y = fmnist["test"]
    x, y = x[:32], y[:32]
    for method, kw in (("apgd", dict(steps=10)), ("square", dict(queries=50)), ("nes", dict(queries=200)),
                       ("cw", dict(norm="l2", steps=5, cw_search=1))):
        r = rustworthy.attack(scripted, x, y, method, eps=0.1 if method != "cw" else None, **kw)
        assert 0 <= r.summary["robust_accuracy"] <= r.summary["clean_accuracy"], (method, r.summary)


def test_robust_eval_quick_suite(fmnist, scripted):
    x, y = fmnist["test"]
    rep = rustworthy.robust_eval(scripted, x[:48], y[:48], eps=0.1, pgd_steps=5, apgd_steps=5,
                                 apgd_targets=0, square_queries=0, curve=[0.05], curve_steps=3)
    assert rep["worst_case_accuracy"] <= rep["pgd"]["robust_accuracy"] <= rep["clean_accuracy"]
    assert rep["n"] == 48 and len(rep["curve"]) == 1


def test_bad_inputs_raise_clear_errors(fmnist, scripted):
    x, y = fmnist["test"]
    x, y = x[:8], y[:8]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    cases = [
        (lambda: rustworthy.attack(scripted, bad, y, eps=0.1), ValueError, "NaN"),
        (lambda: rustworthy.attack(scripted, x * 2, y, eps=0.1), ValueError, "[0, 1]"),
        (lambda: rustworthy.attack(scripted, x.double(), y, eps=0.1), ValueError, "float32"),
        (lambda: rustworthy.attack(scripted, x, y[:5], eps=0.1), ValueError, "shape [8]"),
        (lambda: rustworthy.attack(scripted, x, y + 20, eps=0.1), ValueError, "0..10"),
        (lambda: rustworthy.attack(scripted, x, y, "pgdx", eps=0.1), ValueError, "unknown attack"),
        (lambda: rustworthy.attack(scripted, x, y, eps=0.1, stepz=3), ValueError, "stepz"),
        (lambda: rustworthy.attack(scripted, x, y, eps=-1.0), ValueError, "eps"),
        (lambda: rustworthy.attack(scripted, x.numpy(), y, eps=0.1), TypeError, "torch.Tensor"),
        (lambda: rustworthy.attack(torch.nn.Linear(3, 2), x, y, eps=0.1), TypeError, "torch.jit.script"),
        (lambda: rustworthy.attack("/no/such/model.pt", x, y, eps=0.1), RuntimeError, "no such file"),
        (lambda: rustworthy.prune(scripted, "omp", 1.5, input_shape=(1, 28, 28)), ValueError, "sparsity"),
        (lambda: rustworthy.zo.minimize(lambda v: 0.0, [float("nan")]), ValueError, "NaN"),
        (lambda: rustworthy.attack(scripted, x, y, eps=0.1, batch_size=0), ValueError, "batch_size"),
        (lambda: rustworthy.attack(scripted, x, y, eps=0.1, seed=-1), ValueError, "seed"),
        (lambda: rustworthy.unlearn(scripted, (x, y), [8], (x, y), "ft"), ValueError, "out of range"),
        (lambda: rustworthy.attack(rustworthy.load(scripted, x=x), x, y, eps=0.1, mean=[0.5]), ValueError,
         "loaded Model"),
    ]
    for f, exc, text in cases:
        with pytest.raises(exc) as e:
            f()
        assert text in str(e.value), (text, str(e.value))


def test_state_dict_models_round_trip():
    # A zoo LeNet built from a PyTorch state dict holds exactly those values.
    ref = _lenet_state()
    m = rustworthy.load(("lenet", ref))
    got = dict(m.state_dict())
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
    with pytest.raises(RuntimeError, match="missing"):
        rustworthy.load(("lenet", {k: v for k, v in ref.items() if k != "fc3.bias"}))


def test_bf16_autocast_and_channels_last(fmnist):
    x, y = fmnist["test"]
    x = x[:64]
    m = rustworthy.load(("lenet", _lenet_state()))
    want = m.logits(x)
    m.set_exec("bf16", channels_last=True)
    got = m.logits(x)
    # Outputs come back float32, within bf16 rounding of the float32 model.
    assert got.dtype == torch.float32
    err = (got - want).abs().max().item()
    assert 0 < err < 0.05 * want.abs().max().item()
    r = rustworthy.attack(m, x, y[:64], "pgd", eps=0.1)
    assert r.x_adv.dtype == torch.float32 and r.x_adv.shape == x.shape
    with pytest.raises(ValueError, match="fp8"):
        m.set_exec("fp8")


def _lenet_state():
    torch.manual_seed(1)
    shapes = {
        "conv1.weight": (6, 1, 5, 5), "conv1.bias": (6,), "conv2.weight": (16, 6, 5, 5), "conv2.bias": (16,),
        "fc1.weight": (120, 400), "fc1.bias": (120,), "fc2.weight": (84, 120), "fc2.bias": (84,),
        "fc3.weight": (10, 84), "fc3.bias": (10,),
    }
    return {k: torch.randn(s) * 0.1 for k, s in shapes.items()}


def test_unlearn_ft_equals_the_command_line(fmnist, scripted, idx_dir, cli, tmp_path):
    torch.set_num_threads(2)
    xtr, ytr = fmnist["train"]
    g = torch.Generator().manual_seed(3)
    forget = sorted(torch.randperm(len(xtr), generator=g)[:300].tolist())
    r = rustworthy.unlearn(scripted, (xtr, ytr), forget, fmnist["test"], "ft", epochs=1, seed=5)
    model_path = tmp_path / "model.pt"
    scripted.save(str(model_path))
    (tmp_path / "forget.json").write_text(json.dumps(forget))
    out = tmp_path / "cli"
    subprocess.run(
        [str(cli), "unlearn", "--model", str(model_path), "--dataset", "fashion-mnist", "--data-dir", str(idx_dir),
         "--recipe", "fmnist-lenet", "--method", "ft", "--epochs", "1", "--forget",
         f"indices:{tmp_path / 'forget.json'}", "--seed", "5", "--threads", "2", "--out", str(out)],
        check=True, capture_output=True,
    )
    rep = json.loads((out / "report.json").read_text())["metrics"]
    for k in ("ua", "ra", "ta", "mia_efficacy", "mia_auc_forget_vs_test"):
        assert r.before[k] == pytest.approx(rep["original"][k], abs=1e-9), (k, r.before, rep["original"])
        assert r.metrics[k] == pytest.approx(rep["unlearned"][k], abs=1e-9), (k, r.metrics, rep["unlearned"])
    # Fine-tuning on the retain set keeps the model useful.
    assert r.metrics["ta"] > 60
    assert set(r.state_dict) >= {"conv1.weight", "fc.bias"}


def test_unlearn_ga_forgets(fmnist, scripted):
    xtr, ytr = fmnist["train"]
    forget = (ytr == 3).nonzero().flatten()[:200]
    r = rustworthy.unlearn(scripted, (xtr, ytr), forget, fmnist["test"], "ga", epochs=3, lr=1e-2)
    # Gradient ascent on the forget set lowers its accuracy: UA (100 - forget accuracy) rises.
    assert r.metrics["ua"] > r.before["ua"] + 5, (r.before, r.metrics)


def test_prune_omp(fmnist, scripted):
    m = rustworthy.load(scripted, x=fmnist["test"][0])
    before = {k: v.clone() for k, v in m.state_dict()}
    p = rustworthy.prune(m, "omp", 0.8)
    assert p.sparsity == pytest.approx(0.8, abs=0.01)
    for k, mask in p.masks.items():
        assert torch.equal(p.state_dict[k] == 0, mask == 0) or (p.state_dict[k][mask == 0] == 0).all()
    # The model given stays dense.
    for k, v in m.state_dict():
        assert torch.equal(v, before[k]), k
    x, y = fmnist["test"]
    snip = rustworthy.prune(scripted, "snip", 0.5, data=(x[:256], y[:256]))
    assert snip.sparsity == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="data"):
        rustworthy.prune(scripted, "snip", 0.5, input_shape=(1, 28, 28))


def test_zo_minimize_counts_queries_and_respects_the_budget():
    target = torch.linspace(-1, 1, 6, dtype=torch.float64)
    calls = []

    def f(v):
        calls.append(1)
        return float(((v - target) ** 2).sum())

    r = rustworthy.zo.minimize(f, torch.zeros(6), steps=2000, budget=3000, lr=0.05)
    assert r.queries == len(calls) <= 3000
    assert r.f < 1e-2 * f(torch.zeros(6))
    assert r.x.shape == (6,) and r.stopped is not None  # the budget ended it

    class Boom(Exception):
        pass

    def bad(v):
        raise Boom("black box failed")

    with pytest.raises(Boom):
        rustworthy.zo.minimize(bad, torch.zeros(3), steps=5)


def test_ctrl_c_stops_a_long_call(fmnist, scripted):
    x, y = fmnist["test"]
    x, y = x[:256], y[:256]
    m = rustworthy.load(scripted, x=x)  # loaded before the timer starts
    # A process started in the background by a shell without job control inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: install it here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            # Seconds even on a fast CPU, far longer than the timer (2,000 steps on 64 images
            # ended first); PGD checks for signals every step, so the call ends soon after.
            rustworthy.attack(m, x, y, "pgd", eps=0.1, steps=10000, batch_size=16, early_stop=False)
        timer.join()
        assert time.perf_counter() - t0 < 20
    finally:
        signal.signal(signal.SIGINT, previous)

    # A handler's own exception comes through as itself.
    class Alarm(Exception):
        pass

    def handler(signum, frame):
        raise Alarm()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Alarm):
            rustworthy.attack(m, x, y, "pgd", eps=0.1, steps=10000, batch_size=16, early_stop=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_bench_unlearn_writes_its_table(idx_dir, tmp_path):
    out = tmp_path / "bench"
    r = rustworthy.bench_unlearn("fmnist-lenet-random10", data_dir=idx_dir, out=str(out), methods=["ft"],
                                 original_epochs=2, original_out=str(tmp_path / "original"))
    names = [row["method"] for row in r["results"]]
    assert names[0] == "retrain" and "ft" in names, names
    assert (out / "results.md").is_file() and "ft" in r["markdown"]
    assert 0 <= r["original"]["ta"] <= 100
    with pytest.raises(ValueError, match="unknown benchmark setting"):
        rustworthy.bench_unlearn("fmnist-lenet-random10", bogus=1)
