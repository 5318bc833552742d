#!/usr/bin/env bash
# The GPU check of issue 13 (see scripts/gpu_check.py): equality on CUDA, block benchmarks at
# 97/145/193, 100 training iterations at 769x769 for FCN, Non-local and DGMN (ResNet-101, AMP).
# Writes benchmarks/results-gpu-<date>.json and .md. Pass --dry to run it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" scripts/gpu_check.py "$@"
