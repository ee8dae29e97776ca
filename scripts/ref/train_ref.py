#!/usr/bin/env python3
"""PyTorch reference trainer for the training benchmark (scripts/bench-train.sh).

Trains a model of scripts/ref/models.py on Fashion-MNIST with the recipe `rustworthy train`
uses, in eager PyTorch, and prints one JSON line: train seconds, test accuracy, settings.

The recipe, step for step as in crates/train/src/trainer.rs:
  * the full 60k training set (the benchmark runs rustworthy with val_fraction = 0), or the
    `train` indices of a rustworthy split.json (--split-json); a fresh random order every
    epoch, batches of --batch-size, the last one partial (no drop_last);
  * per batch: random crop with zero padding --crop-padding (offsets uniform in 0..=2p per
    image and axis, like torchvision's RandomCrop(28, padding=p)), then a horizontal flip with
    probability 0.5 (RandomHorizontalFlip) when --hflip 1;
  * model in train mode, mean cross-entropy, SGD with PyTorch semantics (momentum, Nesterov,
    L2 weight decay added to the gradient), the learning rate set before every step from the
    schedule evaluated at the fractional epoch `epoch + step / steps_per_epoch`:
    cosine: min_lr + (lr - min_lr) * (1 + cos(pi * t / epochs)) / 2;
  * running train loss / accuracy accumulated on the device (read once per epoch);
  * test accuracy of the final model in eval mode, batches of 1000.

Two input pipelines:
  --loader dataloader  what users of the reference code run: a torch.utils.data.Dataset of
                       uint8 images whose __getitem__ converts one image to float in [0, 1]
                       and applies the random crop / flip to that one CPU tensor, a DataLoader
                       with shuffle, --num-workers worker processes (default 2 on CUDA, 0 on
                       CPU), pin_memory on CUDA, each batch copied to the device.
  --loader tensor      the fastest eager PyTorch, like-for-like with rustworthy: the whole
                       training set resident on the device as one float tensor, a randperm per
                       epoch, batched crop (one gather) and flip (one where) on the device.

Timing matches `timings_s.train` of rustworthy's report: it starts after the data is loaded
from disk (and, in tensor mode, copied to the device), the model is built and the optimizer
object is constructed (which imports torch._dynamo once per process), and stops after the
last optimizer step (CUDA synchronized); the final test evaluation is not included.

    .venv/bin/python scripts/ref/train_ref.py --arch lenet --epochs 3 --loader tensor
"""

import argparse
import gzip
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import ARCHS, build_model, fashion_mnist_spec, num_params  # noqa: E402

DEFAULT_DATA_DIRS = ["/usr/share/datasets/fashion-mnist"]


# ---------------------------------------------------------------------------------------------
# Data


def read_idx_gz(path):
    """Reads an IDX file (gzip-compressed) into a numpy array of its declared shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: element type 0x{raw[2]:02x}, expected unsigned byte (0x08)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != count:
        raise ValueError(f"{path}: {len(raw) - offset} data bytes, header says {count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def find_data_dir(explicit):
    candidates = [explicit] if explicit else []
    if not explicit:
        if os.environ.get("RUSTWORTHY_DATA"):
            env = os.environ["RUSTWORTHY_DATA"]
            candidates += [os.path.join(env, "fashion-mnist"), env]
        candidates += DEFAULT_DATA_DIRS
    for d in candidates:
        if d and os.path.isfile(os.path.join(d, "train-images-idx3-ubyte.gz")):
            return d
    raise SystemExit(
        "Fashion-MNIST not found (looked in: " + ", ".join(c for c in candidates if c)
        + "); pass --data-dir"
    )


def load_fashion_mnist(data_dir):
    """uint8 images [N, 1, 28, 28] and int64 labels [N] of the train and test splits."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx_gz(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx_gz(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{split}: inconsistent shapes {x.shape} / {y.shape}")
        out[split] = (
            torch.from_numpy(x.copy()).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
        )
    return out


def to_unit_float(x_uint8):
    return x_uint8.to(torch.float32).div_(255.0)


# ---------------------------------------------------------------------------------------------
# Per-sample transforms (dataloader mode): the equivalents of torchvision's
# RandomCrop(size, padding=p) and RandomHorizontalFlip(0.5) on one [C, H, W] tensor.


