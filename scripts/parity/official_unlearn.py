#!/usr/bin/env python3
"""Run the official Unlearn-Saliency classification code on a rustworthy model and scenario.

The methods themselves are the official functions from a checkout of
OPTML-Group/Unlearn-Saliency (its `Classification/` folder): `unlearn.FT`, `unlearn.GA`,
`unlearn.RL`, `unlearn.FT_prune` (l1-sparse), `unlearn.boundary_expanding`,
`unlearn.boundary_shrink`, `unlearn.fisher_new` (FF), `unlearn.Wfisher` (IU), the SalUn mask of
`generate_mask.save_gradient_ratio` followed by `unlearn.RL` with that mask, and the evaluation of
`main_forget.py` (`trainer.validate` for UA/RA/TA, `evaluation.SVC_MIA` for MIA-Efficacy). This
script only supplies what those functions take: the model (the PyTorch twin of the rustworthy
network, weights loaded from model.safetensors), the loaders (forget / retain / test built from
the rustworthy scenario over the Fashion-MNIST IDX files, images in [0, 1] because the model
normalises internally) and the `args` namespace (the official parser's defaults, overridden per
method). Nothing of the methods is re-implemented.

What is adapted, and why:
  * `torch.Tensor.cuda` returns the tensor itself when CUDA is absent (the official loops call
    `.cuda()` on every batch).
  * Modules the methods never use but the official files import at load time (matplotlib, the
    Hugging Face `datasets` package, lmdb, six) are replaced by inert stubs when not installed.
  * `args.dataset` selects the official RL code path: "cifar10" runs all forget batches, then all
    retain batches each epoch (the current CIFAR-10/SVHN path); "cifar100" runs one shuffled
    mixed stream (the CIFAR-100 path, and the CIFAR-10 path before April 2024). Any other value
    makes the official RL do nothing. Methods `rl-mixed` / `salun-mixed` use the latter.
  * `args.num_indexes_to_replace` is the forget-set size (so FF's 4,500-sample special case is
    not triggered), `args.class_to_replace = -1` (random forgetting).
  * Training loaders are augmented as `--augment` says (default none, as rustworthy unlearns;
    `official` = RandomCrop(28, padding=4) + RandomHorizontalFlip, the official CIFAR transform
    at Fashion-MNIST size). Evaluation loaders never are.

Usage (see scripts/parity/README.md):
  official_unlearn.py --official /path/Unlearn-Saliency --run RUN_DIR --scenario scenario.json \
      --methods ft,ga,rl,salun,l1-sparse --seeds 0,1,2 --out OUT
"""

import argparse
import contextlib
import copy
import gzip
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_PRESET = os.path.join(REPO, "presets", "bench", "fmnist-lenet-random10.toml")
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"

# rustworthy's method defaults (crates/unlearn/src/methods/*.rs); the bench preset overrides
# some of them. Only the settings the official functions read are listed.
RW_DEFAULTS = {
    "ft": {"epochs": 10, "lr": 0.01, "batch_size": 256},
    "ga": {"epochs": 5, "lr": 1e-4, "batch_size": 256},
    "rl": {"epochs": 10, "lr": 0.013, "batch_size": 256},
    "salun": {"epochs": 10, "lr": 0.013, "batch_size": 256, "mask_ratio": 0.5},
    "l1-sparse": {"epochs": 10, "lr": 0.01, "batch_size": 256, "alpha": 5e-4, "no_l1_epochs": 0},
    "be": {"epochs": 10, "lr": 1e-5, "batch_size": 256},
    "bs": {"epochs": 10, "lr": 1e-5, "batch_size": 256},
    "ff": {"alpha": 1e-8, "samples": None},
    "iu": {"alpha": 0.2, "batch_size": 256},
}
# Methods that take the settings of another one (same official function, other RL path).
ALIASES = {"rl-mixed": "rl", "salun-mixed": "salun"}
METHODS = list(RW_DEFAULTS) + list(ALIASES)


# --------------------------------------------------------------------------------------------
# Environment of the official code


def _stub(name):
    mod = types.ModuleType(name)
    mod.__path__ = []  # lets `import name.sub` resolve to further stubs

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*a, **k):
            raise RuntimeError(f"{name}.{attr} is a stub (not installed; unused by this harness)")

        return unavailable

    mod.__getattr__ = __getattr__
    return mod


