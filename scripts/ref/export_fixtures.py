"""Exports PyTorch reference fixtures for the rustworthy-models tests.

For each architecture it builds the reference model of scripts/ref/models.py with a fixed
seed, puts it in a non-trivial state (random BN affine parameters, running statistics from a
few train-mode passes), and writes into OUT:

  {arch}.safetensors      the state dict (safetensors.torch.save_file)
  {arch}.io.safetensors   input   [B, C, H, W] in [0, 1]
                          logits_eval   eval-mode logits of `input`
                          logits_train  train-mode logits of `input` (batch statistics)
                          after_train.{name}  every BN buffer after that one train-mode pass
  manifest.json           the spec of each exported model and its file names

Usage:
  python scripts/ref/export_fixtures.py                      # mlp, lenet, resnet20 -> tests/fixtures/models
  python scripts/ref/export_fixtures.py --out DIR --arch all # all six architectures
"""

import argparse
import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "models")
DEFAULT_ARCHS = ["mlp", "lenet", "resnet20"]

# Which input geometry each architecture is exported with: both channel counts are covered,
# and VGG runs on 28x28 so its ceil-mode pooling is exercised.
DATASET = {
    "mlp": "fashion-mnist",
    "lenet": "fashion-mnist",
    "resnet20": "cifar10",
    "resnet18": "cifar10",
    "preact-resnet18": "fashion-mnist",
    "vgg16-bn": "fashion-mnist",
}


def spec_for(arch):
    if DATASET[arch] == "cifar10":
        return models.cifar10_spec(arch)
    return models.fashion_mnist_spec(arch)


def perturb(model, spec, gen):
    """Random BN affine parameters and running statistics, so every buffer matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, spec["in_channels"], *spec["input_size"], generator=gen))
    model.eval()


def export(arch, out, seed, batch):
    spec = spec_for(arch)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = models.build_model(spec)
    perturb(model, spec, gen)

    x = torch.rand(batch, spec["in_channels"], *spec["input_size"], generator=gen)
    with torch.no_grad():
        logits_eval = model(x)
        trained = copy.deepcopy(model).train()
        logits_train = trained(x)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = f"{arch}.safetensors"
    save_file(state, os.path.join(out, weights))

    io = {"input": x, "logits_eval": logits_eval, "logits_train": logits_train}
    for name, v in trained.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            io[f"after_train.{name}"] = v.contiguous()
    io_name = f"{arch}.io.safetensors"
    save_file(io, os.path.join(out, io_name))
    return {
        "spec": spec,
        "weights": weights,
        "io": io_name,
        "num_params": models.num_params(model),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (created if missing)")
    ap.add_argument("--arch", default=",".join(DEFAULT_ARCHS),
                    help="comma-separated architectures, or `all`")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch", type=int, default=4, help="input batch size")
    args = ap.parse_args()

    archs = models.ARCHS if args.arch == "all" else [a.strip() for a in args.arch.split(",")]
    for a in archs:
        if a not in DATASET:
            ap.error(f"unknown arch {a!r}; valid: {', '.join(models.ARCHS)}")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    manifest = {"torch_version": torch.__version__, "seed": args.seed, "models": []}
    for arch in archs:
        entry = export(arch, args.out, args.seed + 100 * models.ARCHS.index(arch), args.batch)
        manifest["models"].append(entry)
        print(f"{arch:16s} params={entry['num_params']:>10d} -> {entry['weights']}", flush=True)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
