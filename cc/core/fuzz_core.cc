// Coverage-guided fuzz target of the core (libFuzzer; tools/fuzz_core.sh builds and runs it with clang's
// -fsanitize=fuzzer,address,undefined for a bounded time). The same file, linked with fuzz_replay_main.cc, is the
// regression test //cc:core_fuzz_regressions over cc/core/fuzz_corpus/ (every crash found goes there).
//
// An input is a shape (cell, direction, T, B, H, P, layout, clips, int8), a seed for the tensors, and the
// sequence lengths, all read from the fuzzer's bytes, deliberately including invalid values. The core's own
// validation (CheckShape, FirstBadLength) must reject the invalid ones; for every accepted input the forward must
// match the float64 reference (within 1e-4 relative), write every output (outputs are NaN-poisoned first), give
// bitwise the same results with helper threads on time, late or never run, also while writing a training
// reserve (float weights). The backward is not fuzzed here (the core tests check it on fixed cases). Any
// violation aborts, which libFuzzer records as a crash.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cc/core/fused_rnn.h"
#include "cc/core/test_util.h"

namespace {

using namespace fused_rnn;             // NOLINT
using namespace fused_rnn::test_util;  // NOLINT

class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Next() { return pos_ < size_ ? data_[pos_++] : 0; }
  // An integer in [lo, hi] (the range includes invalid values on purpose).
  int64_t In(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Next()) % (hi - lo + 1); }
  uint32_t U32() { return Next() | (Next() << 8) | (Next() << 16) | (static_cast<uint32_t>(Next()) << 24); }

 private:
  const uint8_t* data_;
  size_t size_, pos_ = 0;
};

// memcmp of empty vectors would pass it null pointers (undefined behaviour, which UBSan reports).
bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0);
}

float Clip(uint8_t code) {
  static const float kClips[] = {0.f, 0.f, 0.5f, 3.f, -1.f, NAN};
  return kClips[code % 6];
}

void Require(bool ok, const char* what, const RnnShape& s) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_core: %s (cell %d dir %d T %lld B %lld H %lld P %lld time_major %d clips %g %g int8 %d)\n",
               what, static_cast<int>(s.cell), static_cast<int>(s.direction), static_cast<long long>(s.max_time),
               static_cast<long long>(s.batch), static_cast<long long>(s.num_units),
               static_cast<long long>(s.num_proj), s.time_major, s.cell_clip, s.proj_clip, s.int8_weights);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  const CellType cell = in.Next() % 2 ? CellType::kGru : CellType::kLstm;
  const Direction dir = static_cast<Direction>(in.Next() % 3);
  const int64_t T = in.In(-2, 9), B = in.In(-2, 6), H = in.In(-1, 40), P = in.In(-1, 24);
  const bool time_major = in.Next() % 2;
  const float cell_clip = Clip(in.Next()), proj_clip = Clip(in.Next());
  const bool int8 = in.Next() % 2;
  RnnShape s;
  s.cell = cell;
  s.direction = dir;
  s.max_time = T;
  s.batch = B;
  s.num_units = H;
  s.num_proj = P;
  s.time_major = time_major;
  s.cell_clip = cell_clip;
  s.proj_clip = proj_clip;
  if (CheckShape(s) != nullptr) return 0;  // rejected (the TF layer turns the message into InvalidArgument)
  Require(T >= 0 && B >= 0 && H >= 1 && P >= 0 && cell_clip >= 0.f && proj_clip >= 0.f, "CheckShape accepted an "
          "invalid shape", s);
  Problem p = MakeProblem(cell, dir, T, B, H, P, time_major, cell_clip, proj_clip, in.U32());
  for (int64_t b = 0; b < B; ++b) p.lengths[b] = static_cast<int32_t>(in.In(-2, T + 2));
  const int64_t bad = FirstBadLength(p.lengths.data(), B, T);
  bool any_bad = false;
  for (int64_t b = 0; b < B; ++b) any_bad |= p.lengths[b] < 0 || p.lengths[b] > T;
  Require((bad >= 0) == any_bad, "FirstBadLength disagrees with the lengths", s);
  if (bad >= 0) return 0;
  if (int8) MakeInt8(&p);

  std::vector<double> out, fh, fc;
  Reference(p, &out, &fh, &fc);
  for (const cpu::StepKernels* k : AvailableKernels()) {
    const Result serial = RunCore(p, *k, nullptr);
    Require(RelErr(serial.out, out, out.size()) < 1e-4, "output differs from the float64 reference", p.s);
    Require(RelErr(serial.fh, fh, fh.size()) < 1e-4, "final h differs from the float64 reference", p.s);
    if (cell == CellType::kLstm) {
      Require(RelErr(serial.fc, fc, fc.size()) < 1e-4, "final c differs from the float64 reference", p.s);
    }
    ThreadRunner on_time(2), late(2, 300), never(2, 0, true);
    for (ParallelRunner* runner : std::vector<ParallelRunner*>{&on_time, &late, &never}) {
      const Result threaded = RunCore(p, *k, runner, /*with_reserve=*/!int8);
      Require(SameBits(threaded.out, serial.out), "threads changed the output", p.s);
      Require(SameBits(threaded.fh, serial.fh), "threads changed the final h", p.s);
    }
  }
  return 0;
}