def prepare_official(path):
    """Puts the official Classification folder on sys.path and imports what is needed."""
    cls = path if os.path.isfile(os.path.join(path, "main_forget.py")) else os.path.join(path, "Classification")
    if not os.path.isfile(os.path.join(cls, "main_forget.py")):
        sys.exit(f"--official: no Classification/main_forget.py under {path}")
    for top, subs in [("matplotlib", ["matplotlib.pyplot"]), ("datasets", ["datasets.load"]),
                      ("lmdb", []), ("six", [])]:
        if importlib.util.find_spec(top) is None:
            sys.modules[top] = _stub(top)
            for s in subs:
                sys.modules[s] = _stub(s)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path.insert(0, cls)
    with contextlib.redirect_stdout(io.StringIO()):
        # Since commit f31f82e (2024-04-04) trainer/__init__.py imports `train_with_rewind`,
        # which trainer/train.py no longer defines, so `import trainer` (and with it
        # main_forget.py) fails. Load trainer/train.py first and give it an inert name.
        pkg = types.ModuleType("trainer")
        pkg.__path__ = [os.path.join(cls, "trainer")]
        sys.modules["trainer"] = pkg
        tt = importlib.import_module("trainer.train")
        if not hasattr(tt, "train_with_rewind"):
            tt.train_with_rewind = _stub("trainer.train").train_with_rewind
        del sys.modules["trainer"]
        import arg_parser  # noqa: F401
        import evaluation  # noqa: F401
        import generate_mask  # noqa: F401
        import trainer  # noqa: F401
        import unlearn  # noqa: F401
        import utils  # noqa: F401
    return cls


def official_args(save_dir):
    """The official parser's defaults (what `main_forget.py` sees with no flags)."""
    import arg_parser

    argv = sys.argv
    sys.argv = ["main_forget.py"]
    try:
        args = arg_parser.parse_args()
    finally:
        sys.argv = argv
    args.save_dir = save_dir
    args.print_freq = 10**9
    args.imagenet_arch = False
    args.num_classes = 10
    args.class_to_replace = -1
    return args


def repo_commit(root):
    """The checkout's commit: a COMMIT file at its root (as written for a `git archive`
    extract), else `git rev-parse HEAD` when `root` is itself a git work tree's top level."""
    marker = os.path.join(root, "COMMIT")
    if os.path.isfile(marker):
        return open(marker).read().strip()
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(root):
            head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
            return head.stdout.strip() or None
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------
# Data


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_file(data_dir, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    sys.exit(f"missing {stem}[.gz] in {data_dir}")


class ImageSet(torch.utils.data.Dataset):
    """Images (uint8 [N, H, W]) and labels as the official loops expect: `.data`, `.targets`
    (numpy) and `(x, y)` items with x in [0, 1], shape [1, H, W]."""

    def __init__(self, data, targets, transform=None):
        self.data = data
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform
        # uint8 / 255 in float32, as torchvision's ToTensor()
        self.x = torch.from_numpy(np.array(data, dtype=np.uint8)).unsqueeze(1).float().div_(255.0)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = self.x[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])


def train_transform(kind, size):
    from torchvision import transforms

    if kind == "none":
        return None
    if kind == "flip":
        return transforms.RandomHorizontalFlip()
    if kind == "official":
        return transforms.Compose([transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip()])
    raise ValueError(kind)


def load_sets(data_dir, scenario, augment):
    xtr = read_idx(idx_file(data_dir, "train-images-idx3-ubyte"))
    ytr = read_idx(idx_file(data_dir, "train-labels-idx1-ubyte"))
    xte = read_idx(idx_file(data_dir, "t10k-images-idx3-ubyte"))
    yte = read_idx(idx_file(data_dir, "t10k-labels-idx1-ubyte"))
    forget = np.asarray(scenario["forget"], dtype=np.int64)
    retain = np.asarray(scenario["retain"], dtype=np.int64)
    if len(np.intersect1d(forget, retain)):
        sys.exit("scenario: forget and retain overlap")
    classes = scenario.get("forget_classes") or []
    if classes:  # class-wise scenario: the test set drops the forgotten classes
        keep = ~np.isin(yte, classes)
        xte, yte = xte[keep], yte[keep]
    t = train_transform(augment, xtr.shape[1])
    return {
        # training views (augmented as asked) and evaluation views (never augmented)
        "forget": ImageSet(xtr[forget], ytr[forget], t),
        "retain": ImageSet(xtr[retain], ytr[retain], t),
        "forget_eval": ImageSet(xtr[forget], ytr[forget]),
        "retain_eval": ImageSet(xtr[retain], ytr[retain]),
        "test": ImageSet(xte, yte),
    }


