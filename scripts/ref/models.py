"""PyTorch reference versions of the rustworthy-models architectures.

Every module here has exactly the state-dict names of its Rust counterpart in
crates/models, so weights round-trip through safetensors in both directions.
Normalization lives inside the model: inputs are images in [0, 1] and the
per-channel mean/std are non-persistent buffers (not part of the state dict).

A model is described by a spec dict, the same JSON the Rust `ModelSpec` uses:
    {"arch": "resnet20", "in_channels": 3, "num_classes": 10,
     "input_size": [32, 32], "mean": [...], "std": [...]}
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = ["mlp", "lenet", "resnet18", "resnet20", "preact-resnet18", "vgg16-bn"]

FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


def fashion_mnist_spec(arch):
    return {
        "arch": arch,
        "in_channels": 1,
        "num_classes": 10,
        "input_size": [28, 28],
        "mean": list(FASHION_MNIST_MEAN),
        "std": list(FASHION_MNIST_STD),
    }


def cifar10_spec(arch):
    return {
        "arch": arch,
        "in_channels": 3,
        "num_classes": 10,
        "input_size": [32, 32],
        "mean": list(CIFAR10_MEAN),
        "std": list(CIFAR10_STD),
    }


def torchvision_init(module):
    """ResNet init as torchvision does it: conv kaiming-normal (fan_out, relu), BN 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Normalizing(nn.Module):
    """Base class: holds the per-channel mean/std as non-persistent buffers."""

    def __init__(self, mean, std):
        super().__init__()
        c = len(mean)
        mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalize(self, x):
        return (x - self.mean) / self.std


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class Mlp(Normalizing):
    def __init__(self, spec):
        super().__init__(spec["mean"], spec["std"])
        h, w = spec["input_size"]
        in_features = spec["in_channels"] * h * w
        num_classes = spec["num_classes"]
        self.fc1 = nn.Linear(in_features, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x):
        x = torch.flatten(self.normalize(x), 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(Normalizing):
    def __init__(self, spec):
        super().__init__(spec["mean"], spec["std"])
        h, w = spec["input_size"]
        in_channels, num_classes = spec["in_channels"], spec["num_classes"]
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        fh = (h // 2 - 4) // 2
        fw = (w // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * fh * fw, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(self.normalize(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """torchvision BasicBlock: projection shortcut `downsample` (conv1x1 + BN) when needed."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet18(Normalizing):
    """ResNet-18, CIFAR variant: 3x3 stem, stride 1, no max-pool."""

    def __init__(self, spec):
        super().__init__(spec["mean"], spec["std"])
        in_channels, num_classes = spec["in_channels"], spec["num_classes"]
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.fc = nn.Linear(512, num_classes)
        torchvision_init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class OptionABlock(nn.Module):
    """BasicBlock with the parameter-free shortcut of He et al. (CIFAR option A)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.extra = cout - cin

    def shortcut(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra > 0:
            lo = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, lo, self.extra - lo), "constant", 0.0)
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(Normalizing):
    """ResNet-20 for CIFAR (He et al. 2016): 3 stages of 3 blocks, widths 16/32/64."""

    def __init__(self, spec):
        super().__init__(spec["mean"], spec["std"])
        in_channels, num_classes = spec["in_channels"], spec["num_classes"]
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
            blocks = [OptionABlock(cin, width, stride)]
            blocks += [OptionABlock(width, width, 1) for _ in range(2)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.fc = nn.Linear(64, num_classes)
        torchvision_init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(Normalizing):
    """Pre-activation ResNet-18 as used in fast adversarial training."""

    def __init__(self, spec):
        super().__init__(spec["mean"], spec["std"])
        in_channels, num_classes = spec["in_channels"], spec["num_classes"]
        self.conv1 = conv3x3(in_channels, 64)
        cin = 64
        for i, (width, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = [PreActBlock(cin, width, stride), PreActBlock(width, width, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)
        torchvision_init(self)

    def forward(self, x):
        x = self.conv1(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.relu(self.bn(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.linear(x)


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M"]


class Vgg16Bn(Normalizing):
    """VGG-16 (cfg D) with BN; ceil-mode pools so 28x28 inputs work; one Linear head."""

    def __init__(self, spec):
        super().__init__(spec["mean"], spec["std"])
        in_channels, num_classes = spec["in_channels"], spec["num_classes"]
        layers = []
        cin = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(self.normalize(x))), 1)
        return self.classifier(x)


ARCH_CLASSES = {
    "mlp": Mlp,
    "lenet": LeNet5,
    "lenet5": LeNet5,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "preact-resnet18": PreActResNet18,
    "vgg16-bn": Vgg16Bn,
}


def build_model(spec):
    """The model of `spec` with normalization inside; it takes images in [0, 1]."""
    c = spec["in_channels"]
    if len(spec["mean"]) != c or len(spec["std"]) != c:
        raise ValueError("mean/std must have one entry per input channel")
    if any(not (s > 0 and math.isfinite(s)) for s in spec["std"]):
        raise ValueError("std entries must be finite and > 0")
    cls = ARCH_CLASSES.get(spec["arch"])
    if cls is None:
        raise ValueError(f"unknown arch {spec['arch']!r}; valid: {', '.join(ARCHS)}")
    return cls(spec)


def num_params(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    for a in ARCHS:
        for spec in (fashion_mnist_spec(a), cifar10_spec(a)):
            m = build_model(spec).eval()
            x = torch.rand(2, spec["in_channels"], *spec["input_size"])
            y = m(x)
            print(f"{a:16s} {spec['input_size']} params={num_params(m):>10d} out={tuple(y.shape)}")
