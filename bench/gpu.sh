#!/usr/bin/env bash
# Encoder + head throughput at the real sizes (ViT-L/14-336, LLaVA-1.5-7B-shaped head),
# random weights built from configs, fp16. Run it whenever a CUDA GPU is at hand:
#   bash bench/gpu.sh            -> bench/results/gpu_throughput.json (about 2-3 minutes)
# Needs ~20 GiB of GPU memory. With no GPU it runs the tiny sizes on CPU instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  exec timeout 290 "$PY" bench/gpu_throughput.py "$@"
else
  echo "no CUDA GPU: running the tiny sizes on CPU to check the code path" >&2
  exec timeout 290 "$PY" bench/gpu_throughput.py --tiny "$@"
fi
