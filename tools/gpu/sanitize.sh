#!/usr/bin/env bash
# compute-sanitizer over the persistent kernels (issue 9), on the GPU machine:
#   bash tools/gpu/sanitize.sh        # logs under $OUT (default /tmp/fused_rnn_sanitize_out)
# 1. builds the library with -lineinfo (tools/gpu/run_all.sh, BUILD_ONLY=1; sm_90 unless GPU_ARCH says otherwise);
# 2. runs the small sanitizer cases once without a tool (correctness + which plan each case selects), then the
#    co-residency refusal check (a multi-block plan that cannot be resident must fail fast, not hang), both torch-free
#    (tools/gpu/sanitize_cases.py, reached through driver.py);
# 3. runs the same cases under compute-sanitizer memcheck (--leak-check full), racecheck, synccheck and initcheck,
#    each with --error-exitcode 1 and a time cap, inside an overall budget (BUDGET_S) so one call of the device tool
#    holds it all; then two positive controls (a planted out-of-bounds write for memcheck, a planted uninitialised
#    input for initcheck) that the tools must report. Writes summary.txt, build.log, cases.log, planted.log and one
#    <tool>.log per tool (8 files at most: the device tool's limit).
# Environment: OUT, BUILD_DIR, GPU_ARCH, BUDGET_S (default 560 s for the whole script), TOOLS (default
# "memcheck racecheck synccheck initcheck"), CASES (comma-separated case-name substrings; default all), SKIP_BUILD=1
# (use a library already built into BUILD_DIR with -lineinfo).
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
OUT="${OUT:-/tmp/fused_rnn_sanitize_out}"
BUILD_DIR="${BUILD_DIR:-/tmp/fused_rnn_sanitize_build}"
BUDGET_S="${BUDGET_S:-560}"
TOOLS="${TOOLS:-memcheck racecheck synccheck initcheck}"
export GPU_ARCH="${GPU_ARCH:--gencode arch=compute_90,code=sm_90}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$BUILD_DIR"
LIB="$BUILD_DIR/libfused_rnn_gpu.so"
SUMMARY="$OUT/summary.txt"
overall=0  # 1 if any case failed, a tool reported anything, a run timed out, or a positive control went unreported
CASE_ARGS=(--lib "$LIB" --sanitize-cases)
[ -n "${CASES:-}" ] && CASE_ARGS+=(--cases "$CASES")

{
  echo "date (UTC): $(date -u '+%Y-%m-%d %H:%M')"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
  echo "nvcc: $(nvcc --version | tail -2 | tr '\n' ' ')"
  echo "compute-sanitizer: $(compute-sanitizer --version 2>&1 | tr '\n' ' ')"
  echo "python: $(python3 --version 2>&1), numpy $(python3 -c 'import numpy; print(numpy.__version__)')"
} >"$SUMMARY"

echo "== build (-lineinfo, $GPU_ARCH)"
t0=$(date +%s)
if [ "${SKIP_BUILD:-0}" = 1 ] && [ -f "$LIB" ]; then
  # Built earlier in the same device call (run_all.sh with NVCC_EXTRA=-lineinfo and this BUILD_DIR), e.g. in
  # parallel with another build.
  echo "build: skipped, prebuilt $LIB" | tee -a "$SUMMARY"
elif ! NVCC_EXTRA="-lineinfo" BUILD_ONLY=1 BUILD_DIR="$BUILD_DIR" OUT="$BUILD_DIR/out" bash tools/gpu/run_all.sh \
    >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "BUILD FAILED" | tee -a "$SUMMARY"
  exit 2
else
  cat "$BUILD_DIR/out/resource_usage.txt" >>"$OUT/build.log" 2>/dev/null || true
  echo "build: $(( $(date +%s) - t0 )) s (-lineinfo $GPU_ARCH)" | tee -a "$SUMMARY"
fi

echo "== cases without a tool"
t0=$(date +%s)
timeout -k 10 180 python3 tools/gpu/driver.py "${CASE_ARGS[@]}" >"$OUT/cases.log" 2>&1
rc=$?
[ "$rc" = 0 ] || overall=1
echo "no tool: rc=$rc $(( $(date +%s) - t0 )) s | $(grep '== sanitize cases' "$OUT/cases.log" | tail -1)" \
  | tee -a "$SUMMARY"
