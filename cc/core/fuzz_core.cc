// Coverage-guided fuzz target of the core (libFuzzer; tools/fuzz_core.sh builds and runs it with clang's
// -fsanitize=fuzzer,address,undefined for a bounded time). The same file, linked with fuzz_replay_main.cc, is the
// regression test //cc:core_fuzz_regressions over cc/core/fuzz_corpus/ (every crash found goes there).
//
// An input is a shape (cell, direction, T, B, H, P, layout, clips, int8), a seed for the tensors, and the
// sequence lengths, all read from the fuzzer's bytes, deliberately including invalid values. The core's own
// validation (CheckShape, FirstBadLength) must reject the invalid ones; for every accepted input the forward must
// match the float64 reference (within 1e-4 relative), write every output (outputs are NaN-poisoned first), give
// bitwise the same results with helper threads on time, late or never run, also while writing a training
// reserve (float weights). With float weights the backward runs too, from that reserve and random output
// gradients: every gradient (x_proj, recurrent kernel, projection kernel, GRU bias, initial h and c) must match
// float64 central differences of the reference at sampled elements, and be bitwise the same whatever the helper
// threads do. Any violation aborts, which libFuzzer records as a crash.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
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

// Sampled central differences of the float64 loss against one gradient from the core: max error over
// max(|sampled reference|, |whole gradient|), so a gradient that is wrong everywhere, or zero, cannot pass.
double SampledGradError(const Problem& p, std::vector<double> Params::*member, const std::vector<float>& got,
                        const std::vector<float>& w_out, const std::vector<float>& w_fh,
                        const std::vector<float>& w_fc, uint32_t seed) {
  Params params = ToParams(p);
  std::vector<double>& v = params.*member;
  if (v.empty()) return 0;
  double scale = 1e-6, err = 0;
  for (float g : got) {
    if (!std::isfinite(g)) return INFINITY;
    scale = std::max(scale, static_cast<double>(std::fabs(g)));
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, v.size() - 1);
  for (int i = 0; i < 6; ++i) {
    const size_t idx = pick(rng);
    const double keep = v[idx], eps = 1e-6;
    v[idx] = keep + eps;
    const double up = Loss(p, params, w_out, w_fh, w_fc);
    v[idx] = keep - eps;
    const double down = Loss(p, params, w_out, w_fh, w_fc);
    v[idx] = keep;
    const double want = (up - down) / (2 * eps);
    scale = std::max(scale, std::fabs(want));
    err = std::max(err, std::fabs(got[idx] - want));
  }
  return err / scale;
}

bool SameGrads(const Grads& a, const Grads& b) {
  return SameBits(a.dx, b.dx) && SameBits(a.drk, b.drk) && SameBits(a.drb, b.drb) && SameBits(a.dpk, b.dpk) &&
         SameBits(a.dh0, b.dh0) && SameBits(a.dc0, b.dc0);
}

void CheckBackward(const Problem& p, uint32_t seed) {
  const RnnShape& s = p.s;
  const int64_t D = s.num_dirs(), R = s.recurrent_width();
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  auto random = [&](int64_t n) { std::vector<float> v(n); for (auto& e : v) e = n01(rng); return v; };
  const std::vector<float> w_out = random(s.max_time * s.batch * D * R);
  const std::vector<float> w_fh = random(D * s.batch * R), w_fc = random(D * s.batch * s.num_units);
  for (const cpu::StepKernels* k : AvailableKernels()) {
    const Grads g = RunBackward(p, *k, nullptr, w_out, w_fh, w_fc);
    const double tol = 1e-4;
    Require(SampledGradError(p, &Params::x, g.dx, w_out, w_fh, w_fc, seed + 1) < tol, "d_x_proj differs", s);
    Require(SampledGradError(p, &Params::rk, g.drk, w_out, w_fh, w_fc, seed + 2) < tol, "d_recurrent_kernel differs", s);
    Require(SampledGradError(p, &Params::h0, g.dh0, w_out, w_fh, w_fc, seed + 3) < tol, "d_initial_h differs", s);
    if (s.cell == CellType::kLstm) {
      Require(SampledGradError(p, &Params::c0, g.dc0, w_out, w_fh, w_fc, seed + 4) < tol, "d_initial_c differs", s);
      if (s.num_proj > 0) {
        Require(SampledGradError(p, &Params::pk, g.dpk, w_out, w_fh, w_fc, seed + 5) < tol,
                "d_projection_kernel differs", s);
      }
    } else {
      Require(SampledGradError(p, &Params::rb, g.drb, w_out, w_fh, w_fc, seed + 6) < tol, "d_recurrent_bias differs",
              s);
    }
    ThreadRunner on_time(2), late(2, 300), never(2, 0, true);
    for (ParallelRunner* runner : std::vector<ParallelRunner*>{&on_time, &late, &never}) {
      Require(SameGrads(RunBackward(p, *k, runner, w_out, w_fh, w_fc), g), "threads changed a gradient", s);
    }
  }
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
  if (!int8) CheckBackward(p, in.U32());
  return 0;
}
