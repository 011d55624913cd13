#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine, and is safe to run again (each step skips what is done):
# Debian packages (Bazel 4.2.3, GoogleTest), the virtual environment .venv/ with the pinned Python packages,
# the Bazel configuration for that TensorFlow, and the op library, copied into tf_ops/.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[setup] $*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages.
need=()
command -v bazel >/dev/null 2>&1 || need+=(bazel-bootstrap)
[ -f /usr/lib/x86_64-linux-gnu/libgtest.a ] || [ -f /usr/lib/libgtest.a ] || need+=(libgtest-dev googletest)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need+=(python3-venv); fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  as_root apt-get update -q
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# 2. The virtual environment with the pinned packages.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
pinned_ok() {  # are the pins of requirements file $1 installed?
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line: continue
    name, version = re.split(r"==", line)
    if md.version(name) != version: sys.exit(1)
PY
}
if ! pinned_ok requirements.txt; then
  say "installing Python packages (requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
if ! pinned_ok requirements-nodeps.txt; then
  say "installing Python packages (requirements-nodeps.txt, without their dependencies)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
fi

# 3. Bazel configuration for this TensorFlow (writes .tf_configure.bazelrc).
.venv/bin/python tools/configure.py 2>/dev/null

# 4. Build the op library and put it where `import tf_ops` finds it.
say "building //cc:_fused_rnn_ops.so"
bazel build -c opt --noshow_progress //cc:_fused_rnn_ops.so
install -m 0644 bazel-bin/cc/_fused_rnn_ops.so tf_ops/_fused_rnn_ops.so
say "ready: .venv/bin/python -c 'import tf_ops'"