grep -E "^coverage" "$OUT/cases.log" | cut -c1-2000 >>"$SUMMARY"

echo "== co-residency refusal check"
t0=$(date +%s)
python3 tools/gpu/driver.py --lib "$LIB" --coresidency-check --timeout 90 >>"$OUT/cases.log" 2>&1
rc=$?
[ "$rc" = 0 ] || overall=1
echo "co-residency: rc=$rc $(( $(date +%s) - t0 )) s | $(grep '== co-residency:' "$OUT/cases.log" | tail -1)" \
  | tee -a "$SUMMARY"

cap_for() {
  case "$1" in
    memcheck) echo 150 ;;
    racecheck) echo 180 ;;
    *) echo 120 ;;
  esac
}
for tool in $TOOLS; do
  left=$(( start + BUDGET_S - $(date +%s) ))
  cap=$(cap_for "$tool")
  limit=$(( left < cap ? left : cap ))
  if [ "$limit" -lt 20 ]; then
    echo "$tool: skipped (budget spent)" | tee -a "$SUMMARY"
    overall=1
    continue
  fi
  opts=(--tool "$tool" --error-exitcode 1)
  [ "$tool" = memcheck ] && opts+=(--leak-check full)
  echo "== compute-sanitizer ${opts[*]} (limit ${limit} s)"
  t0=$(date +%s)
  timeout -k 10 "$limit" compute-sanitizer "${opts[@]}" python3 tools/gpu/driver.py "${CASE_ARGS[@]}" \
    >"$OUT/$tool.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || overall=1
  secs=$(( $(date +%s) - t0 ))
  summary_line=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" "$OUT/$tool.log" | tail -2 | tr '\n' ' ')
  cases_line=$(grep '== sanitize cases' "$OUT/$tool.log" | tail -1)
  status="rc=$rc"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="rc=$rc (TIMED OUT after ${limit} s)"
  echo "$tool: $status ${secs} s | ${summary_line:-no summary line} | ${cases_line:-no case summary}" \
    | tee -a "$SUMMARY"
done
# Positive controls: a planted host-side mistake the tool must report inside the kernel (a clean run above means
# something only if the tool sees into RnnPersistentKernel at all).
echo "== positive controls (planted mistakes)"
: >"$OUT/planted.log"
for pair in "memcheck:short_out:Invalid __global__ write" "initcheck:uninit_x:Uninitialized __global__ memory read"; do
  tool=${pair%%:*}; rest=${pair#*:}; plant=${rest%%:*}; want=${rest#*:}
  echo "######## compute-sanitizer --tool $tool, planted $plant" >>"$OUT/planted.log"
  timeout -k 10 60 compute-sanitizer --tool "$tool" --error-exitcode 1 python3 tools/gpu/driver.py --lib "$LIB" \
    --sanitize-planted "$plant" >>"$OUT/planted.log" 2>&1
  rc=$?
  n=$(grep -c "$want" "$OUT/planted.log" || true)
  [ "$n" -gt 0 ] || overall=1
  where=$(grep -A3 "$want" "$OUT/planted.log" | grep -m1 -o -E "[^ /]+\.cuh?:[0-9]+" || true)
  echo "positive control $tool/$plant: rc=$rc, '$want' reported $n times ${where:+($where)}" | tee -a "$SUMMARY"
done
echo "total: $(( $(date +%s) - start )) s; overall $([ $overall = 0 ] && echo clean || echo NOT clean)" \
  | tee -a "$SUMMARY"

echo
echo "================ summary"
cat "$SUMMARY"
for tool in $TOOLS; do
  [ -f "$OUT/$tool.log" ] || continue
  n=$(grep -c "^========= " "$OUT/$tool.log" || true)
  echo "---- $tool.log: $(wc -l <"$OUT/$tool.log") lines, $n sanitizer lines; first reports:"
  grep "^========= " "$OUT/$tool.log" | grep -v -E "COMPUTE-SANITIZER|ERROR SUMMARY" | head -12 | cut -c1-300
done
echo "---- failed cases / co-residency"
grep -h -E "^FAIL|FAILED|coverage MISSING|LEAK in" "$OUT/cases.log" "$OUT"/*check.log 2>/dev/null | head -20 | cut -c1-400
echo "overall: $([ $overall = 0 ] && echo CLEAN || echo NOT CLEAN)"
exit $overall
