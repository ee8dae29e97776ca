"""Writes foreign-layout PyTorch weights for the rustworthy-models foreign-weights tests.

Into OUT (plain torch and safetensors, no torchvision):

  saliency_sd.pth          a CIFAR ResNet-18 in the Unlearn-Saliency layout (`normalize.mean` /
                           `normalize.std` buffers, `downsample` projections, `fc` head) for
                           1x28x28 inputs and 10 classes, torch.save(model.state_dict())
  saliency_ckpt.pth.tar    the same as a training checkpoint: {'state_dict', 'epoch', 'optimizer',
                           'scheduler', 'result', 'best_sa'}
  saliency_dp.pth          the DataParallel state dict (`module.` prefix)
  saliency_legacy.pth      the state dict in the legacy (non-zip) torch.save format
  saliency_sd.safetensors  the state dict as safetensors
  saliency.io.safetensors  `input` [B, 1, 28, 28] in [0, 1] and `logits` (eval mode)
  cifar_sd.pth             a ResNet-18 in the "pytorch-cifar" layout (`linear` head, `shortcut`
                           projections, no normalization buffers) for 3x32x32 inputs, 10 classes
  cifar.io.safetensors     its `input` and eval-mode `logits`
  dtypes.pth, dtypes_legacy.pth
                           tensors of every supported dtype, views with offsets and strides
                           sharing one storage, a stride-0 expansion, a scalar, an empty tensor
  dtypes.expected.safetensors
                           contiguous copies of the same tensors
  manifest.json            mean/std of the saliency model's normalization

With --malicious MARKER it also writes evil_os.pth, evil_eval.pth and evil_os_legacy.pth, whose
pickles would run `touch MARKER` through os.system / builtins.eval if they were unpickled with
plain pickle (the reader under test must refuse them), and scripted.pt, a TorchScript archive.

Usage: python scripts/ref/export_foreign.py --out DIR [--parts saliency,cifar,dtypes]
                                            [--malicious MARKER]
"""

import argparse
import collections
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

SALIENCY_MEAN = [0.3125]
SALIENCY_STD = [0.4375]
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]


class ChannelNormalize(nn.Module):
    """(x - mean) / std per channel, with mean/std as (optionally persistent) buffers."""

    def __init__(self, mean, std, persistent=True):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean), persistent=persistent)
        self.register_buffer("std", torch.tensor(std), persistent=persistent)

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class Block(nn.Module):
    """Basic residual block; the projection (when shapes change) is named `proj_name`."""

    def __init__(self, cin, cout, stride, proj_name):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj_name = proj_name
        proj = None
        if stride != 1 or cin != cout:
            proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        setattr(self, proj_name, proj)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        proj = getattr(self, self.proj_name)
        return F.relu(out + (x if proj is None else proj(x)))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no max-pool) in one of two naming layouts."""

    def __init__(self, in_channels, num_classes, layout, mean, std):
        super().__init__()
        saliency = layout == "saliency"
        self.normalize = ChannelNormalize(mean, std, persistent=saliency)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        proj = "downsample" if saliency else "shortcut"
        cin = 64
        for i, (width, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = []
            for j in range(2):
                blocks.append(Block(cin, width, stride if j == 0 else 1, proj))
                cin = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.head_name = "fc" if saliency else "linear"
        setattr(self, self.head_name, nn.Linear(512, num_classes))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return getattr(self, self.head_name)(x)


def randomize(model, gen):
    """Non-trivial weights and batch-norm state, so every tensor matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.05)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    model.eval()


