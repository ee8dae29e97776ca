#!/usr/bin/env bash
# TorchScript against the zoo: exports LeNet-5 and ResNet-20 (the PyTorch twins of the zoo
# models, scripts/ref/models.py) with torch.jit.script, then times training steps of each module
# and of the zoo model alternately in one run (`rustworthy bench torchscript`).
#
#   scripts/bench-torchscript.sh [--device cpu|cuda] [--threads N] [--batch B]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RUSTWORTHY_BIN:-target/release/rustworthy}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
.venv/bin/python scripts/ref/export_torchscript.py --out "$dir" >/dev/null
for arch in lenet resnet20; do
    "$BIN" bench torchscript --model "$dir/$arch-script.pt" --arch "$arch" "$@" | tail -n 1
done
