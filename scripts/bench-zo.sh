#!/usr/bin/env bash
# CGE benchmark: `rustworthy bench zo` (batched perturbations, feature reuse, exact affine
# updates) against DeepZero's coordinate loop in PyTorch (scripts/bench_zo.py), with and without
# its module-level feature reuse, on the same model, batch, sparsity, device and thread count.
#
#   scripts/bench-zo.sh [--arch resnet20] [--device cpu] [--batch 256] [--sparsity 0.9]
#                       [--coords 2000] [--ref-coords 300] [--threads N] [--out runs/bench-zo]
#
# Each side times a stratified sample of the coordinate set (every conv/linear weight at
# 1 - sparsity, every bias) and extrapolates to the whole set. Prints queries per second,
# seconds per ZO training step, the ratio to the references, and the rate the queries reach
# (FLOPs of the forward passes DeepZero's loop runs for the same queries, per second) as a
# fraction of the sgemm rate measured in the same run. Writes OUT/results.json and OUT/table.md.
#
# Environment: RUSTWORTHY_BIN (default target/release/rustworthy), PYTHON (default
# .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=resnet20 device=cpu batch=256 sparsity=0.9 coords=2000 ref_coords=300 threads=0
out=runs/bench-zo
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "bench-zo: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) need "$@"; arch=$2; shift 2 ;;
        --device) need "$@"; device=$2; shift 2 ;;
        --batch) need "$@"; batch=$2; shift 2 ;;
        --sparsity) need "$@"; sparsity=$2; shift 2 ;;
        --coords) need "$@"; coords=$2; shift 2 ;;
        --ref-coords) need "$@"; ref_coords=$2; shift 2 ;;
        --threads) need "$@"; threads=$2; shift 2 ;;
        --out) need "$@"; out=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-zo: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

bin=${RUSTWORTHY_BIN:-target/release/rustworthy}
if [[ -z "${RUSTWORTHY_BIN:-}" && ! -x "$bin" ]]; then cargo build --release; fi
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
if [[ -n "${RUSTWORTHY_BIN:-}" ]]; then
    torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
fi
mkdir -p "$out"
common=(--arch "$arch" --batch "$batch" --sparsity "$sparsity" --device "$device" --threads "$threads")
"$bin" bench zo "${common[@]}" --coords "$coords" > "$out/rustworthy.json"
"$py" scripts/bench_zo.py "${common[@]}" --coords "$ref_coords" > "$out/pytorch-reuse.json"
"$py" scripts/bench_zo.py "${common[@]}" --coords "$ref_coords" --no-reuse > "$out/pytorch-no-reuse.json"
"$py" - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
rw = json.load(open(f"{out}/rustworthy.json"))
refs = [json.load(open(f"{out}/pytorch-{k}.json")) for k in ("reuse", "no-reuse")]
ref = refs[0]
# Our queries do the work of the reference's queries: the same FLOPs per query.
rw["gflops_per_s"] = ref["query_gflop"] * rw["queries_per_s"]
rw["fraction_of_sgemm"] = rw["gflops_per_s"] / ref["sgemm_gflops_per_s"]
rows = []
for r in [rw] + refs:
    rows.append((r["impl"], r["coords_timed"], r["queries_per_s"], r["step_seconds"],
                 rw["queries_per_s"] / r["queries_per_s"], r["gflops_per_s"],
                 r["fraction_of_sgemm"]))
head = ("implementation", "coords timed", "queries/s", "s/step", "rustworthy speed-up",
        "GFLOP/s (reference FLOPs)", "of sgemm")
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for r in rows:
    lines.append(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.1f}x | {r[5]:.1f} | {r[6]:.1%} |")
meta = (f"{rw['arch']}, batch {rw['batch']}, sparsity {rw['sparsity']}, "
        f"{rw['coords_per_step']} coordinates per step, {rw['device']}, "
        f"{rw['threads']} threads; sgemm {ref['sgemm_gflops_per_s']:.0f} GFLOP/s")
table = meta + "\n\n" + "\n".join(lines)
print(table)
open(f"{out}/table.md", "w").write(table + "\n")
json.dump({"rustworthy": rw, "references": refs}, open(f"{out}/results.json", "w"), indent=2)
EOF
