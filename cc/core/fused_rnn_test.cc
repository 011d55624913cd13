// Tests of the framework-free core against a float64 reference written from the cell equations.
#include "cc/core/fused_rnn.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cc/core/cpu_internal.h"
#include "cc/core/test_util.h"

namespace fused_rnn {
namespace {

using namespace test_util;  // NOLINT: the shared test support

struct Case {
  CellType cell;
  Direction dir;
  int64_t T, B, H, P;
  bool time_major;
  float cell_clip, proj_clip;
};

class CoreTest : public ::testing::TestWithParam<Case> {};

TEST_P(CoreTest, MatchesFloat64ReferenceOnEveryIsaAndThreadCount) {
  const Case c = GetParam();
  static uint32_t seed = 1;
  Problem p = MakeProblem(c.cell, c.dir, c.T, c.B, c.H, c.P, c.time_major, c.cell_clip, c.proj_clip, seed++);
  // Cases cycle through float32, INT8, float16 and bfloat16 weights; the narrow ones run against the reference
  // with the same (dequantized / exactly converted) weights.
  switch (seed % 4) {
    case 1: MakeInt8(&p); break;
    case 2: Make16(&p, Weight16::kFloat16); break;
    case 3: Make16(&p, Weight16::kBFloat16); break;
    default: break;
  }
  SCOPED_TRACE(p.s.int8_weights ? "int8 weights"
               : p.s.weight16 == Weight16::kFloat16 ? "float16 weights"
               : p.s.weight16 == Weight16::kBFloat16 ? "bfloat16 weights" : "float weights");
  std::vector<double> out, fh, fc;
  Reference(p, &out, &fh, &fc);
  for (const cpu::StepKernels* k : AvailableKernels()) {
    SCOPED_TRACE(k->name);
    const Result serial = RunCore(p, *k, nullptr);
    EXPECT_LT(RelErr(serial.out, out, out.size()), 1e-5);
    EXPECT_LT(RelErr(serial.fh, fh, fh.size()), 1e-5);
    if (c.cell == CellType::kLstm) {
      EXPECT_LT(RelErr(serial.fc, fc, fc.size()), 1e-5);
    }
    // Threads (on time, late, or never run) change nothing, bit for bit.
    ThreadRunner on_time(3), late(3, 2000), never(3, 0, true);
    for (ParallelRunner* runner : std::vector<ParallelRunner*>{&on_time, &late, &never}) {
      const Result threaded = RunCore(p, *k, runner);
      EXPECT_EQ(0, std::memcmp(threaded.out.data(), serial.out.data(), sizeof(float) * out.size()));
      EXPECT_EQ(0, std::memcmp(threaded.fh.data(), serial.fh.data(), sizeof(float) * fh.size()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cells, CoreTest,
    ::testing::Values(Case{CellType::kLstm, Direction::kForward, 7, 5, 20, 0, false, 0, 0},
                      Case{CellType::kLstm, Direction::kReverse, 6, 3, 33, 0, true, 0, 0},
                      Case{CellType::kLstm, Direction::kBidirectional, 9, 6, 16, 0, false, 0, 0},
                      Case{CellType::kLstm, Direction::kBidirectional, 5, 9, 40, 24, false, 0.5f, 0.3f},
                      Case{CellType::kLstm, Direction::kForward, 4, 2, 130, 70, true, 0, 0.2f},
                      // H and P multiples of 16: weights read in place, not packed.
                      Case{CellType::kLstm, Direction::kBidirectional, 5, 6, 64, 32, false, 0.6f, 0.4f},
                      Case{CellType::kGru, Direction::kBidirectional, 4, 5, 32, 0, false, 0, 0},
                      Case{CellType::kLstm, Direction::kForward, 5, 2, 520, 0, false, 0, 0},  // splits a step
                      Case{CellType::kGru, Direction::kForward, 8, 4, 17, 0, false, 0, 0},
                      Case{CellType::kGru, Direction::kBidirectional, 6, 7, 48, 0, true, 0, 0},
                      Case{CellType::kGru, Direction::kReverse, 3, 1, 600, 0, false, 0, 0}));

TEST(CoreTest, Int8ZeroRowsAndEveryCellAgainstDequantizedReference) {
  const Case cases[] = {{CellType::kLstm, Direction::kBidirectional, 6, 5, 40, 24, false, 0.5f, 0.3f},
                        {CellType::kLstm, Direction::kForward, 5, 3, 33, 0, true, 0, 0},
                        {CellType::kGru, Direction::kReverse, 5, 4, 20, 0, false, 0, 0}};
  uint32_t seed = 50;
  for (const Case& c : cases) {
    Problem p = MakeProblem(c.cell, c.dir, c.T, c.B, c.H, c.P, c.time_major, c.cell_clip, c.proj_clip, seed++);
    const int64_t GH = p.s.num_gates() * c.H;
    for (int64_t j = 0; j < GH; ++j) p.rk[3 * GH + j] = 0.f;  // a zero row: scale 0, dequantized to 0
    MakeInt8(&p);
    EXPECT_EQ(p.rk_scale[3], 0.f);
    std::vector<double> out, fh, fc;
    Reference(p, &out, &fh, &fc);
    for (const cpu::StepKernels* k : AvailableKernels()) {
      SCOPED_TRACE(k->name);
      const Result r = RunCore(p, *k, nullptr);
      EXPECT_LT(RelErr(r.out, out, out.size()), 1e-5);
      EXPECT_LT(RelErr(r.fh, fh, fh.size()), 1e-5);
    }
  }
}

// INT8 on AVX-512 VNNI is an exact integer product over a fixed-point copy of the state (cpu_internal.h,
// ChainCtx::q8_vnni), with an exponent from a bound on |h|: each case below exercises one bound (1 for an LSTM,
// the clip or P's column 1-norm for a projection, a GRU's initial state, tiny and zero initial states, a packed
// tail, K not a multiple of 4). Its error against float64 must stay at float32's level, like the float path's.
TEST(CoreTest, Int8VnniFixedPointStaysAtFloat32Error) {
  const cpu::StepKernels* vnni = nullptr;
  for (const cpu::StepKernels* k : AvailableKernels()) if (k->int8_vnni) vnni = k;
  if (vnni == nullptr) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  struct VCase { Case c; float h0_scale; };
  const VCase cases[] = {
      {{CellType::kLstm, Direction::kForward, 12, 3, 300, 0, false, 0, 0}, 1.f},       // tail of 12 units, K=300
      {{CellType::kLstm, Direction::kBidirectional, 8, 4, 70, 41, false, 0, 0}, 1.f},  // projection, no clip
      {{CellType::kLstm, Direction::kReverse, 8, 2, 64, 30, true, 1.5f, 0.4f}, 1.f},   // projection with clips
      {{CellType::kGru, Direction::kForward, 10, 3, 99, 0, false, 0, 0}, 40.f},        // GRU, |h0| up to ~100
      {{CellType::kLstm, Direction::kForward, 6, 2, 33, 0, false, 0, 0}, 1e-20f},      // tiny initial state
      {{CellType::kGru, Direction::kReverse, 6, 2, 50, 0, false, 0, 0}, 0.f},          // zero initial state
  };
  uint32_t seed = 90;
  for (const VCase& vc : cases) {
    const Case& c = vc.c;
    Problem p = MakeProblem(c.cell, c.dir, c.T, c.B, c.H, c.P, c.time_major, c.cell_clip, c.proj_clip, seed++);
    for (auto& v : p.h0) v *= vc.h0_scale;
    MakeInt8(&p);
    SCOPED_TRACE(testing::Message() << "H=" << c.H << " P=" << c.P << " h0 scale " << vc.h0_scale);
    std::vector<double> out, fh, fc;
    Reference(p, &out, &fh, &fc);
    const Result got = RunCore(p, *vnni, nullptr);
    const Result flt = RunCore(p, cpu::kPortableKernels, nullptr);
    const double err = RelErr(got.out, out, out.size()), err_float = RelErr(flt.out, out, out.size());
    std::printf("int8 H=%ld P=%ld h0 x%g: error vnni %.2e, float path %.2e\n", static_cast<long>(c.H),
                static_cast<long>(c.P), vc.h0_scale, err, err_float);
    EXPECT_LT(err, 1e-6);
    EXPECT_LT(RelErr(got.fh, fh, fh.size()), 1e-6);
    if (c.cell == CellType::kLstm) EXPECT_LT(RelErr(got.fc, fc, fc.size()), 1e-6);
  }
}

// A NaN or infinite state cannot be a fixed-point integer: such a row takes the float product from that step on,
// and must end exactly where the float path ends (same NaN and infinity positions, same finite values).
TEST(CoreTest, Int8VnniNonFiniteStatesFollowTheFloatPath) {
  const cpu::StepKernels* vnni = nullptr;
  for (const cpu::StepKernels* k : AvailableKernels()) if (k->int8_vnni) vnni = k;
  if (vnni == nullptr) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (CellType cell : {CellType::kLstm, CellType::kGru}) {
    for (int64_t P : {0, 12}) {
      if (cell == CellType::kGru && P > 0) continue;
      Problem p = MakeProblem(cell, Direction::kForward, 6, 4, 20, P, false, 0, 0, 123 + static_cast<uint32_t>(P));
      for (auto& l : p.lengths) l = 6;
      const int64_t G = p.s.num_gates(), H = 20, R = p.s.recurrent_width();
      p.x[(0 * 6 + 2) * G * H + 5] = nan;  // row 0, step 2
      p.h0[1 * R + 3] = inf;               // row 1: an infinite initial state
      p.h0[2 * R + 0] = nan;               // row 2: a NaN initial state; row 3 stays finite
      MakeInt8(&p);
      SCOPED_TRACE(testing::Message() << (cell == CellType::kLstm ? "LSTM" : "GRU") << " P=" << P);
      const Result got = RunCore(p, *vnni, nullptr);
      const Result want = RunCore(p, cpu::kPortableKernels, nullptr);
      for (size_t i = 0; i < want.out.size(); ++i) {
        ASSERT_EQ(std::isnan(got.out[i]), std::isnan(want.out[i])) << i;
        if (std::isfinite(want.out[i])) {
          EXPECT_NEAR(got.out[i], want.out[i], 1e-5) << i;
        } else if (!std::isnan(want.out[i])) {
          EXPECT_EQ(got.out[i], want.out[i]) << i;
        }
      }
      // Row 3 never saw a non-finite value.
      for (int64_t t = 0; t < 6; ++t)
        for (int64_t j = 0; j < R; ++j) EXPECT_TRUE(std::isfinite(got.out[(3 * 6 + t) * R + j]));
    }
  }
}

TEST(CoreTest, SixteenBitWeightsEveryCellAndSpecialValues) {
  const Case cases[] = {{CellType::kLstm, Direction::kBidirectional, 6, 5, 40, 24, false, 0.5f, 0.3f},
                        {CellType::kLstm, Direction::kForward, 5, 3, 33, 0, true, 0, 0},
                        {CellType::kGru, Direction::kReverse, 5, 4, 20, 0, false, 0, 0}};
  uint32_t seed = 70;
  for (Weight16 kind : {Weight16::kFloat16, Weight16::kBFloat16}) {
    for (const Case& c : cases) {
      Problem p = MakeProblem(c.cell, c.dir, c.T, c.B, c.H, c.P, c.time_major, c.cell_clip, c.proj_clip, seed++);
      // Tiny weights (float16 subnormals: 2^-24 .. 2^-14), exact zeros and negative zeros convert exactly too.
      for (size_t i = 0; i < p.rk.size(); i += 7) p.rk[i] = (i % 3 == 0 ? 3e-7f : -2e-6f) * static_cast<float>(i % 5);
      for (size_t i = 3; i < p.rk.size(); i += 11) p.rk[i] = -0.f;
      Make16(&p, kind);
      SCOPED_TRACE(kind == Weight16::kFloat16 ? "float16" : "bfloat16");
      std::vector<double> out, fh, fc;
      Reference(p, &out, &fh, &fc);
      for (const cpu::StepKernels* k : AvailableKernels()) {
        SCOPED_TRACE(k->name);
        const Result r = RunCore(p, *k, nullptr);
        EXPECT_LT(RelErr(r.out, out, out.size()), 1e-5);
        EXPECT_LT(RelErr(r.fh, fh, fh.size()), 1e-5);
        if (c.cell == CellType::kLstm) {
          EXPECT_LT(RelErr(r.fc, fc, fc.size()), 1e-5);
        }
      }
    }
  }
}

// The activations on their own, every ISA, against double precision: a dense sweep of [-30, 30] (every gate
// pre-activation a step meets), tiny magnitudes (where tanh x ~ x must stay accurate relative to x), and the edges
// (saturation, signed zero, infinities, NaN). Bound: a few float32 ulp, relative to the true value.
TEST(CoreTest, ActivationsMatchDoublePrecisionOnEveryIsa) {
  std::vector<float> x;
  for (int i = -300000; i <= 300000; ++i) x.push_back(i * 1e-4f);
  for (float t = 1e-30f; t < 1.f; t *= 1.37f) {
    x.push_back(t);
    x.push_back(-t);
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float e : {0.f, -0.f, 9.f, -9.f, 10.f, -10.f, 17.f, -17.f, 87.f, -87.f, 88.f, -88.f, 89.f, -89.f, 200.f, -200.f,
                  3e38f, -3e38f, inf, -inf}) {
    x.push_back(e);
  }
  x.push_back(std::numeric_limits<float>::quiet_NaN());
  const int64_t n = static_cast<int64_t>(x.size());
  for (const cpu::StepKernels* k : AvailableKernels()) {
    SCOPED_TRACE(k->name);
    std::vector<float> sig(n, -7.f), th(n, -7.f);  // poisoned
    k->activations(x.data(), n, sig.data(), th.data());
    double worst_sig = 0, worst_tanh = 0;
    for (int64_t i = 0; i + 1 < n; ++i) {
      const double v = x[i], want_sig = 1.0 / (1.0 + std::exp(-v)), want_tanh = std::tanh(v);
      // Relative error, with an absolute floor far below anything that reaches an output (sigmoid of -88 is
      // 6e-39: 0 is as good an answer).
      worst_sig = std::max(worst_sig, std::abs(sig[i] - want_sig) / std::max(std::abs(want_sig), 1e-30));
      worst_tanh = std::max(worst_tanh, std::abs(th[i] - want_tanh) / std::max(std::abs(want_tanh), 1e-30));
      ASSERT_EQ(std::signbit(th[i]), std::signbit(want_tanh)) << "tanh(" << x[i] << ") = " << th[i];
    }
    EXPECT_LT(worst_sig, 4 * 6e-8);   // about 4 ulp
    EXPECT_LT(worst_tanh, 4 * 6e-8);
    EXPECT_TRUE(std::isnan(sig[n - 1]));
    EXPECT_TRUE(std::isnan(th[n - 1]));
    std::printf("%s: worst relative error sigmoid %.2e, tanh %.2e\n", k->name, worst_sig, worst_tanh);
  }
}

// CPU time (ms) this thread spends in fn.
template <typename F>
double ThreadCpuMs(F&& fn) {
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  fn();
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  return (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6;
}

// A helper that arrives after the caller gave up waiting for it (100 us) takes its slices back instead of
// leaving the whole call to the caller: it does real work (CPU time in the helper's task), and the result is the
// same bit for bit. (Before, such a helper found every slice taken and returned: the p90 of LSTM H=1024 B=1 in
// TensorFlow was the one-thread time.)
TEST(CoreTest, LateHelperTakesItsSlicesBack) {
  // Long enough (tens of ms on the portable kernels) that a helper 1 ms late has most of the call left.
  Problem p = MakeProblem(CellType::kLstm, Direction::kForward, 300, 2, 256, 0, false, 0.f, 0.f, 77);
  const Result serial = RunCore(p, cpu::kPortableKernels, nullptr);
  class TimedLateRunner : public ParallelRunner {
   public:
    int NumHelperThreads() const override { return 1; }
    void Schedule(std::function<void()> fn) override {
      thread_ = std::thread([this, fn] {
        std::this_thread::sleep_for(std::chrono::microseconds(1000));
        helper_cpu_ms = ThreadCpuMs(fn);
      });
    }
    void Join() { thread_.join(); }
    double helper_cpu_ms = 0;

   private:
    std::thread thread_;
  };
  // The helper's share is compared with the caller's CPU time, not the wall clock: on a loaded machine (a build
  // beside the tests) the call's wall time grows with the waiting, and 10% of it failed a helper that did a third
  // of the work. A helper that is starved for a whole call proves nothing either way, so up to three calls are made;
  // the bug this guards against (a late helper finding every slice taken) gives ~0 in all of them.
  double best_share = 0;
  for (int attempt = 0; attempt < 3 && best_share <= 0.1; ++attempt) {
    TimedLateRunner runner;
    Result threaded;
    const double caller_cpu_ms = ThreadCpuMs([&] { threaded = RunCore(p, cpu::kPortableKernels, &runner); });
    runner.Join();
    EXPECT_EQ(std::memcmp(threaded.out.data(), serial.out.data(), sizeof(float) * serial.out.size()), 0);
    EXPECT_EQ(std::memcmp(threaded.fh.data(), serial.fh.data(), sizeof(float) * serial.fh.size()), 0);
    EXPECT_EQ(std::memcmp(threaded.fc.data(), serial.fc.data(), sizeof(float) * serial.fc.size()), 0);
    if (caller_cpu_ms < 10.0) return;  // (a call that short leaves a late helper nothing to measure)
    best_share = std::max(best_share, runner.helper_cpu_ms / caller_cpu_ms);
    std::printf("late helper: %.1f ms of CPU against the caller's %.1f ms\n", runner.helper_cpu_ms, caller_cpu_ms);
  }
  EXPECT_GT(best_share, 0.1) << "the late helper did almost nothing (best of three calls: " << best_share
                             << " of the caller's CPU time)";
}

TEST(CoreTest, ZeroLengthsReturnInitialStateAndZeroOutput) {
  Problem p = MakeProblem(CellType::kLstm, Direction::kBidirectional, 4, 3, 8, 0, false, 0, 0, 7);
  for (auto& l : p.lengths) l = 0;
  const Result r = RunCore(p, cpu::kPortableKernels, nullptr);
  for (float v : r.out) EXPECT_EQ(v, 0.f);
  for (size_t i = 0; i < r.fh.size(); ++i) EXPECT_EQ(r.fh[i], p.h0[i]);
  for (size_t i = 0; i < r.fc.size(); ++i) EXPECT_EQ(r.fc[i], p.c0[i]);
}

TEST(CoreTest, ReserveHoldsGatesAtValidPositions) {
  Problem p = MakeProblem(CellType::kLstm, Direction::kForward, 3, 1, 4, 0, false, 0, 0, 9);
  for (const cpu::StepKernels* k : AvailableKernels()) {
    const Result r = RunCore(p, *k, nullptr, /*with_reserve=*/true);
    const int64_t F = ReserveFeatures(p.s);
    ASSERT_EQ(F, 20);
    // c before the clip at the last step equals the final c (no clip here); o * tanh(c) equals the output.
    const int64_t t = p.lengths[0] - 1;
    for (int j = 0; j < 4; ++j) {
      EXPECT_FLOAT_EQ(r.reserve[t * F + 16 + j], r.fc[j]);
      EXPECT_NEAR(r.reserve[t * F + 12 + j] * std::tanh(r.fc[j]), r.out[t * 4 + j], 1e-6);
    }
  }
}

TEST(CoreTest, NaNPropagatesThroughGatesAndClips) {
  // min/max return their second operand for NaN: a clamp written the wrong way round turns NaN into a finite
  // value (silent garbage). Row 0 gets one NaN input; it must end NaN, the other rows finite.
  for (const cpu::StepKernels* k : AvailableKernels()) {
    SCOPED_TRACE(k->name);
    Problem p = MakeProblem(CellType::kLstm, Direction::kForward, 4, 3, 20, 8, false, 0.5f, 0.3f, 11);
    for (auto& l : p.lengths) l = 4;
    p.x[0] = std::numeric_limits<float>::quiet_NaN();  // row 0, t 0, gate i of unit 0
    const Result r = RunCore(p, *k, nullptr);
    for (int j = 0; j < 8; ++j) EXPECT_TRUE(std::isnan(r.fh[j])) << j;
    for (size_t j = 8; j < r.fh.size(); ++j) EXPECT_FALSE(std::isnan(r.fh[j])) << j;
  }
}

TEST(CoreTest, CheckShapeRejectsInt8AndSixteenBitTogether) {
  RnnShape s;
  s.num_units = 4;
  s.int8_weights = true;
  EXPECT_EQ(CheckShape(s), nullptr);
  s.weight16 = Weight16::kBFloat16;
  EXPECT_NE(CheckShape(s), nullptr);
}

TEST(CoreTest, CheckShapeRejectsBadShapes) {
  RnnShape s;
  s.num_units = 0;
  EXPECT_NE(CheckShape(s), nullptr);
  s.num_units = 4;
  EXPECT_EQ(CheckShape(s), nullptr);
  s.cell = CellType::kGru;
  s.num_proj = 2;
  EXPECT_NE(CheckShape(s), nullptr);
  s.cell = CellType::kLstm;
  s.num_proj = 0;
  s.proj_clip = 1.f;
  EXPECT_NE(CheckShape(s), nullptr);
}

// ---- backward ------------------------------------------------------------------------------------------------
// Grads, RunBackward, Loss and NumericGrad live in test_util.h (the fuzz target checks the backward too).
class BackwardTest : public ::testing::TestWithParam<Case> {};

TEST_P(BackwardTest, MatchesFloat64FiniteDifferencesOnEveryIsaAndThreadCount) {
  const Case c = GetParam();
  static uint32_t seed = 100;
  const Problem p = MakeProblem(c.cell, c.dir, c.T, c.B, c.H, c.P, c.time_major, c.cell_clip, c.proj_clip, seed++);
  const RnnShape& s = p.s;
  std::mt19937 rng(seed * 7);
  std::normal_distribution<float> n01(0.f, 1.f);
  auto random = [&](int64_t n) { std::vector<float> v(n); for (auto& e : v) e = n01(rng); return v; };
  const int64_t D = s.num_dirs(), R = s.recurrent_width();
  const std::vector<float> w_out = random(s.max_time * s.batch * D * R);  // also past lengths: must be ignored
  const std::vector<float> w_fh = random(D * s.batch * R), w_fc = random(D * s.batch * s.num_units);
  const std::vector<double> want_dx = NumericGrad(p, &Params::x, w_out, w_fh, w_fc);
  const std::vector<double> want_drk = NumericGrad(p, &Params::rk, w_out, w_fh, w_fc);
  const std::vector<double> want_dh0 = NumericGrad(p, &Params::h0, w_out, w_fh, w_fc);
  const bool lstm = c.cell == CellType::kLstm;
  const std::vector<double> want_dc0 = lstm ? NumericGrad(p, &Params::c0, w_out, w_fh, w_fc) : std::vector<double>();
  const std::vector<double> want_dpk = c.P > 0 ? NumericGrad(p, &Params::pk, w_out, w_fh, w_fc) : std::vector<double>();
  const std::vector<double> want_drb = lstm ? std::vector<double>() : NumericGrad(p, &Params::rb, w_out, w_fh, w_fc);
  for (const cpu::StepKernels* k : AvailableKernels()) {
    SCOPED_TRACE(k->name);
    const Grads g = RunBackward(p, *k, nullptr, w_out, w_fh, w_fc);
    EXPECT_LT(RelErr(g.dx, want_dx, want_dx.size()), 1e-4);
    EXPECT_LT(RelErr(g.drk, want_drk, want_drk.size()), 1e-4);
    EXPECT_LT(RelErr(g.dh0, want_dh0, want_dh0.size()), 1e-4);
    if (lstm) { EXPECT_LT(RelErr(g.dc0, want_dc0, want_dc0.size()), 1e-4); }
    if (c.P > 0) { EXPECT_LT(RelErr(g.dpk, want_dpk, want_dpk.size()), 1e-4); }
    if (!lstm) { EXPECT_LT(RelErr(g.drb, want_drb, want_drb.size()), 1e-4); }
    ThreadRunner on_time(3), late(3, 2000), never(3, 0, true);
    for (ParallelRunner* runner : std::vector<ParallelRunner*>{&on_time, &late, &never}) {
      const Grads t = RunBackward(p, *k, runner, w_out, w_fh, w_fc);
      EXPECT_EQ(0, std::memcmp(t.dx.data(), g.dx.data(), sizeof(float) * g.dx.size()));
      EXPECT_EQ(0, std::memcmp(t.drk.data(), g.drk.data(), sizeof(float) * g.drk.size()));
      EXPECT_EQ(0, std::memcmp(t.dh0.data(), g.dh0.data(), sizeof(float) * g.dh0.size()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cells, BackwardTest,
    ::testing::Values(Case{CellType::kLstm, Direction::kForward, 5, 3, 6, 0, false, 0, 0},
                      Case{CellType::kLstm, Direction::kReverse, 4, 4, 17, 0, true, 0, 0},
                      Case{CellType::kLstm, Direction::kBidirectional, 5, 5, 9, 0, false, 0, 0},
                      Case{CellType::kLstm, Direction::kBidirectional, 4, 5, 12, 7, false, 0.5f, 0.3f},
                      Case{CellType::kLstm, Direction::kForward, 3, 2, 20, 18, true, 0, 0.2f},
                      Case{CellType::kLstm, Direction::kReverse, 4, 6, 5, 3, false, 0.4f, 0},
                      Case{CellType::kGru, Direction::kForward, 5, 3, 7, 0, false, 0, 0},
                      Case{CellType::kGru, Direction::kBidirectional, 4, 5, 18, 0, true, 0, 0},
                      Case{CellType::kGru, Direction::kReverse, 3, 4, 33, 0, false, 0, 0},
                      // B >= 8 and a small U: dU accumulated during the steps (H=21: a full and a partial block).
                      Case{CellType::kLstm, Direction::kBidirectional, 6, 9, 21, 0, false, 0.3f, 0},
                      Case{CellType::kGru, Direction::kReverse, 5, 8, 19, 0, true, 0, 0},
                      // The same path with each packed tail width (cpu_internal.h, PackedTailBlocks): LSTM H=20
                      // (4 tail units: 1 block of 16 for 4 gates), H=12 (3 blocks), GRU H=26 (10 units: 2 blocks).
                      Case{CellType::kLstm, Direction::kForward, 3, 8, 20, 0, false, 0, 0},
                      Case{CellType::kLstm, Direction::kReverse, 3, 8, 12, 0, true, 0, 0},
                      Case{CellType::kGru, Direction::kForward, 3, 8, 26, 0, false, 0, 0}));

// Sizes whose steps are split across threads (step flops above the split threshold), and sizes with many
// positions: every thread count gives the same bits, and sampled gradient entries match float64 central
// differences.
TEST(BackwardTest, SplitStepsMatchSampledFiniteDifferences) {
  const Case cases[] = {{CellType::kLstm, Direction::kForward, 4, 4, 150, 0, false, 0, 0},
                        {CellType::kLstm, Direction::kBidirectional, 3, 3, 130, 40, false, 0.8f, 0.5f},
                        {CellType::kGru, Direction::kReverse, 4, 5, 140, 0, true, 0, 0},
                        // B*T > 256: the weight gradients accumulate over several packed chunks.
                        {CellType::kLstm, Direction::kBidirectional, 20, 15, 20, 12, false, 0.9f, 0.6f},
                        {CellType::kGru, Direction::kForward, 30, 11, 18, 0, true, 0, 0},
                        // dU during the steps, with steps split across threads (units 48..99 a partial block).
                        {CellType::kLstm, Direction::kReverse, 12, 16, 100, 0, false, 0, 0}};
  uint32_t seed = 300;
  for (const Case& c : cases) {
    const Problem p = MakeProblem(c.cell, c.dir, c.T, c.B, c.H, c.P, c.time_major, c.cell_clip, c.proj_clip, seed++);
    const RnnShape& s = p.s;
    const int64_t D = s.num_dirs(), R = s.recurrent_width();
    std::mt19937 rng(seed);
    std::normal_distribution<float> n01(0.f, 1.f);
    auto random = [&](int64_t n) { std::vector<float> v(n); for (auto& e : v) e = n01(rng); return v; };
    const std::vector<float> w_out = random(s.max_time * s.batch * D * R);
    const std::vector<float> w_fh = random(D * s.batch * R), w_fc = random(D * s.batch * s.num_units);
    // Every ISA: R >= 64 reaches the carry product over several column blocks at once (4 on AVX-512, 2 on
    // AVX2), with the leftover blocks one at a time.
    for (const cpu::StepKernels* kp : AvailableKernels()) {
      const cpu::StepKernels& k = *kp;
      SCOPED_TRACE(k.name);
      const Grads serial = RunBackward(p, k, nullptr, w_out, w_fh, w_fc);
      ThreadRunner on_time(3), late(3, 2000), never(3, 0, true);
      for (ParallelRunner* runner : std::vector<ParallelRunner*>{&on_time, &late, &never}) {
        const Grads t = RunBackward(p, k, runner, w_out, w_fh, w_fc);
        EXPECT_EQ(0, std::memcmp(t.dx.data(), serial.dx.data(), sizeof(float) * t.dx.size()));
        EXPECT_EQ(0, std::memcmp(t.drk.data(), serial.drk.data(), sizeof(float) * t.drk.size()));
        EXPECT_EQ(0, std::memcmp(t.dh0.data(), serial.dh0.data(), sizeof(float) * t.dh0.size()));
      }
      auto check = [&](std::vector<double> Params::*member, const std::vector<float>& got) {
        Params params = ToParams(p);
        std::vector<double>& v = params.*member;
        std::uniform_int_distribution<size_t> pick(0, v.size() - 1);
        double max_err = 0, max_ref = 1e-30;
        for (int i = 0; i < 25; ++i) {
          const size_t idx = pick(rng);
          const double keep = v[idx], eps = 1e-6;
          v[idx] = keep + eps;
          const double up = Loss(p, params, w_out, w_fh, w_fc);
          v[idx] = keep - eps;
          const double down = Loss(p, params, w_out, w_fh, w_fc);
          v[idx] = keep;
          const double want = (up - down) / (2 * eps);
          max_err = std::max(max_err, std::fabs(got[idx] - want));
          max_ref = std::max(max_ref, std::fabs(want));
        }
        return max_err / max_ref;
      };
      EXPECT_LT(check(&Params::x, serial.dx), 1e-4);
      EXPECT_LT(check(&Params::rk, serial.drk), 1e-4);
      EXPECT_LT(check(&Params::h0, serial.dh0), 1e-4);
      if (c.P > 0) { EXPECT_LT(check(&Params::pk, serial.dpk), 1e-4); }
      if (c.cell == CellType::kGru) { EXPECT_LT(check(&Params::rb, serial.drb), 1e-4); }
    }
  }
}

TEST(BackwardTest, EmptyBatchAndTimeGiveZeroWeightGradsAndPassStates) {
  for (int64_t T : {0, 3}) {
    Problem p = MakeProblem(CellType::kLstm, Direction::kBidirectional, T, 2, 5, 3, false, 0, 0, 5);
    for (auto& l : p.lengths) l = 0;
    std::vector<float> w_out(T * 2 * 2 * 3, 1.f), w_fh(2 * 2 * 3), w_fc(2 * 2 * 5);
    for (size_t i = 0; i < w_fh.size(); ++i) w_fh[i] = 0.5f + i;
    for (size_t i = 0; i < w_fc.size(); ++i) w_fc[i] = -1.f - i;
    const Grads g = RunBackward(p, cpu::PickKernels(), nullptr, w_out, w_fh, w_fc);
    for (float v : g.dx) EXPECT_EQ(v, 0.f);
    for (float v : g.drk) EXPECT_EQ(v, 0.f);
    for (float v : g.dpk) EXPECT_EQ(v, 0.f);
    for (size_t i = 0; i < w_fh.size(); ++i) EXPECT_EQ(g.dh0[i], w_fh[i]);
    for (size_t i = 0; i < w_fc.size(); ++i) EXPECT_EQ(g.dc0[i], w_fc[i]);
  }
}

}  // namespace
}  // namespace fused_rnn