class RandomCrop:
    def __init__(self, padding):
        self.p = padding

    def __call__(self, img):
        p = self.p
        if p <= 0:
            return img
        _, h, w = img.shape
        padded = F.pad(img, (p, p, p, p))  # zero fill
        i = int(torch.randint(0, 2 * p + 1, (1,)))
        j = int(torch.randint(0, 2 * p + 1, (1,)))
        return padded[:, i: i + h, j: j + w]


class RandomHorizontalFlip:
    def __call__(self, img):
        if torch.rand(1).item() < 0.5:
            return img.flip(-1)
        return img


class FashionMnistTrain(torch.utils.data.Dataset):
    """uint8 images; each item is converted to float in [0, 1] and then transformed."""

    def __init__(self, images_uint8, labels, transforms):
        self.images = images_uint8
        self.labels = labels
        self.transforms = transforms

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        img = to_unit_float(self.images[i])
        for t in self.transforms:
            img = t(img)
        return img, self.labels[i]


# ---------------------------------------------------------------------------------------------
# Batched transforms (tensor mode), on the batch's device.


def batch_random_crop(x, p, generator):
    """Per-image random crop of the zero-padded batch, as one gather."""
    b, c, h, w = x.shape
    dev = x.device
    wp = w + 2 * p
    padded = F.pad(x, (p, p, p, p)).reshape(b, c, -1)
    off = torch.randint(0, 2 * p + 1, (b, 2), device=dev, generator=generator)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    index = (off[:, 0].view(b, 1, 1) + rows) * wp + (off[:, 1].view(b, 1, 1) + cols)
    index = index.view(b, 1, h * w).expand(b, c, h * w)
    return padded.gather(2, index).view(b, c, h, w)


def batch_random_hflip(x, generator):
    b = x.shape[0]
    m = torch.rand(b, device=x.device, generator=generator) < 0.5
    return torch.where(m.view(b, 1, 1, 1), x.flip(3), x)


# ---------------------------------------------------------------------------------------------
# Schedule (crates/train/src/schedule.rs)


def lr_at(args, t):
    total = max(args.epochs, 1)
    frac = min(max(t / total, 0.0), 1.0)
    if args.schedule == "constant":
        lr = args.lr
    elif args.schedule == "cosine":
        lr = args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * frac))
    else:
        raise ValueError(args.schedule)
    return lr


