#!/usr/bin/env bash
# Coverage-guided fuzzing of the core (cc/core/fuzz_core.cc) with libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer, for a bounded time:
#   bash tools/fuzz_core.sh [seconds, default 300] [extra libFuzzer flags]
# Needs clang (installs Debian's clang-14 when no clang++ is found). Starts from cc/core/fuzz_corpus/ and merges
# new coverage back into it (commit what it adds); a crash is written to $OUT/crash-* with the reproducer command.
# Every file in cc/core/fuzz_corpus/ is replayed by `bazel test //cc:core_fuzz_regressions`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
shift || true
OUT="${OUT:-/tmp/fused_rnn_fuzz}"
CXX="$(command -v clang++ || command -v clang++-16 || command -v clang++-14 || true)"
if [ -z "$CXX" ]; then
  echo "[fuzz] installing clang-14 and its sanitizer/fuzzer runtimes (Debian)"
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -q --no-install-recommends clang-14 libclang-rt-14-dev >/dev/null;
  else sudo apt-get install -y -q --no-install-recommends clang-14 libclang-rt-14-dev >/dev/null; fi
  CXX=clang++-14
fi
mkdir -p "$OUT/corpus"
flags=(-std=c++17 -O1 -g -I. -DFUSED_RNN_HAVE_X86_KERNELS -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -pthread)
echo "[fuzz] building with $CXX"
objs=()
for src in cc/core/fused_rnn.cc cc/core/fused_rnn_cpu.cc cc/core/fused_rnn_cpu_backward.cc cc/core/cpu_kernels_portable.cc; do
  "$CXX" "${flags[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -c "$src" -o "$OUT/$(basename "$src").o" & objs+=("$OUT/$(basename "$src").o")
done
"$CXX" "${flags[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -mavx2 -mfma -mf16c -c cc/core/cpu_kernels_avx2.cc -o "$OUT/avx2.o" & objs+=("$OUT/avx2.o")
"$CXX" "${flags[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -mavx512f -mavx512dq -mavx512vl -mavx2 -mfma -c cc/core/cpu_kernels_avx512.cc -o "$OUT/avx512.o" & objs+=("$OUT/avx512.o")
"$CXX" "${flags[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -mavx512f -mavx512dq -mavx512vl -mavx512bw -mavx512vnni -mavx2 -mfma -c cc/core/cpu_kernels_avx512vnni.cc -o "$OUT/avx512vnni.o" & objs+=("$OUT/avx512vnni.o")
wait
"$CXX" "${flags[@]}" cc/core/fuzz_core.cc "${objs[@]}" -o "$OUT/fuzz_core"
echo "[fuzz] running for ${seconds}s (corpus $OUT/corpus, seeds cc/core/fuzz_corpus)"
set +e
"$OUT/fuzz_core" "$OUT/corpus" cc/core/fuzz_corpus -max_total_time="$seconds" -max_len=64 -timeout=20 \
  -artifact_prefix="$OUT/" -print_final_stats=1 "$@" 2>&1 | tee "$OUT/fuzz.log" | grep -E "^#[0-9]+ +(INITED|DONE|pulse)|stat::|ERROR|SUMMARY|crash-|Test unit" 
status=${PIPESTATUS[0]}
set -e
# Keep the corpus small: merge only inputs that add coverage into the committed seed directory.
"$OUT/fuzz_core" -merge=1 cc/core/fuzz_corpus "$OUT/corpus" -max_len=64 -artifact_prefix="$OUT/" >"$OUT/merge.log" 2>&1 || true
echo "[fuzz] corpus: $(ls cc/core/fuzz_corpus | wc -l) inputs in cc/core/fuzz_corpus; exit status $status"
exit "$status"
