#!/usr/bin/env bash
# The README's main job, end to end on a fresh machine: set everything up (tools/setup.sh: Debian packages, the
# virtual environment, the op library built by Bazel), then tools/demo.py: train a small NMT model on a generated
# task, export it and a small ELMo as SavedModels (fused and portable flavours), load the exports in a fresh
# process to translate and embed, and print the fused-versus-stock speed tables for this machine.
# Arguments go to tools/demo.py (e.g. --skip-bench, --steps 700, --work-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python tools/demo.py "$@"
