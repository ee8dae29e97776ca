#!/usr/bin/env bash
# DDPM training-step benchmark: `rustworthy bench ddpm-step` against the same steps in PyTorch
# (scripts/ref/ddpm_step_ref.py: the same U-Net layout, initial weights and batches; forward,
# summed epsilon loss, backward, clip_grad_norm_, torch.optim.Adam, EMA), same thread count.
#
#   scripts/bench-ddpm-step.sh [--preset fmnist-ddpm-mini] [--batch N] [--warmup 3] [--steps 41]
#                              [--threads 2] [--out runs/bench-ddpm-step]
#
# Prints both sides' first-batch loss with dropout off (they must agree), the median seconds per
# step and the ratio reference / rustworthy (above 1: rustworthy is faster); writes OUT/table.md.
#
# Environment: RUSTWORTHY_BIN (default target/release/rustworthy), PYTHON (default
# .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

preset=fmnist-ddpm-mini batch="" warmup=3 steps=41 threads=2 out=runs/bench-ddpm-step
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "bench-ddpm-step: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) need "$@"; preset=$2; shift 2 ;;
        --batch) need "$@"; batch=$2; shift 2 ;;
        --warmup) need "$@"; warmup=$2; shift 2 ;;
        --steps) need "$@"; steps=$2; shift 2 ;;
        --threads) need "$@"; threads=$2; shift 2 ;;
        --out) need "$@"; out=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-ddpm-step: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

bin=${RUSTWORTHY_BIN:-target/release/rustworthy}
if [[ -z "${RUSTWORTHY_BIN:-}" && ! -x "$bin" ]]; then cargo build --release; fi
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
mkdir -p "$out"
extra=()
[[ -n "$batch" ]] && extra=(--batch "$batch")
"$bin" bench ddpm-step --preset "$preset" "${extra[@]}" --warmup "$warmup" --steps "$steps" \
    --threads "$threads" --out "$out"
"$py" scripts/ref/ddpm_step_ref.py "$out" "$threads"
"$py" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rw = json.load(open(f"{out}/rustworthy.json"))
pt = json.load(open(f"{out}/pytorch.json"))
b = rw["bench"]
ratio = pt["median_s"] / rw["median_s"]
rows = [
    "| side | first-batch loss | median s/step | steps | threads |",
    "|---|---:|---:|---:|---:|",
    f"| rustworthy | {rw['first_loss_eval']:.6f} | {rw['median_s']:.4f} | {len(rw['step_s'])} | {rw['threads']} |",
    f"| PyTorch {pt['torch']} | {pt['first_loss_eval']:.6f} | {pt['median_s']:.4f} | {len(pt['step_s'])} | {pt['threads']} |",
    "",
    f"DDPM training step, U-Net ch {b['unet']['ch']} x {b['unet']['ch_mult']} at {b['unet']['resolution']} px, "
    f"batch {b['batch']}: rustworthy is {ratio:.2f}x the reference's speed "
    f"(first losses differ by {abs(rw['first_loss_eval'] - pt['first_loss_eval']):.2e})",
]
open(f"{out}/table.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
