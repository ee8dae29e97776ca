#!/usr/bin/env bash
# Every GPU comparison of rustworthy against its reference in one prepared run, printed as one
# table of ratios (docs/benchmarks.md lists them and their bars). Nothing is built on the GPU
# machine: `--prepare` (on the build machine) gathers what the run needs under .gpu/:
#   .gpu/rustworthy      the release binary (linked against torch 2.11.0; on the GPU machine it
#                        runs against that machine's python3 torch, as scripts/gpu-run.sh does)
#   .gpu/data/           the Fashion-MNIST IDX files
#   .gpu/wheels/         torchattacks and safetensors wheels (installed --no-deps into /tmp/site)
#   .gpu/official/       a checkout of Unlearn-Saliency's Classification/ (optional: set
#                        OFFICIAL=DIR when preparing), the reference of the unlearning methods
#
#   scripts/gpu-bench.sh --prepare
#   scripts/gpu-bench.sh [--quick] [--device cuda] [--out runs/gpu-bench] [--budget 470]
#
# Phases, in priority order, each skipped (and reported as not run) when the time budget is
# spent: ResNet-18 training steps against eager PyTorch (batch 128 and 512, fp32 and bf16
# autocast, with TFLOP/s and the share of the device's peak); a LeNet epoch on Fashion-MNIST
# against the PyTorch training reference; PGD-10 and APGD-CE on LeNet and ResNet-18 (n 1000)
# against torchattacks; DeepZero CGE on ResNet-20 against the coordinate loop; the same
# ResNet-18 steps under torch.compile; `bench unlearn --preset fmnist-resnet18-random10` against
# the official unlearning code and Retrain against the PyTorch training reference. `--quick`
# shrinks every phase (a check of the plumbing, also on a CPU with --device cpu).
# Writes OUT/rows.jsonl, OUT/table.md and every phase's own files under OUT/.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare=0 quick=0 dev=cuda out=runs/gpu-bench budget=470
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prepare) prepare=1; shift ;;
        --quick) quick=1; shift ;;
        --device) dev=${2:?--device needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --budget) budget=${2:?--budget needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

if ((prepare)); then
    set -e
    cargo build --release --quiet
    mkdir -p .gpu/data .gpu/wheels
    cp target/release/rustworthy .gpu/rustworthy
    src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    cp "$src"/*-ubyte.gz .gpu/data/
    py=.venv/bin/python
    [[ -x $py ]] || py=python3
    "$py" -m pip download -q --no-deps -c constraints.txt -d .gpu/wheels torchattacks safetensors
    if [[ -n "${OFFICIAL:-}" ]]; then
        rm -rf .gpu/official && mkdir -p .gpu/official
        cp -r "$OFFICIAL"/. .gpu/official/
    fi
    du -sh .gpu
    echo "prepared .gpu/ (carry .gpu to the GPU machine, then run scripts/gpu-bench.sh)"
    exit 0
fi

PY=${PYTHON:-python3}
if [[ -x .gpu/rustworthy ]]; then BIN=$PWD/.gpu/rustworthy; else BIN=$PWD/target/release/rustworthy; fi
[[ -x $BIN ]] || { echo "gpu-bench: no binary (.gpu/rustworthy or target/release/rustworthy); run --prepare" >&2; exit 2; }
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
    || { echo "gpu-bench: $PY has no torch" >&2; exit 2; }
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTWORTHY_BIN=$BIN PYTHON=$PY PYTHONUNBUFFERED=1
[[ -d .gpu/data ]] && export RUSTWORTHY_DATA=$PWD/.gpu/data
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rows=$out/rows.jsonl
: >"$rows"
START=$(date +%s)
left() { echo $((budget - ($(date +%s) - START))); }
log() { echo "== [$(($(date +%s) - START))s] $*" >&2; }
table() { # KIND DIR [LABEL]: the phase's rows, or a row saying it left no results
    "$PY" scripts/gpu_table.py add "$rows" "$@" 2>/dev/null && return
    "$PY" scripts/gpu_table.py skip "$rows" "$1 ${3:-$(basename "$2")}" "no results in $2 (see the logs there)"
    log "could not read the results of $1 in $2"
}
skip() { "$PY" scripts/gpu_table.py skip "$rows" "$1" "$2"; log "skipped $1: $2"; }
# phase NAME NEEDED_SECONDS: true when the budget leaves NEEDED_SECONDS.
phase() { if (($(left) >= $2)); then log "$1"; return 0; fi; skip "$1" "time budget spent"; return 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$BIN" --version 2>/dev/null || true
"$PY" -c 'import torch; print("torch", torch.__version__)'

if ((quick)); then
    batches=(32); steps=5; ep_subset=2000; n_atk=100; zo_coords=200; zo_ref=50; r18_subset=500; r18_timeout=400; n_atk_r18=20; atk_repeats=1
else
    batches=(128 512); steps=20; ep_subset=0; n_atk=1000; zo_coords=2000; zo_ref=300; r18_subset=10000; r18_timeout=120; n_atk_r18=1000; atk_repeats=3
fi

# 1. ResNet-18 training steps against eager PyTorch.
step_cfgs=()
for b in "${batches[@]}"; do for p in fp32 bf16; do step_cfgs+=("$b:$p:"); done; done
step_cfgs+=("${batches[-1]}:bf16:cl")
for c in "${step_cfgs[@]}"; do
    IFS=: read -r b p cl <<<"$c"
    d=$out/step-r18-b$b-$p${cl:+-cl}
    phase "ResNet-18 step, batch $b, $p${cl:+, channels-last}" 40 || continue
    flags=(--arch resnet18 --shape cifar10 --batch "$b" --precision "$p" --steps "$steps" --device "$dev" --out "$d")
    [[ -n $cl ]] && flags+=(--channels-last)
    timeout 120 "$BIN" bench train-step "${flags[@]}" && \
        timeout 120 "$PY" scripts/ref/train_step_ref.py "$d" --mode eager && table train-step "$d"
done

# 2. LeNet epoch on Fashion-MNIST against the PyTorch training reference.
if phase "LeNet epoch on Fashion-MNIST" 60; then
    sub=()
    ((ep_subset > 0)) && sub=(--subset "$ep_subset")
    timeout 240 scripts/bench-train.sh --arch lenet --device "$dev" --epochs 2 "${sub[@]}" \
        --out "$out/lenet-epoch" >"$out/lenet-epoch.log" 2>&1 && table lenet-epoch "$out/lenet-epoch"
    tail -n 8 "$out/lenet-epoch.log" >&2
fi

# 3. Attacks against torchattacks: LeNet (the model of phase 2) and a ResNet-18 trained briefly.
lenet_model=$out/lenet-epoch/rustworthy/model.safetensors
if [[ -f $lenet_model ]] && phase "PGD-10 and APGD-CE on LeNet" 60; then
    timeout 200 "$PY" scripts/bench_attack.py --model "$lenet_model" --device "$dev" --n "$n_atk" \
        --batch-size 1000 --repeats "$atk_repeats" --bin "$BIN" --out "$out/attack-lenet" 2>&1 | tail -n 4 >&2
    table attack "$out/attack-lenet" LeNet
fi
if phase "PGD-10 and APGD-CE on ResNet-18" 90; then
    timeout "$r18_timeout" "$BIN" train --preset fmnist-resnet18 --epochs 1 --train-subset "$r18_subset" \
        --val-fraction 0 --device "$dev" \
        --progress quiet --out "$out/resnet18" >"$out/resnet18.log" 2>&1
    if [[ -f $out/resnet18/model.safetensors ]]; then
        timeout 240 "$PY" scripts/bench_attack.py --model "$out/resnet18/model.safetensors" --device "$dev" \
            --n "$n_atk_r18" --batch-size 500 --repeats "$atk_repeats" --bin "$BIN" --out "$out/attack-resnet18" 2>&1 | tail -n 4 >&2
        table attack "$out/attack-resnet18" ResNet-18
    else
        skip "PGD-10 and APGD-CE on ResNet-18" "training the model failed (see resnet18.log)"
    fi
fi

# 4. DeepZero CGE on ResNet-20.
if phase "DeepZero CGE on ResNet-20" 60; then
    timeout 200 scripts/bench-zo.sh --arch resnet20 --device "$dev" --coords "$zo_coords" \
        --ref-coords "$zo_ref" --out "$out/zo" 2>&1 | tail -n 6 >&2
    table zo "$out/zo"
fi

# 5. The ResNet-18 steps under torch.compile (compiling takes most of this phase).
for c in "${step_cfgs[@]}"; do
    IFS=: read -r b p cl <<<"$c"
    d=$out/step-r18-b$b-$p${cl:+-cl}
    [[ -f $d/rustworthy.json ]] || continue
    phase "torch.compile, batch $b, $p${cl:+, channels-last}" 70 || continue
    timeout 200 "$PY" scripts/ref/train_step_ref.py "$d" --mode compile && table train-step "$d"
done

# 6. The unlearning benchmark end to end, against the official code and the training reference
# (Retrain against scripts/ref/train_ref.py with the original recipe on the same retain set).
if ((quick)); then
    upreset=fmnist-lenet-random10
    uflags=(--methods retrain,ft,ga --set original_epochs=1)
    ref_recipe=(--arch lenet --epochs 1 --batch-size 128 --lr 0.05 --nesterov 1 --crop-padding 0)
else
    upreset=fmnist-resnet18-random10
    uflags=()
    ref_recipe=(--arch resnet18 --epochs 10 --batch-size 256 --lr 0.1 --nesterov 0 --crop-padding 4)
fi
if phase "bench unlearn --preset $upreset" 200; then
    u=$out/unlearn
    timeout $(($(left) - 20)) "$BIN" bench unlearn --preset "$upreset" "${uflags[@]}" \
        --set "original_out=\"$u/original\"" --device "$dev" --progress quiet --out "$u" >"$out/unlearn.log" 2>&1
    if [[ -f $u/results.json && -f $u/scenario.json ]]; then
        "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); json.dump({"train": s["retain"]}, open(sys.argv[2], "w"))' \
            "$u/scenario.json" "$u/retain-split.json"
        timeout $(($(left) - 10)) "$PY" scripts/ref/train_ref.py "${ref_recipe[@]}" --device "$dev" \
            --schedule cosine --momentum 0.9 --weight-decay 5e-4 --hflip 1 --seed 0 --quiet \
            --split-json "$u/retain-split.json" >"$u/retrain-ref.json" 2>"$u/retrain-ref.log"
        if [[ -d .gpu/official ]] && (($(left) > 60)); then
            timeout $(($(left) - 10)) "$PY" scripts/parity/official_unlearn.py --official .gpu/official \
                --run "$u/original" --scenario "$u/scenario.json" --preset "presets/bench/$upreset.toml" \
                --methods ft,ga,rl,salun,l1-sparse --seeds 0 --no-mia --no-original \
                --out "$u/official" >"$u/official.log" 2>&1
        fi
        table unlearn "$u" "$upreset"
    else
        skip "bench unlearn --preset $upreset" "the benchmark did not finish (see unlearn.log)"
    fi
fi

"$PY" scripts/gpu_table.py show "$rows" | tee "$out/table.md"
log "done"