# ---------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(model, x, y, device, batch_size=1000):
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch_size):
            xb = x[lo: lo + batch_size].to(device)
            yb = y[lo: lo + batch_size].to(device)
            out = model(xb)
            loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
            correct += (out.argmax(-1) == yb).sum()
    n = x.shape[0]
    return 100.0 * correct.item() / n, loss_sum.item() / n


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="lenet", choices=ARCHS + ["lenet5"])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--nesterov", type=int, default=1, choices=[0, 1])
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--crop-padding", type=int, default=0)
    ap.add_argument("--hflip", type=int, default=1, choices=[0, 1])
    ap.add_argument("--loader", default="tensor", choices=["tensor", "dataloader"])
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers (dataloader mode; default 2 on CUDA, 0 on CPU)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--split-json", default=None,
                    help="train on the `train` indices of this file (the split.json a "
                         "rustworthy run writes), e.g. to reproduce its --train-subset")
    ap.add_argument("--eval-batch-size", type=int, default=1000)
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be >= 1")
    if args.crop_padding < 0:
        ap.error("--crop-padding must be >= 0")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        ap.error("--lr must be > 0")
    if args.nesterov and args.momentum <= 0:
        ap.error("--nesterov 1 needs --momentum > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is false")
    if args.num_workers is None:
        args.num_workers = 2 if device.type == "cuda" else 0
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # Data from disk (not timed).
    t_load = time.perf_counter()
    data = load_fashion_mnist(find_data_dir(args.data_dir))
    train_x_u8, train_y = data["train"]
    if args.split_json:
        with open(args.split_json) as f:
            idx = json.load(f)["train"]
        if not idx or min(idx) < 0 or max(idx) >= train_x_u8.shape[0]:
            raise SystemExit(f"{args.split_json}: train indices out of range")
        idx = torch.tensor(idx, dtype=torch.int64)
        train_x_u8, train_y = train_x_u8[idx], train_y[idx]
    test_x = to_unit_float(data["test"][0])
    test_y = data["test"][1]
    n = train_x_u8.shape[0]
    if args.loader == "tensor":
        train_x_dev = to_unit_float(train_x_u8).to(device)
        train_y_dev = train_y.to(device)
    sync(device)
    load_seconds = time.perf_counter() - t_load

    torch.manual_seed(args.seed)
    spec = fashion_mnist_spec("lenet" if args.arch == "lenet5" else args.arch)
    model = build_model(spec).to(device)
    sync(device)

    steps_per_epoch = math.ceil(n / args.batch_size)
    history = []

    # Built before the clock starts: the first optimizer of a process imports torch._dynamo
    # (about 1 s here), a one-time start-up cost like `import torch`, not training work.
    t_setup = time.perf_counter()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=lr_at(args, 0.0),
        momentum=args.momentum,
        nesterov=bool(args.nesterov),
        weight_decay=args.weight_decay,
    )
    setup_seconds = time.perf_counter() - t_setup

    t0 = time.perf_counter()
    if args.loader == "dataloader":
        transforms = []
        if args.crop_padding > 0:
            transforms.append(RandomCrop(args.crop_padding))
        if args.hflip:
            transforms.append(RandomHorizontalFlip())
        loader_gen = torch.Generator()
        loader_gen.manual_seed(args.seed)
        loader = torch.utils.data.DataLoader(
            FashionMnistTrain(train_x_u8, train_y, transforms),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
            generator=loader_gen,
        )
        non_blocking = device.type == "cuda"
    else:
        gen = torch.Generator(device=device)
        gen.manual_seed(args.seed)

    model.train()
    lr = lr_at(args, 0.0)
    for epoch in range(args.epochs):
        te = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        if args.loader == "dataloader":
            batches = ((x.to(device, non_blocking=non_blocking),
                        y.to(device, non_blocking=non_blocking)) for x, y in loader)
        else:
            perm = torch.randperm(n, device=device, generator=gen)

            def tensor_batches(perm=perm):
                for lo in range(0, n, args.batch_size):
                    idx = perm[lo: lo + args.batch_size]
                    x = train_x_dev.index_select(0, idx)
                    if args.crop_padding > 0:
                        x = batch_random_crop(x, args.crop_padding, gen)
                    if args.hflip:
                        x = batch_random_hflip(x, gen)
                    yield x, train_y_dev.index_select(0, idx)

            batches = tensor_batches()
        steps = 0
        for step, (x, y) in enumerate(batches):
            lr = lr_at(args, epoch + step / steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum += loss.detach() * y.shape[0]
                correct += (out.argmax(-1) == y).sum()
            steps += 1
        if steps != steps_per_epoch:
            raise RuntimeError(f"epoch {epoch + 1}: {steps} steps, expected {steps_per_epoch}")
        rec = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum.item() / n,
            "train_accuracy": 100.0 * correct.item() / n,
            "seconds": time.perf_counter() - te,
        }
        if not math.isfinite(rec["train_loss"]):
            raise SystemExit(f"training loss became {rec['train_loss']} in epoch {epoch + 1}")
        history.append(rec)
        log(f"[ref {args.loader}] epoch {epoch + 1}/{args.epochs}  loss {rec['train_loss']:.4f}"
            f"  train {rec['train_accuracy']:.2f}%  lr {lr:.5f}  {rec['seconds']:.1f}s")
    sync(device)
    train_seconds = time.perf_counter() - t0

    t_eval = time.perf_counter()
    test_acc, test_loss = evaluate(model, test_x, test_y, device, args.eval_batch_size)
    eval_seconds = time.perf_counter() - t_eval

    result = {
        "implementation": f"pytorch-{args.loader}",
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / args.epochs,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "train_loss": history[-1]["train_loss"],
        "train_accuracy": history[-1]["train_accuracy"],
        "load_seconds": load_seconds,
        "setup_seconds": setup_seconds,
        "eval_seconds": eval_seconds,
        "history": history,
        "settings": {
            "arch": args.arch,
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "steps_per_epoch": steps_per_epoch,
            "train_samples": n,
            "lr": args.lr,
            "schedule": args.schedule,
            "min_lr": args.min_lr,
            "momentum": args.momentum,
            "nesterov": bool(args.nesterov),
            "weight_decay": args.weight_decay,
            "crop_padding": args.crop_padding,
            "hflip": bool(args.hflip),
            "loader": args.loader,
            "num_workers": args.num_workers if args.loader == "dataloader" else None,
            "pin_memory": device.type == "cuda" if args.loader == "dataloader" else None,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
            "split_json": args.split_json,
            "num_params": num_params(model),
            "torch": torch.__version__,
        },
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
