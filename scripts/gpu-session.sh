#!/usr/bin/env bash
# One prepared run on a CUDA machine whose python3 has torch 2.11.0 (CUDA build), with the
# binary and data built and copied on another machine:
#   .gpu/rustworthy          the release binary
#   .gpu/data/               Fashion-MNIST IDX files
#   .gpu/*.whl               torchattacks (installed with --no-deps into /tmp/site)
#   .gpu/lenet-pgd/          a LeNet model (model.safetensors + model.json) to attack
# It checks the CUDA paths of adversarial training and attacks, and measures rustworthy against
# torchattacks (attacks) and the PyTorch reference (training) on the same GPU, in one call.
# Usage: OUT=/some/dir scripts/gpu-session.sh [quick]   ("quick": tiny sizes, for a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
QUICK=${1:-}
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
log() { echo "== $(date -u +%H:%M:%S) $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$BIN" info | head -3

if [[ $QUICK == quick ]]; then SUB="--train-subset 2000"; EP=1; N=300; NR=200; else SUB=""; EP=2; N=10000; NR=2000; fi

log "1. adversarial training on $DEV: LeNet, eps 0.1, $EP epochs per method"
for m in none fast gradalign fast-bat pgd trades; do
    timeout 120 "$BIN" train --preset fmnist-lenet-adv --adv "$m" --epochs "$EP" $SUB \
        --device "$DEV" --progress quiet --out "$W/lenet-$m" >/dev/null 2>"$W/lenet-$m.err" \
        || { echo "FAILED lenet $m"; tail -3 "$W/lenet-$m.err"; }
done
"$PY" - "$W" <<'PYEOF'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
print("| method | s/epoch | test acc | monitor PGD-10 acc (last epoch) |")
print("|---|---|---|---|")
for m in ["none", "fast", "gradalign", "fast-bat", "pgd", "trades"]:
    p = w / f"lenet-{m}" / "report.json"
    if not p.exists():
        print(f"| {m} | failed | | |"); continue
    r = json.loads(p.read_text())
    h = r["history"]
    print(f"| {m} | {sum(x['seconds'] for x in h)/len(h):.2f} | {r['metrics']['test_accuracy']:.2f} | "
          f"{h[-1].get('extra', {}).get('val_pgd_accuracy', '-')} |")
PYEOF

log "2. robust-eval (quick suite) of the carried LeNet on $DEV"
timeout 120 "$BIN" robust-eval --model .gpu/lenet-pgd/model.safetensors --eps 0.1 --suite quick \
    --n 1000 --device "$DEV" --out "$W/eval-lenet-pgd" | tail -20

log "3. attack throughput against torchattacks: LeNet on $DEV"
timeout 200 "$PY" scripts/bench_attack.py --model .gpu/lenet-pgd/model.safetensors --device "$DEV" \
    --n "$N" --batch-size 1000 --repeats 3 --bin "$BIN" --out "$W/bench-attack-lenet" 2>&1 | tail -8

log "4. ResNet-18: one training epoch on $DEV, then attack throughput against torchattacks"
timeout 120 "$BIN" train --preset fmnist-resnet18 --epochs 1 $SUB --device "$DEV" --progress quiet \
    --out "$W/resnet18" 2>&1 | tail -4
timeout 240 "$PY" scripts/bench_attack.py --model "$W/resnet18/model.safetensors" --device "$DEV" \
    --n "$NR" --batch-size 500 --repeats 3 --bin "$BIN" --out "$W/bench-attack-resnet18" 2>&1 | tail -8

log "5. training throughput against the PyTorch reference: ResNet-18, 3 epochs"
if [[ $QUICK != quick ]]; then
    RUSTWORTHY_BIN=$BIN PYTHON=$PY timeout 240 scripts/bench-train.sh --arch resnet18 --device "$DEV" \
        --epochs 3 --batch-size 256 --lr 0.1 --crop-padding 4 --hflip 1 --out "$W/bench-train-resnet18" 2>&1 | tail -12
fi
log "done"
tar czf "$OUT/gpu-work.tar.gz" --exclude='*.safetensors' --exclude='checkpoint' -C "$OUT" work
