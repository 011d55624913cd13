#!/usr/bin/env bash
# Builds the CUDA core into a small shared library and runs the device harness (correctness, then timing).
#   bash tools/gpu/run_all.sh                 # on the GPU machine; results under $OUT (default /tmp/fused_rnn_gpu_out)
#   python3 tools/gpu/make_tables.py $OUT/results.json   # markdown tables for bench/gpu/RESULTS.md
# Environment:
#   GPU_ARCH   gencode flags (default: sm_75, sm_80, sm_90 SASS + compute_90 PTX; CUDA 13 dropped sm_70, add
#              "-gencode arch=compute_70,code=sm_70" when building with CUDA 12.x; the device run passes sm_90 only)
#   BUILD_DIR  where objects and libfused_rnn_gpu.so go (default /tmp/fused_rnn_gpu_build)
#   NVCC_EXTRA extra nvcc flags for every object (tools/gpu/sanitize.sh passes -lineinfo)
#   BUILD_ONLY=1 stops after the build; DRIVER_ARGS extra driver.py arguments
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/fused_rnn_gpu_out}"
BUILD_DIR="${BUILD_DIR:-/tmp/fused_rnn_gpu_build}"
GPU_ARCH="${GPU_ARCH:--gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90}"
NVCC_FLAGS="-std=c++17 -O3 -Xcompiler -fPIC ${NVCC_EXTRA:-}"
mkdir -p "$BUILD_DIR" "$OUT"

echo "== build ($GPU_ARCH ${NVCC_EXTRA:-})"
t0=$(date +%s)
pids=()
for src in cc/cuda/*.cu; do
  obj="$BUILD_DIR/$(basename "${src%.cu}").o"
  # shellcheck disable=SC2086
  nvcc $NVCC_FLAGS $GPU_ARCH --threads 4 --resource-usage -c "$src" -o "$obj" >"$obj.log" 2>&1 &
  pids+=($!)
done
# shellcheck disable=SC2086
nvcc $NVCC_FLAGS -c tools/gpu/fused_rnn_gpu_shim.cc -o "$BUILD_DIR/shim.o"
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "$fail" != 0 ]; then
  grep -h -B2 -A8 -i -E "error|fatal" "$BUILD_DIR"/*.o.log | head -80
  echo "BUILD FAILED"
  exit 2
fi
nvcc -shared -o "$BUILD_DIR/libfused_rnn_gpu.so" "$BUILD_DIR"/fused_rnn_cuda*.o "$BUILD_DIR/shim.o"
echo "built in $(( $(date +%s) - t0 )) s"
# Register / spill report of the kernels (sm_90) for the notes.
cat "$BUILD_DIR"/*.o.log | grep -E "Compiling entry|registers|spill" | paste - - - 2>/dev/null \
  | grep "sm_90" | sed -e 's/ptxas info    : //g' >"$OUT/resource_usage.txt" || true
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0

echo "== driver"
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086
python3 tools/gpu/driver.py --lib "$BUILD_DIR/libfused_rnn_gpu.so" --out "$OUT" ${DRIVER_ARGS:-}