def loader(ds, batch_size, shuffle):
    # As main_forget.replace_loader_dataset: num_workers 0, no drop_last.
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=0)


# --------------------------------------------------------------------------------------------
# Model


def load_twin(run_dir):
    spec_path = os.path.join(REPO, "scripts", "ref", "models.py")
    spec = importlib.util.spec_from_file_location("rw_ref_models", spec_path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    from safetensors.torch import load_file

    meta = json.load(open(os.path.join(run_dir, "model.json")))
    mspec = dict(meta["model_spec"])
    mspec["input_size"] = list(mspec["input_size"])
    model = ref.build_model(mspec)
    sd = load_file(os.path.join(run_dir, meta.get("model_file", "model.safetensors")))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model, meta


# --------------------------------------------------------------------------------------------
# One run


def parse_value(v):
    if v.lower() == "none":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    sys.exit(f"--set: cannot read value {v!r} as a number")


def settings(preset, overrides):
    """rustworthy defaults, then the preset's [method.*] tables, then --set overrides."""
    out = {}
    for m, defaults in RW_DEFAULTS.items():
        s = dict(defaults)
        s.update({k: v for k, v in preset.get("method", {}).get(m, {}).items() if k in s})
        out[m] = s
    for m, k, v in overrides:
        m = ALIASES.get(m, m)
        if m not in out or k not in out[m]:
            sys.exit(f"--set {m}.{k}: unknown (known for {m}: {', '.join(out.get(m, {}))})")
        out[m][k] = parse_value(v)
    return out


def evaluate(model, sets, args, batch_size, mia):
    """UA / RA / TA and MIA-Efficacy exactly as main_forget.py:141-186 computes them."""
    import evaluation
    import trainer

    criterion = torch.nn.CrossEntropyLoss()
    acc = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for name, ds in [("retain", sets["retain_eval"]), ("forget", sets["forget_eval"]), ("test", sets["test"])]:
            acc[name] = float(trainer.validate(loader(ds, batch_size, name == "forget"), model, criterion, args))
    out = {"UA": 100.0 - acc["forget"], "RA": acc["retain"], "TA": acc["test"]}
    if mia:
        test_len = len(sets["test"])
        shadow_train = torch.utils.data.Subset(sets["retain_eval"], list(range(test_len)))
        with contextlib.redirect_stdout(io.StringIO()):
            m = evaluation.SVC_MIA(
                shadow_train=loader(shadow_train, batch_size, False),
                shadow_test=loader(sets["test"], batch_size, False),
                target_train=None,
                target_test=loader(sets["forget_eval"], batch_size, True),
                model=model,
            )
        out["MIA"] = 100.0 * float(m["confidence"])
        out["SVC_MIA_forget_efficacy"] = {k: float(v) for k, v in m.items()}
    return out


def run_method(method, s, model, sets, base_args, seed, log, workdir):
    import generate_mask
    import unlearn
    import utils

    impl = ALIASES.get(method, method)
    args = copy.deepcopy(base_args)
    args.dataset = "cifar100" if method in ALIASES else "cifar10"
    args.seed = seed
    args.num_indexes_to_replace = len(sets["forget"])
    args.batch_size = s.get("batch_size", args.batch_size)
    if "epochs" in s:
        args.unlearn_epochs = s["epochs"]
    if "lr" in s:
        args.unlearn_lr = s["lr"]
    if "alpha" in s:
        args.alpha = s["alpha"]
    if "no_l1_epochs" in s:
        args.no_l1_epochs = s["no_l1_epochs"]
    retain = sets["retain"]
    extra = {}
    if impl == "ff" and s.get("samples") and s["samples"] < len(retain):
        # The preset's FF subsample: a seeded subset of the retain set (sorted, as rustworthy).
        pick = np.sort(np.random.RandomState(seed).choice(len(retain), s["samples"], replace=False))
        retain = torch.utils.data.Subset(retain, pick.tolist())
        extra["ff_samples"] = len(pick)

    def loaders():
        # main_forget.py: setup_seed(seed) then DataLoader(shuffle=True), batch args.batch_size.
        utils.setup_seed(seed)
        return {
            "retain": loader(retain, args.batch_size, True),
            "forget": loader(sets["forget"], args.batch_size, True),
            "val": loader(sets["test"], args.batch_size, False),
            "test": loader(sets["test"], args.batch_size, False),
        }

    criterion = torch.nn.CrossEntropyLoss()
    t0 = time.time()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if impl == "ft":
            unlearn.get_unlearn_method("FT")(loaders(), model, criterion, args)
        elif impl == "ga":
            unlearn.get_unlearn_method("GA")(loaders(), model, criterion, args)
        elif impl == "rl":
            unlearn.get_unlearn_method("RL")(loaders(), model, criterion, args)
        elif impl == "l1-sparse":
            unlearn.get_unlearn_method("FT_prune")(loaders(), model, criterion, args)
        elif impl == "be":
            unlearn.get_unlearn_method("boundary_expanding")(loaders(), model, criterion, args)
        elif impl == "bs":
            unlearn.get_unlearn_method("boundary_shrink")(loaders(), model, criterion, args)
        elif impl == "ff":
            unlearn.get_unlearn_method("fisher_new")(loaders(), model, criterion, args)
        elif impl == "iu":
            unlearn.get_unlearn_method("wfisher")(loaders(), model, criterion, args)
        elif impl == "salun":
            ratio = s["mask_ratio"]
            if round(ratio * 10) != ratio * 10 or not 0 < ratio <= 1:
                raise ValueError("salun mask_ratio must be one of 0.1, 0.2, ..., 1.0 (generate_mask.py)")
            # generate_mask.py: its own process, seeded the same way, one pass over D_f.
            mask_dir = os.path.join(workdir, f"mask-seed{seed}")
            os.makedirs(mask_dir, exist_ok=True)
            margs = copy.deepcopy(args)
            margs.save_dir = mask_dir
            margs.unlearn_epochs = 1
            tm = time.time()
            generate_mask.save_gradient_ratio(loaders(), model, criterion, margs)
            extra["mask_seconds"] = time.time() - tm
            mask = torch.load(os.path.join(mask_dir, f"with_{round(ratio, 1)}.pt"))
            kept = sum(int(v.sum()) for v in mask.values())
            total = sum(v.numel() for v in mask.values())
            extra["mask_density"] = kept / total
            # main_random.py: RL with the mask.
            unlearn.get_unlearn_method("RL")(loaders(), model, criterion, args, mask)
        else:
            raise ValueError(method)
    extra["seconds"] = time.time() - t0
    extra["num_outputs"] = int(model(sets["test"][0][0].unsqueeze(0)).shape[1])
    return args, extra


def fmt(vals):
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        # official_unlearn.py --render A/results.json [B/results.json ...]: one table for all
        print(render([json.load(open(f)) for f in sys.argv[2:]]), end="")
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="checkout of Unlearn-Saliency (or its Classification/)")
    p.add_argument("--run", required=True, help="rustworthy run folder (model.safetensors, model.json)")
    p.add_argument("--scenario", required=True, help="scenario.json of a rustworthy unlearn run")
    p.add_argument("--methods", default="ft,ga,rl,salun,l1-sparse", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="bench preset whose [method.*] tables give the defaults")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a setting, e.g. --set rl.epochs=10 --set l1-sparse.alpha=1e-4")
    p.add_argument("--augment", choices=["none", "flip", "official"], default="none",
                   help="augmentation of the unlearning loaders (official: crop(pad 4)+flip)")
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="Fashion-MNIST IDX files")
    p.add_argument("--no-mia", action="store_true", help="skip SVC_MIA (it fits five SVMs per run)")
    p.add_argument("--no-original", action="store_true", help="skip evaluating the original model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    cls = prepare_official(os.path.abspath(a.official))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            sys.exit(f"unknown method {m}; known: {', '.join(METHODS)}")
    seeds = [int(x) for x in a.seeds.split(",")]
    preset = tomllib.load(open(a.preset, "rb")) if a.preset else {}
    overrides = []
    for kv in a.set:
        key, eq, v = kv.partition("=")
        m, dot, k = key.partition(".")
        if not eq or not dot:
            sys.exit(f"--set {kv!r}: expected METHOD.KEY=VALUE")
        overrides.append((m, k, v))
    cfg = settings(preset, overrides)
    scenario = json.load(open(a.scenario))
    sets = load_sets(a.data_dir, scenario, a.augment)
    original, meta = load_twin(a.run)
    original.eval()
    base_args = official_args(os.path.join(a.out, "work"))
    os.makedirs(base_args.save_dir, exist_ok=True)
    eval_bs = base_args.batch_size

    results = {
        "official_repo": cls,
        "official_commit": repo_commit(os.path.dirname(cls)) or repo_commit(cls),
        "run": os.path.abspath(a.run),
        "scenario": os.path.abspath(a.scenario),
        "forget": len(sets["forget"]),
        "retain": len(sets["retain"]),
        "test": len(sets["test"]),
        "augment": a.augment,
        "torch": torch.__version__,
        "threads": a.threads,
        "settings": {m: cfg[ALIASES.get(m, m)] for m in methods},
        "runs": [],
    }
    try:
        import sklearn

        results["sklearn"] = sklearn.__version__
    except ImportError:
        pass
    log_path = os.path.join(a.out, "official.log")
    with open(log_path, "a") as log:
        if not a.no_original:
            t = time.time()
            r = evaluate(original, sets, base_args, eval_bs, not a.no_mia)
            results["original"] = r
            print(f"original: {json.dumps({k: round(v, 2) for k, v in r.items() if k != 'SVC_MIA_forget_efficacy'})}"
                  f"  ({time.time() - t:.0f}s)", flush=True)
        for m in methods:
            for seed in seeds:
                model = copy.deepcopy(original)
                args, extra = run_method(m, cfg[ALIASES.get(m, m)], model, sets, base_args, seed, log, a.out)
                t = time.time()
                if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    r = evaluate(model, sets, args, eval_bs, not a.no_mia)
                else:  # the official code has no guard; its SVC would fail on NaN features
                    r = {"diverged": True}
                extra["eval_seconds"] = time.time() - t
                results["runs"].append({"method": m, "seed": seed, **r, **extra,
                                        "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, type(None)))}})
                if r.get("diverged"):
                    print(f"{m} seed {seed}: diverged (non-finite weights)  ({extra['seconds']:.0f}s)", flush=True)
                else:
                    print(f"{m} seed {seed}: UA {r['UA']:.2f} RA {r['RA']:.2f} TA {r['TA']:.2f}"
                          + (f" MIA {r['MIA']:.2f}" if "MIA" in r else "")
                          + f"  ({extra['seconds']:.0f}s + eval {extra['eval_seconds']:.0f}s)", flush=True)
                with open(os.path.join(a.out, "results.json"), "w") as f:
                    json.dump(results, f, indent=1)

    table = render([results])
    open(os.path.join(a.out, "results.md"), "w").write(table)
    print(table)


def render(all_results):
    """Markdown table over one or more results.json contents: mean ± sample std over seeds."""
    first = all_results[0]
    runs = [r for res in all_results for r in res["runs"]]
    settings_of = {}
    for res in all_results:
        settings_of.update(res["settings"])
    methods = list(dict.fromkeys(r["method"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        f"Official Unlearn-Saliency code (commit {first['official_commit']}) on {first['run']}, "
        f"scenario {first['scenario']} (|D_f| = {first['forget']}, |D_r| = {first['retain']}, "
        f"|D_test| = {first['test']}); seeds {','.join(map(str, seeds))}; augmentation "
        f"{', '.join(sorted({res['augment'] for res in all_results}))}; torch {first['torch']}, "
        f"{first['threads']} thread(s) per process. Mean ± sample std over seeds; seconds = the "
        f"unlearning call only (evaluation excluded).",
        "",
        "| method | settings | UA | RA | TA | MIA-Efficacy | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    if "original" in first:
        o = first["original"]
        lines.append(f"| original | – | {o['UA']:.2f} | {o['RA']:.2f} | {o['TA']:.2f} | "
                     f"{o.get('MIA', float('nan')):.2f} | – |")
    for m in methods:
        rs = [r for r in runs if r["method"] == m and not r.get("diverged")]
        bad = sum(1 for r in runs if r["method"] == m and r.get("diverged"))
        s = ", ".join(f"{k} {v}" for k, v in settings_of[m].items() if v is not None)
        if bad:
            s += f" ({bad} of {bad + len(rs)} seeds diverged to NaN; stats over the rest)"
        cols = [fmt([r[k] for r in rs if k in r]) for k in ("UA", "RA", "TA", "MIA")]
        secs = fmt([r["seconds"] for r in runs if r["method"] == m])
        lines.append(f"| {m} | {s} | " + " | ".join(cols) + f" | {secs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
