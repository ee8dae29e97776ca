#!/usr/bin/env bash
# Training benchmark: `rustworthy train` against the eager PyTorch reference
# (scripts/ref/train_ref.py) with the same model, data, recipe, device and thread count.
#
#   scripts/bench-train.sh [--arch lenet] [--device cpu] [--epochs 3] [--batch-size 128]
#                          [--lr 0.05] [--crop-padding 0] [--hflip 1] [--subset N]
#                          [--threads N] [--data-dir DIR] [--out runs/bench-train]
#
# Runs, in this order: rustworthy (data resident on the device, no validation split),
# the reference with `--loader tensor` (data resident on the device, batched augmentation)
# and with `--loader dataloader` (Dataset + DataLoader, per-sample CPU augmentation).
# Recipe: SGD momentum 0.9, Nesterov, weight decay 5e-4, cosine learning rate stepped per
# iteration, seed 0; the defaults are the fmnist-lenet preset's recipe with 3 epochs.
#
# Prints a table (train seconds, seconds/epoch, test accuracy, reference/rustworthy time
# ratio) and writes OUT/table.md, OUT/results.json, OUT/config.toml, OUT/rustworthy/ (the run's
# report), OUT/pytorch-*.json and OUT/contention.jsonl (per run: wall time and the share of it
# in which some task waited for a CPU, from /proc/pressure/cpu: a disturbed-timing flag on a
# shared machine). Exits non-zero if any run fails.
#
# Environment:
#   RUSTWORTHY_BIN   the binary to run (default target/release/rustworthy, built with
#                    `cargo build --release` if missing). When set, the libraries of the
#                    Python's torch are put on LD_LIBRARY_PATH as scripts/gpu-run.sh does, so
#                    a binary built elsewhere runs against this machine's torch 2.11.0.
#   PYTHON           the Python with torch (default .venv/bin/python, else python3).
#   NUM_WORKERS      DataLoader workers of the dataloader mode (default 2 on CUDA, 0 on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=lenet device=cpu epochs=3 batch=128 lr=0.05 crop=0 hflip=1 subset=0 threads=0
data_dir="" out=runs/bench-train

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "bench-train: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) need "$@"; arch=$2; shift 2 ;;
        --device) need "$@"; device=$2; shift 2 ;;
        --epochs) need "$@"; epochs=$2; shift 2 ;;
        --batch-size) need "$@"; batch=$2; shift 2 ;;
        --lr) need "$@"; lr=$2; shift 2 ;;
        --crop-padding) need "$@"; crop=$2; shift 2 ;;
        --hflip) need "$@"; hflip=$2; shift 2 ;;
        --subset) need "$@"; subset=$2; shift 2 ;;
        --threads) need "$@"; threads=$2; shift 2 ;;
        --data-dir) need "$@"; data_dir=$2; shift 2 ;;
        --out) need "$@"; out=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-train: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

int_re='^[0-9]+$'
for pair in "epochs:$epochs" "batch-size:$batch" "crop-padding:$crop" "subset:$subset" \
            "threads:$threads"; do
    [[ ${pair#*:} =~ $int_re ]] || { echo "bench-train: --${pair%%:*} must be an integer >= 0" >&2; exit 2; }
done
((epochs >= 1 && batch >= 1)) || { echo "bench-train: --epochs and --batch-size must be >= 1" >&2; exit 2; }
[[ $hflip == 0 || $hflip == 1 ]] || { echo "bench-train: --hflip takes 0 or 1" >&2; exit 2; }
case "$arch" in mlp|lenet|resnet18|resnet20|preact-resnet18|vgg16-bn) ;;
    *) echo "bench-train: --arch is one of mlp, lenet, resnet18, resnet20, preact-resnet18, vgg16-bn" >&2; exit 2 ;; esac
case "$device" in cpu|cuda|cuda:[0-9]*) ;; *) echo "bench-train: --device is cpu, cuda or cuda:N" >&2; exit 2 ;; esac

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# One spelling of the learning rate for TOML, JSON and the reference (e.g. `.1` -> `0.1`).
lr=$("$PYTHON" -c 'import math, sys; v = float(sys.argv[1]); assert v > 0 and math.isfinite(v); print(repr(v))' "$lr" 2>/dev/null) \
    || { echo "bench-train: --lr must be a positive number" >&2; exit 2; }

if [[ -n "${RUSTWORTHY_BIN:-}" ]]; then
    bin=$RUSTWORTHY_BIN
    [[ -x "$bin" ]] || { echo "bench-train: RUSTWORTHY_BIN=$bin is not an executable" >&2; exit 2; }
    torch_lib=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    bin=target/release/rustworthy
    if [[ ! -x "$bin" ]]; then
        echo "bench-train: building $bin" >&2
        cargo build --release --quiet
    fi
fi

mkdir -p "$out"
rm -rf "$out/rustworthy"
rm -f "$out"/pytorch-*.json "$out"/pytorch-*.log "$out"/rustworthy.log "$out"/contention.jsonl

