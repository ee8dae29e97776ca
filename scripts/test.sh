#!/usr/bin/env bash
# The test command: makes sure the set-up is done (without the main job), then runs every test.
# Real-data and PyTorch-fixture tests are required here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-run
export RUSTWORTHY_REQUIRE_DATA=1 RUSTWORTHY_REQUIRE_PYTHON=1
# One test at a time: several tests seed libtorch's process-wide generator and compare results
# bit for bit, which concurrent tests in the same process would disturb.
cargo test --workspace --release "$@" -- --test-threads=1
# The library examples, with small settings (they write under runs/example-*).
for example in zo_minimize salun_on_saved_run bip_pruning bench_unlearn; do
    echo "example $example (--small)"
    cargo run --release --quiet -p rustworthy --example "$example" -- --small
done
