#!/usr/bin/env bash
# Prepared runs on a CUDA machine whose python3 has torch 2.11.0 (CUDA build), with the binary
# and inputs built and copied on another machine:
#   .gpu/rustworthy          the release binary
#   .gpu/data/               Fashion-MNIST IDX files
#   .gpu/*.whl               torchattacks (installed with --no-deps into /tmp/site)
#   .gpu/robust/eps0.1-*/    models trained elsewhere to evaluate (model.safetensors, model.json,
#                            report.json)
# Phases (one call each):
#   results  adversarial training of the remaining methods (eps 0.1 and 0.3) and the robust
#            evaluation of every model, as scripts/robust-results.sh does on a CPU
#   bench    attack throughput against torchattacks (LeNet and ResNet-18) and training
#            throughput against the PyTorch reference (ResNet-18)
# Usage: OUT=/some/dir scripts/gpu-session.sh results|bench [quick]
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:?results or bench}
QUICK=${2:-}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
DEV=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export RUSTWORTHY_DATA=$PWD/.gpu/data
export PYTHONUNBUFFERED=1
BIN=$PWD/.gpu/rustworthy
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ls .gpu/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site
fi
W=$OUT/work
mkdir -p "$W"
START=$(date +%s)
BUDGET=${BUDGET:-500}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
log() { echo "== $(date -u +%H:%M:%S) [$(( $(date +%s) - START ))s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [[ $PHASE == results ]]; then
    R=$W/robust
    mkdir -p "$R"
    cp -r .gpu/robust/. "$R"/ 2>/dev/null || true
    if [[ $QUICK == quick ]]; then EXTRA="--epochs 1 --train-subset 2000"; N=200; else EXTRA=""; N=1000; fi
    train() { # eps method
        local dir=$R/eps$1-$2
        [[ -f $dir/model.safetensors ]] && return
        (( $(left) > 60 )) || { log "skip training $2 at $1: out of time"; return; }
        timeout $(( $(left) - 30 )) "$BIN" train --preset fmnist-lenet-adv --adv "$2" --eps "$1" $EXTRA \
            --device "$DEV" --progress quiet --out "$dir" > "$dir.log" 2>&1 \
            || { echo "FAILED train $2 $1"; tail -3 "$dir.log"; }
        log "trained $2 at eps $1: $(grep -E 'test accuracy|train time' "$dir.log" | tr -s ' ' | tr '\n' ' ')"
    }
    evaluate() { # eps method suite
        local dir=$R/eps$1-$2
        [[ -f $dir/model.safetensors ]] || return
        (( $(left) > 25 )) || { log "skip eval $2 at $1: out of time"; return; }
        timeout $(( $(left) - 10 )) "$BIN" robust-eval --model "$dir/model.safetensors" --eps "$1" \
            --suite "$3" --n "$N" --device "$DEV" --progress quiet --out "$dir/robust-eval" > "$dir/eval.log" 2>&1 \
            || { echo "FAILED eval $2 $1"; tail -3 "$dir/eval.log"; }
        log "evaluated $2 at eps $1 ($3)"
    }
    log "adversarial training on $DEV"
    for m in fast fast-bat gradalign trades; do train 0.1 "$m"; done
    for m in fast fast-bat gradalign; do train 0.3 "$m"; done
    for m in none pgd fast fast-bat gradalign trades; do evaluate 0.1 "$m" standard; done
    for m in fast fast-bat gradalign; do evaluate 0.3 "$m" quick; done
    "$PY" scripts/robust_table.py "$R" | tee "$OUT/robust-table.md"
    tar czf "$OUT/robust.tar.gz" --exclude='checkpoint' -C "$W" robust
fi

if [[ $PHASE == bench ]]; then
    if [[ $QUICK == quick ]]; then SUB="--train-subset 2000"; N=300; NR=200; else SUB=""; N=10000; NR=2000; fi
    log "attack throughput against torchattacks: LeNet (PGD-AT model) on $DEV"
    timeout 150 "$PY" scripts/bench_attack.py --model .gpu/robust/eps0.1-pgd/model.safetensors --device "$DEV" \
        --n "$N" --batch-size 1000 --repeats 3 --bin "$BIN" --out "$W/bench-attack-lenet" 2>&1 | tail -8
    log "ResNet-18: one training epoch on $DEV, then attack throughput against torchattacks"
    timeout 100 "$BIN" train --preset fmnist-resnet18 --epochs 1 $SUB --device "$DEV" --progress quiet \
        --out "$W/resnet18" 2>&1 | grep -E "test accuracy|train time"
    timeout 150 "$PY" scripts/bench_attack.py --model "$W/resnet18/model.safetensors" --device "$DEV" \
        --n "$NR" --batch-size 500 --repeats 3 --bin "$BIN" --out "$W/bench-attack-resnet18" 2>&1 | tail -8
    if [[ $QUICK != quick ]] && (( $(left) > 100 )); then
        log "training throughput against the PyTorch reference: ResNet-18, 3 epochs"
        RUSTWORTHY_BIN=$BIN PYTHON=$PY timeout $(( $(left) - 10 )) scripts/bench-train.sh --arch resnet18 \
            --device "$DEV" --epochs 3 --batch-size 256 --lr 0.1 --crop-padding 4 --hflip 1 \
            --out "$W/bench-train-resnet18" 2>&1 | tail -12
    fi
    tar czf "$OUT/bench.tar.gz" --exclude='*.safetensors' --exclude='checkpoint' -C "$W" .
fi
log "done"
