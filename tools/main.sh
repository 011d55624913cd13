#!/usr/bin/env bash
# The README's main job: sets everything up (tools/setup.sh), then prints the fused-versus-stock speed table for
# this machine (bench/cpu_bench.py; ONNX Runtime and PyTorch columns appear when those are installed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python bench/cpu_bench.py "$@"
