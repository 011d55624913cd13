#!/usr/bin/env bash
# The README's test command: sets everything up (tools/setup.sh), then runs every test as Bazel targets
# (C++ core and shape-function tests, Python tests of the ops, layers and models), and prints a summary.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || exit 1
# The CUDA path is compiled (not run: no GPU here) so that it cannot rot; skipped when there is no nvcc.
bash tools/check_cuda_build.sh
cuda_status=$?
# Tests that read ../shared (reference data) find it through this variable; they skip when it is absent.
shared="$(cd .. && pwd)/shared"
bazel test -c opt --noshow_progress --test_env=FUSED_RNN_SHARED="$shared" //... "$@"
status=$?
# The TF Serving recipe's Bazel part: our serving target built as an external repository of a TF-Serving-like
# workspace, every op registered with a CPU kernel in a program that links it (export/SERVING.md).
bash tools/check_serving_build.sh
serving_status=$?
.venv/bin/python tools/summarize_tests.py .
[ "$cuda_status" != 0 ] && echo "CUDA compile check FAILED (see above)" && status=1
[ "$serving_status" != 0 ] && echo "serving build check FAILED (see above)" && status=1
exit $status
