"""Shared fixtures: a small CNN trained for one epoch on 3,000 real Fashion-MNIST images (the
Debian package's IDX files), scripted; the subset itself; and IDX copies of it for the CLI."""

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST = 3000, 500


def _data_dir():
    for d in (os.environ.get("RUSTWORTHY_DATA"), "/usr/share/datasets/fashion-mnist", str(ROOT / "data" / "fashion-mnist")):
        if d and Path(d).is_dir():
            return Path(d)
    return None


def _read_idx(d, stem):
    for name in (stem, stem + ".gz"):
        p = d / name
        if p.exists():
            raw = p.read_bytes()
            if name.endswith(".gz"):
                raw = gzip.decompress(raw)
            ndim = raw[3]
            dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise FileNotFoundError(d / stem)


@pytest.fixture(scope="session")
def fmnist():
    d = _data_dir()
    if d is None:
        if os.environ.get("RUSTWORTHY_REQUIRE_DATA") == "1":
            pytest.fail("Fashion-MNIST not found (scripts/setup.sh installs it)")
        pytest.skip("Fashion-MNIST not found")
    xtr = _read_idx(d, "train-images-idx3-ubyte")[:N_TRAIN]
    ytr = _read_idx(d, "train-labels-idx1-ubyte")[:N_TRAIN]
    xte = _read_idx(d, "t10k-images-idx3-ubyte")[:N_TEST]
    yte = _read_idx(d, "t10k-labels-idx1-ubyte")[:N_TEST]
    u8 = {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}
    f = lambda a: torch.from_numpy(a.copy()).to(torch.float32).div_(255.0).unsqueeze(1)  # noqa: E731
    l = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return {"train": (f(xtr), l(ytr)), "test": (f(xte), l(yte)), "u8": u8}


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="session")
def scripted(fmnist):
    sys.path.insert(0, str(ROOT / "scripts" / "ref"))
    from torchscript_attack_ref import train  # the parity fixtures' training loop

    torch.manual_seed(0)
    x, y = fmnist["train"]
    return torch.jit.script(train(Cnn(), x, y, epochs=2, lr=0.05, seed=0))


@pytest.fixture(scope="session")
def idx_dir(fmnist, tmp_path_factory):
    """The subset as IDX files, for the command line."""
    d = tmp_path_factory.mktemp("fmnist-subset")
    u8 = fmnist["u8"]
    for name, a in (
        ("train-images-idx3-ubyte", u8["xtr"]),
        ("train-labels-idx1-ubyte", u8["ytr"]),
        ("t10k-images-idx3-ubyte", u8["xte"]),
        ("t10k-labels-idx1-ubyte", u8["yte"]),
    ):
        head = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
        (d / name).write_bytes(head + a.astype(np.uint8).tobytes())
    return d


@pytest.fixture(scope="session")
def cli():
    p = ROOT / "target" / "release" / "rustworthy"
    if not p.exists():
        pytest.skip("the rustworthy binary is not built (cargo build --release)")
    return p
