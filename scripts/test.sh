#!/usr/bin/env bash
# The test command: makes sure the set-up is done (without the main job), then runs every test.
# Real-data and PyTorch-fixture tests are required here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# (.ci/run has just done it and says so with RUSTWORTHY_SETUP_DONE=1.)
if [[ "${RUSTWORTHY_SETUP_DONE:-}" != 1 ]]; then
    scripts/setup.sh --no-run
fi
export RUSTWORTHY_REQUIRE_DATA=1 RUSTWORTHY_REQUIRE_PYTHON=1
cargo test --workspace --release "$@"
# The Python package (built and installed by the set-up above).
.venv/bin/python -m pytest -q python/tests
# Every file reader fuzzed: 2,000 mutated files each, the same every run (about 40 s; the
# release check runs `--runs 10000 --seed S`).
cargo run --release --quiet -p rustworthy-fuzz -- --runs 2000 --save runs/fuzz-findings
# The library examples, with small settings (they write under runs/example-*).
for example in zo_minimize salun_on_saved_run bip_pruning bench_unlearn pgd_torchscript; do
    echo "example $example (--small)"
    cargo run --release --quiet -p rustworthy --example "$example" -- --small
done
