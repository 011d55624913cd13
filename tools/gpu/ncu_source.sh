#!/usr/bin/env bash
# Per-instruction stall sampling of the persistent kernel for some PROFILE_CASES keys (tools/gpu/driver.py), on the
# GPU machine: builds with -lineinfo (sm_90 only), records clock64 phase stamps, then runs Nsight Compute on one
# launch of each case and writes the SASS-level source page (CSV) and the details page under $OUT.
#   CASES="h1024_tagged h512_tagged" OUT=/tmp/out bash tools/gpu/ncu_source.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/fused_rnn_ncu_out}"
BUILD_DIR="${BUILD_DIR:-/tmp/fused_rnn_ncu_build}"
CASES="${CASES:-h1024_tagged}"
mkdir -p "$OUT"
BUILD_ONLY=1 BUILD_DIR="$BUILD_DIR" NVCC_EXTRA=-lineinfo GPU_ARCH="-gencode arch=compute_90,code=sm_90" OUT="$OUT" \
  bash tools/gpu/run_all.sh || exit 2
LIB="$BUILD_DIR/libfused_rnn_gpu.so"
export PYTHONUNBUFFERED=1
python3 tools/gpu/driver.py --lib "$LIB" --out "$OUT" --profile-only "$(echo $CASES | tr ' ' ',')" 2>&1 | tail -3
for c in $CASES; do
  rep="/tmp/ncu_$c"
  ncu --clock-control none -k regex:'Rnn(Persistent|Small|Int8Mma)Kernel' -s 2 -c 1 --section WarpStateStats --section SourceCounters \
    --section InstructionStats --section LaunchStats --import-source yes -f -o "$rep" \
    python3 tools/gpu/driver.py --lib "$LIB" --out /tmp/ncu_driver_out --ncu-case "$c" >"/tmp/ncu_$c.log" 2>&1 \
    || { tail -20 "/tmp/ncu_$c.log"; continue; }
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass >"$OUT/src_$c.csv" 2>&1
  ncu -i "$rep.ncu-rep" --page details >"$OUT/det_$c.txt" 2>&1
  echo "$c: $(wc -l <"$OUT/src_$c.csv") source rows"
done
ls -la "$OUT"
