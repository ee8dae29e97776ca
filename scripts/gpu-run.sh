#!/usr/bin/env bash
# Runs a rustworthy binary built on another machine on a machine whose own python3 has
# torch 2.11.0 (e.g. a CUDA box): points the loader at that torch's libraries.
#
#   scripts/gpu-run.sh target/release/rustworthy train --preset fmnist-resnet18 --device cuda
set -euo pipefail
PY=${PYTHON:-python3}
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