hflip_toml=false
((hflip)) && hflip_toml=true
{
    echo "# Written by scripts/bench-train.sh: the benchmark recipe (no validation split)."
    echo "[data]"
    echo "dataset = \"fashion-mnist\""
    [[ -n "$data_dir" ]] && echo "data_dir = \"$data_dir\""
    echo "val_fraction = 0.0"
    echo "train_subset = $subset"
    echo "on_device = true"
    echo
    echo "[model]"
    echo "arch = \"$arch\""
    echo "init_seed = 0"
    echo
    echo "[train]"
    echo "epochs = $epochs"
    echo "batch_size = $batch"
    echo "seed = 0"
    echo "augment = { crop_padding = $crop, hflip = $hflip_toml }"
    echo "optim = { name = \"sgd\", momentum = 0.9, nesterov = true, weight_decay = 5e-4 }"
    echo "lr = { lr = $lr, schedule = { name = \"cosine\" } }"
    echo
    echo "[run]"
    echo "device = \"$device\""
    echo "out = \"$out/rustworthy\""
    echo "threads = $threads"
} >"$out/config.toml"

status=0
say() { printf '\033[1m[bench-train]\033[0m %s\n' "$*" >&2; }

# Contention record of each run: wall time and, where the kernel reports it
# (/proc/pressure/cpu), the share of that time some runnable task waited for a CPU. On a
# machine shared with other jobs a high share flags a disturbed timing.
psi_us() { awk '/^some/ { for (i = 1; i <= NF; i++) if ($i ~ /^total=/) { sub("total=", "", $i); print $i } }' /proc/pressure/cpu 2>/dev/null; }
timed() {  # timed NAME CMD... : runs CMD, appends {"name", "wall_s", "cpu_stall_pct"} to OUT/contention.jsonl
    local name=$1 p0 p1 t0 t1 rc=0
    shift
    p0=$(psi_us); t0=$(date +%s%N)
    "$@" || rc=$?
    t1=$(date +%s%N); p1=$(psi_us)
    local stall=null
    [[ -n "$p0" && -n "$p1" ]] && stall=$(awk -v a="$p0" -v b="$p1" -v t="$((t1 - t0))" 'BEGIN { printf "%.1f", 100 * (b - a) * 1000 / t }')
    printf '{"name": "%s", "wall_s": %s, "cpu_stall_pct": %s}\n' "$name" \
        "$(awk -v t="$((t1 - t0))" 'BEGIN { printf "%.3f", t / 1e9 }')" "$stall" >>"$out/contention.jsonl"
    return "$rc"
}

subset_note=""
((subset > 0)) && subset_note=", subset $subset"
say "rustworthy: $arch on $device, $epochs epochs, batch $batch, lr $lr cosine, crop $crop, hflip $hflip$subset_note"
if ! timed rustworthy "$bin" train --config "$out/config.toml" --progress quiet >"$out/rustworthy.log" 2>&1; then
    say "rustworthy failed; last lines of $out/rustworthy.log:"
    tail -n 20 "$out/rustworthy.log" >&2
    status=1
fi

ref_args=(--arch "$arch" --device "$device" --epochs "$epochs" --batch-size "$batch" --lr "$lr"
          --schedule cosine --momentum 0.9 --nesterov 1 --weight-decay 5e-4
          --crop-padding "$crop" --hflip "$hflip" --threads "$threads" --seed 0 --quiet)
[[ -n "$data_dir" ]] && ref_args+=(--data-dir "$data_dir")
[[ -n "${NUM_WORKERS:-}" ]] && ref_args+=(--num-workers "$NUM_WORKERS")
if ((subset > 0)); then
    # The same training samples as rustworthy's seeded subset: its split.json.
    if [[ -f "$out/rustworthy/split.json" ]]; then
        ref_args+=(--split-json "$out/rustworthy/split.json")
    else
        say "no $out/rustworthy/split.json: cannot reproduce --subset for the reference"
        status=1
    fi
fi

refs=()
for loader in tensor dataloader; do
    f="$out/pytorch-$loader.json"
    refs+=(--ref "pytorch-$loader=$f")
    ((status == 0 || subset == 0)) || continue
    say "pytorch reference, --loader $loader"
    if ! timed "pytorch-$loader" "$PYTHON" scripts/ref/train_ref.py "${ref_args[@]}" \
            --loader "$loader" >"$f" 2>"$out/pytorch-$loader.log"; then
        say "reference ($loader) failed; last lines of $out/pytorch-$loader.log:"
        tail -n 20 "$out/pytorch-$loader.log" >&2
        rm -f "$f"
        status=1
    fi
done

settings=$(printf '{"arch": "%s", "device": "%s", "epochs": %d, "batch_size": %d, "lr": %s, "schedule": "cosine", "optim": "sgd momentum 0.9 nesterov wd 5e-4", "crop_padding": %d, "hflip": %s, "subset": %d, "threads": %d}' \
    "$arch" "$device" "$epochs" "$batch" "$lr" "$crop" "$hflip_toml" "$subset" "$threads")
"$PYTHON" scripts/bench_train.py --out "$out" --rust "$out/rustworthy/report.json" \
    --contention "$out/contention.jsonl" "${refs[@]}" --settings "$settings" || status=1
exit "$status"
