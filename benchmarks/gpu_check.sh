#!/usr/bin/env bash
# SFT / reward model / DPO / PPO on a ~0.5B random-init Llama on the GPU: tokens/s, peak GPU
# memory and MFU as JSON (benchmarks/gpu_check.py). Exits 3 with a message without a GPU.
#   benchmarks/gpu_check.sh [--steps 20] [--batch-size 16] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); nothing to run" >&2
    exit 3
fi
export COACHLM_NO_PROGRESS=1
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" benchmarks/gpu_check.py "$@"
