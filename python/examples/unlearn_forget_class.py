"""Make a model forget: train a small CNN on a Fashion-MNIST subset, then remove the class
"Coat" (3) with gradient ascent and with fine-tuning, and print UA/RA/TA/MIA before and after.

    .venv/bin/python python/examples/unlearn_forget_class.py
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_scripted import images, labels, scripted  # noqa: E402  (trains the model)

import rustworthy  # noqa: E402

x, y = images("train-images-idx3-ubyte", 6000), labels("train-labels-idx1-ubyte", 6000)
test = (images("t10k-images-idx3-ubyte", 1000), labels("t10k-labels-idx1-ubyte", 1000))
forget = (y == 3).nonzero().flatten()  # every "Coat" of the training subset

for method, kw in (("ga", {"epochs": 3, "lr": 1e-2}), ("ft", {"epochs": 2})):
    r = rustworthy.unlearn(scripted, (x, y), forget, test, method, **kw)
    b, a = r.before, r.metrics
    print(f"{method}: UA {b['ua']:.1f} -> {a['ua']:.1f}, RA {b['ra']:.1f} -> {a['ra']:.1f}, "
          f"TA {b['ta']:.1f} -> {a['ta']:.1f}, MIA {b['mia_efficacy']:.1f} -> {a['mia_efficacy']:.1f}, "
          f"RTE {a['rte_s']:.2f} s")
