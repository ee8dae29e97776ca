#!/usr/bin/env bash
# Zeroth-order results of docs/results.md: DeepZero training of LeNet-5 on Fashion-MNIST against
# first-order training with the same recipe, and the black-box attacks against white-box PGD on
# the standard LeNet-5 of the robustness results (runs/robust/eps0.1-none, trained by
# scripts/robust-results.sh), first 1000 test images, eps 0.1, 10000 queries per sample.
#
#   scripts/zo-results.sh [train|attacks|all]     (default all; DEVICE=cuda for a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RUSTWORTHY_BIN:-target/release/rustworthy}
[[ -x "$bin" ]] || cargo build --release
dev=${DEVICE:-cpu}
what=${1:-all}
out=runs/zo
mkdir -p "$out"
if [[ $what == train || $what == all ]]; then
    "$bin" train --preset fmnist-lenet --zo cge --sparsity 0.9 --epochs 6 --batch-size 64 \
        --resample-every 2 --device "$dev" --progress quiet --out "$out/lenet-cge-s0.9"
    "$bin" train --preset fmnist-lenet --epochs 6 --batch-size 64 --device "$dev" \
        --progress quiet --out "$out/lenet-fo-baseline"
fi
if [[ $what == attacks || $what == all ]]; then
    model=runs/robust/eps0.1-none/model.safetensors
    [[ -f $model ]] || { echo "zo-results: $model missing; run scripts/robust-results.sh first" >&2; exit 2; }
    "$bin" attack --model "$model" --attack pgd --eps 0.1 --steps 50 --restarts 10 --n 1000 \
        --device "$dev" --progress quiet --out "$out/attacks/pgd-50x10"
    for a in zoo zo-signsgd nes; do
        "$bin" attack --model "$model" --attack "$a" --eps 0.1 --queries 10000 --n 1000 \
            --device "$dev" --progress quiet --out "$out/attacks/$a"
    done
    for a in zo-signsgd nes; do
        "$bin" attack --model "$model" --attack "$a" --eps 0.1 --queries 10000 --n 1000 \
            --momentum 0.9 --device "$dev" --progress quiet --out "$out/attacks/$a-momentum0.9"
    done
fi