def export_saliency(out, batch):
    gen = torch.Generator().manual_seed(11)
    sal = ResNet18(1, 10, "saliency", SALIENCY_MEAN, SALIENCY_STD)
    randomize(sal, gen)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    with torch.no_grad():
        logits = sal(x)
    sd = sal.state_dict()
    torch.save(sd, os.path.join(out, "saliency_sd.pth"))
    opt = torch.optim.SGD(sal.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[91, 136], gamma=0.1)
    # Optimizer state as after a step, but the weights and BN statistics stay the exported
    # ones: gradients from an eval-mode pass become momentum buffers, no step is taken.
    loss = F.cross_entropy(sal(x), torch.arange(batch) % 10)
    loss.backward()
    for p in sal.parameters():
        opt.state[p]["momentum_buffer"] = p.grad.detach().clone()
    checkpoint = {
        "result": {"train_ta": [41.5, 63.25], "val_ta": [40.0, 60.5], "test_ta": []},
        "epoch": 3,
        "state_dict": sd,
        "best_sa": 60.5,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
    torch.save(checkpoint, os.path.join(out, "saliency_ckpt.pth.tar"))
    torch.save(nn.DataParallel(sal).state_dict(), os.path.join(out, "saliency_dp.pth"))
    torch.save(sd, os.path.join(out, "saliency_legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "saliency_sd.safetensors"))
    save_file({"input": x, "logits": logits.contiguous()}, os.path.join(out, "saliency.io.safetensors"))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"saliency": {"mean": SALIENCY_MEAN, "std": SALIENCY_STD, "in_channels": 1,
                                "num_classes": 10}}, f, indent=2)


def export_cifar(out, batch):
    gen = torch.Generator().manual_seed(12)
    cif = ResNet18(3, 10, "pytorch-cifar", CIFAR_MEAN, CIFAR_STD)
    randomize(cif, gen)
    x = torch.rand(batch, 3, 32, 32, generator=gen)
    with torch.no_grad():
        logits = cif(x)
    torch.save(cif.state_dict(), os.path.join(out, "cifar_sd.pth"))
    save_file({"input": x, "logits": logits.contiguous()}, os.path.join(out, "cifar.io.safetensors"))


def export_dtypes(out):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(4, 6, generator=gen)
    tensors = collections.OrderedDict()
    tensors["f32"] = torch.randn(3, 4, generator=gen)
    tensors["f64"] = torch.randn(5, generator=gen, dtype=torch.float64)
    tensors["f16"] = torch.randn(2, 3, generator=gen).half()
    tensors["bf16"] = torch.randn(2, 3, generator=gen).bfloat16()
    tensors["i64"] = torch.arange(-3, 3)
    tensors["i32"] = torch.tensor([1, -2, 2**30], dtype=torch.int32)
    tensors["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    tensors["i8"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    tensors["u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    tensors["bool"] = torch.tensor([True, False, True])
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3)
    tensors["base"] = base
    tensors["view_t"] = base.t()
    tensors["view_slice"] = base[1:, ::2]
    tensors["expanded"] = torch.tensor([1.0, 2.0]).expand(3, 2)
    torch.save(tensors, os.path.join(out, "dtypes.pth"))
    torch.save(tensors, os.path.join(out, "dtypes_legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()},
              os.path.join(out, "dtypes.expected.safetensors"))


class Call:
    """Pickles as a call of `fn(arg)`: what a malicious checkpoint does."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def export_malicious(out, marker):
    cmd = f"touch {marker}"
    evil_os = {"weight": torch.ones(2), "payload": Call(os.system, cmd)}
    evil_eval = {"weight": torch.ones(2),
                 "payload": Call(eval, f"__import__('os').system({cmd!r})")}
    torch.save(evil_os, os.path.join(out, "evil_os.pth"))
    torch.save(evil_eval, os.path.join(out, "evil_eval.pth"))
    torch.save(evil_os, os.path.join(out, "evil_os_legacy.pth"), _use_new_zipfile_serialization=False)
    # A TorchScript archive holds code, not a state dict: refused too, with a clear message.
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), os.path.join(out, "scripted.pt"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--parts", default="saliency,cifar,dtypes",
                    help="comma-separated: saliency, cifar, dtypes (default: all three)")
    ap.add_argument("--malicious", metavar="MARKER", help="also write the refused files")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    parts = {"saliency": export_saliency, "cifar": export_cifar,
             "dtypes": lambda out, batch: export_dtypes(out)}
    for part in filter(None, args.parts.split(",")):
        if part not in parts:
            ap.error(f"unknown part `{part}` (valid: {', '.join(parts)})")
        parts[part](args.out, args.batch)
    if args.malicious:
        export_malicious(args.out, args.malicious)
    assert not (args.malicious and os.path.exists(args.malicious)), "writing must not run the payload"


if __name__ == "__main__":
    main()
