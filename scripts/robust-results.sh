#!/usr/bin/env bash
# Reproduces the adversarial-robustness results in docs/results.md on Fashion-MNIST (LeNet-5):
# standard training and adversarial training at l_inf eps = 0.1, each evaluated with the standard
# robust-evaluation suite on the first 1000 test images; then single-step methods at a large eps
# (0.3), where they are prone to catastrophic overfitting (quick suite).
#
# Usage: scripts/robust-results.sh [OUT_DIR]
# Environment: METHODS (eps 0.1 runs; default "none pgd fast gradalign fast-bat trades"),
#              LARGE_EPS_METHODS (default "fast gradalign fast-bat"), DEVICE (default auto),
#              RUSTWORTHY_BIN (default target/release/rustworthy).
# On 2 CPU cores PGD-AT and TRADES take about 12 minutes each, the others 2-6 minutes, and each
# standard-suite evaluation 1-3 minutes. Existing models are reused (delete a folder to retrain).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/robust}
BIN=${RUSTWORTHY_BIN:-./target/release/rustworthy}
DEVICE=${DEVICE:-auto}
METHODS=${METHODS:-none pgd fast gradalign fast-bat trades}
LARGE_EPS_METHODS=${LARGE_EPS_METHODS:-fast gradalign fast-bat}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
for m in $METHODS; do
  if [ ! -f "$OUT/eps0.1-$m/model.safetensors" ]; then
    "$BIN" train --preset fmnist-lenet-adv --adv "$m" --device "$DEVICE" --out "$OUT/eps0.1-$m" --progress quiet
  fi
  "$BIN" robust-eval --model "$OUT/eps0.1-$m/model.safetensors" --eps 0.1 --suite standard \
    --n 1000 --device "$DEVICE" --out "$OUT/eps0.1-$m/robust-eval" --progress quiet
done
for m in $LARGE_EPS_METHODS; do
  if [ ! -f "$OUT/eps0.3-$m/model.safetensors" ]; then
    "$BIN" train --preset fmnist-lenet-adv --adv "$m" --eps 0.3 --device "$DEVICE" --out "$OUT/eps0.3-$m" --progress quiet
  fi
  "$BIN" robust-eval --model "$OUT/eps0.3-$m/model.safetensors" --eps 0.3 --suite quick \
    --n 1000 --device "$DEVICE" --out "$OUT/eps0.3-$m/robust-eval" --progress quiet
done
python3 scripts/robust_table.py "$OUT"
