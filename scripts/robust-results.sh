#!/usr/bin/env bash
# Reproduces the adversarial-robustness results in docs/results.md on Fashion-MNIST (LeNet-5):
# standard training and five adversarial training methods at l_inf eps = 0.1, each evaluated with
# the standard robust-evaluation suite on the first 1000 test images; then Fast-AT, GradAlign and
# Fast-BAT at a large eps (0.3), where single-step training is prone to catastrophic overfitting.
# Usage: scripts/robust-results.sh [OUT_DIR]   (about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/robust}
BIN=./target/release/rustworthy
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
for m in none pgd fast gradalign fast-bat trades; do
  if [ ! -f "$OUT/eps0.1-$m/model.safetensors" ]; then
    "$BIN" train --preset fmnist-lenet-adv --adv "$m" --out "$OUT/eps0.1-$m" --progress quiet
  fi
  "$BIN" robust-eval --model "$OUT/eps0.1-$m/model.safetensors" --eps 0.1 --suite standard \
    --n 1000 --out "$OUT/eps0.1-$m/robust-eval" --progress quiet
done
for m in fast gradalign fast-bat; do
  if [ ! -f "$OUT/eps0.3-$m/model.safetensors" ]; then
    "$BIN" train --preset fmnist-lenet-adv --adv "$m" --eps 0.3 --out "$OUT/eps0.3-$m" --progress quiet
  fi
  "$BIN" robust-eval --model "$OUT/eps0.3-$m/model.safetensors" --eps 0.3 --suite quick \
    --n 1000 --out "$OUT/eps0.3-$m/robust-eval" --progress quiet
done
python3 scripts/robust_table.py "$OUT"
