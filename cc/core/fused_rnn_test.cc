// Tests of the framework-free core against a float64 reference written from the cell equations.
#include "cc/core/fused_rnn.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cc/core/cpu_internal.h"

namespace fused_rnn {
namespace {

struct Problem {
  RnnShape s;
  std::vector<float> x, rk, rb, pk, h0, c0;
  std::vector<int32_t> lengths;
  // INT8 weights (s.int8_weights): rk / pk then hold the dequantized weights the reference uses.
  std::vector<int8_t> rk_q8, pk_q8;
  std::vector<float> rk_scale, pk_scale;
};

// scale = 127 / max|row|, q = round-half-even(w * scale); w is replaced by q / scale.
void QuantizeRows(std::vector<float>* w, int64_t rows, int64_t cols, std::vector<int8_t>* q, std::vector<float>* scale) {
  q->resize(rows * cols);
  scale->resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    float m = 0.f;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs((*w)[r * cols + c]));
    const float s = m > 0.f ? 127.f / m : 0.f;
    (*scale)[r] = s;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = std::nearbyint((*w)[r * cols + c] * s);
      (*q)[r * cols + c] = static_cast<int8_t>(v);
      (*w)[r * cols + c] = s > 0.f ? v / s : 0.f;
    }
  }
}

void MakeInt8(Problem* p) {
  const RnnShape& s = p->s;
  const int64_t D = s.num_dirs(), R = s.recurrent_width(), G = s.num_gates(), H = s.num_units;
  p->s.int8_weights = true;
  QuantizeRows(&p->rk, D * R, G * H, &p->rk_q8, &p->rk_scale);
  if (s.num_proj > 0) QuantizeRows(&p->pk, D * H, s.num_proj, &p->pk_q8, &p->pk_scale);
}

Problem MakeProblem(CellType cell, Direction dir, int64_t T, int64_t B, int64_t H, int64_t P, bool time_major,
                    float cell_clip, float proj_clip, uint32_t seed) {
  Problem p;
  p.s.cell = cell;
  p.s.direction = dir;
  p.s.max_time = T;
  p.s.batch = B;
  p.s.num_units = H;
  p.s.num_proj = P;
  p.s.time_major = time_major;
  p.s.cell_clip = cell_clip;
  p.s.proj_clip = proj_clip;
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  const int64_t D = p.s.num_dirs(), G = p.s.num_gates(), R = p.s.recurrent_width();
  auto fill = [&](std::vector<float>& v, int64_t n, float scale) {
    v.resize(n);
    for (auto& e : v) e = n01(rng) * scale;
  };
  fill(p.x, T * B * D * G * H, 1.0f);
  fill(p.rk, D * R * G * H, 1.0f / std::sqrt(static_cast<float>(R)));
  if (cell == CellType::kGru) fill(p.rb, D * G * H, 0.5f);
  if (P > 0) fill(p.pk, D * H * P, 1.0f / std::sqrt(static_cast<float>(H)));
  fill(p.h0, D * B * R, 0.5f);
  if (cell == CellType::kLstm) fill(p.c0, D * B * H, 0.5f);
  std::uniform_int_distribution<int> len(0, static_cast<int>(T));
  p.lengths.resize(B);
  for (auto& l : p.lengths) l = len(rng);
  if (B > 0) p.lengths[0] = static_cast<int32_t>(T);  // at least one full-length row
  return p;
}

double Sig(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The problem's tensors in float64 (the backward test perturbs them by finite differences).
struct Params {
  std::vector<double> x, rk, rb, pk, h0, c0;
};
Params ToParams(const Problem& p) {
  auto d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  return {d(p.x), d(p.rk), d(p.rb), d(p.pk), d(p.h0), d(p.c0)};
}

// float64 reference, one row and one step at a time.
void Reference(const Problem& prob, const Params& p, std::vector<double>* out, std::vector<double>* fh,
               std::vector<double>* fc) {
  const RnnShape& s = prob.s;
  const int64_t T = s.max_time, B = s.batch, H = s.num_units, P = s.num_proj, R = s.recurrent_width();
  const int64_t D = s.num_dirs(), G = s.num_gates();
  out->assign(T * B * D * R, 0.0);
  fh->assign(D * B * R, 0.0);
  fc->assign(D * B * H, 0.0);
  for (int64_t d = 0; d < D; ++d) {
    const bool reverse = s.direction == Direction::kReverse || d == 1;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> h(R), c(H), z(G * H), m(H);
      for (int64_t k = 0; k < R; ++k) h[k] = p.h0[(d * B + b) * R + k];
      if (s.cell == CellType::kLstm) for (int64_t j = 0; j < H; ++j) c[j] = p.c0[(d * B + b) * H + j];
      const int64_t L = prob.lengths[b];
      for (int64_t step = 0; step < L; ++step) {
        const int64_t t = reverse ? L - 1 - step : step;
        const int64_t row = s.time_major ? (t * B + b) : (b * T + t);
        const double* x = p.x.data() + row * D * G * H + d * G * H;
        for (int64_t col = 0; col < G * H; ++col) {
          double acc = 0;
          for (int64_t k = 0; k < R; ++k) acc += h[k] * p.rk[(d * R + k) * G * H + col];
          if (s.cell == CellType::kGru) acc += p.rb[d * G * H + col];
          z[col] = acc;
        }
        std::vector<double> h_new(R);
        if (s.cell == CellType::kLstm) {
          for (int64_t j = 0; j < H; ++j) {
            const double i = Sig(x[j] + z[j]), f = Sig(x[H + j] + z[H + j]);
            const double g = std::tanh(x[2 * H + j] + z[2 * H + j]), o = Sig(x[3 * H + j] + z[3 * H + j]);
            c[j] = f * c[j] + i * g;
            if (s.cell_clip > 0) c[j] = std::max<double>(-s.cell_clip, std::min<double>(s.cell_clip, c[j]));
            m[j] = o * std::tanh(c[j]);
          }
          if (P > 0) {
            for (int64_t q = 0; q < P; ++q) {
              double acc = 0;
              for (int64_t j = 0; j < H; ++j) acc += m[j] * p.pk[(d * H + j) * P + q];
              if (s.proj_clip > 0) acc = std::max<double>(-s.proj_clip, std::min<double>(s.proj_clip, acc));
              h_new[q] = acc;
            }
          } else {
            h_new = m;
          }
        } else {
          for (int64_t j = 0; j < H; ++j) {
            const double zg = Sig(x[j] + z[j]), rg = Sig(x[H + j] + z[H + j]);
            const double n = std::tanh(x[2 * H + j] + rg * z[2 * H + j]);
            h_new[j] = zg * h[j] + (1 - zg) * n;
          }
        }
        h = h_new;
        for (int64_t k = 0; k < R; ++k) (*out)[row * D * R + d * R + k] = h[k];
      }
      for (int64_t k = 0; k < R; ++k) (*fh)[(d * B + b) * R + k] = h[k];
      if (s.cell == CellType::kLstm) for (int64_t j = 0; j < H; ++j) (*fc)[(d * B + b) * H + j] = c[j];
    }
  }
}

void Reference(const Problem& p, std::vector<double>* out, std::vector<double>* fh, std::vector<double>* fc) {
  Reference(p, ToParams(p), out, fh, fc);
}

struct Result {
  std::vector<float> out, fh, fc, reserve;
};

Result RunCore(const Problem& p, const cpu::StepKernels& kernels, ParallelRunner* runner, bool with_reserve = false) {
  const RnnShape& s = p.s;
  const int64_t D = s.num_dirs(), R = s.recurrent_width();
  Result r;
  const float nan = std::numeric_limits<float>::quiet_NaN();  // poison: every element must be written
  r.out.assign(s.max_time * s.batch * D * R, nan);
  r.fh.assign(D * s.batch * R, nan);
  r.fc.assign(D * s.batch * s.num_units, nan);
  if (with_reserve) r.reserve.assign(ReserveFloats(s), nan);
  std::vector<float> scratch(CpuForwardScratchFloats(s) + 16, nan);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63});
  RnnForwardArgs a;
  a.x_proj = p.x.data();
  if (s.int8_weights) {
    a.recurrent_kernel_q8 = p.rk_q8.data();
    a.recurrent_scale = p.rk_scale.data();
    a.projection_kernel_q8 = p.pk_q8.empty() ? nullptr : p.pk_q8.data();
    a.projection_scale = p.pk_scale.empty() ? nullptr : p.pk_scale.data();
  }
  a.recurrent_kernel = s.int8_weights ? nullptr : p.rk.data();
  a.recurrent_bias = p.rb.empty() ? nullptr : p.rb.data();
  a.projection_kernel = p.pk.empty() || s.int8_weights ? nullptr : p.pk.data();
  a.sequence_lengths = p.lengths.data();
  a.initial_h = p.h0.data();
  a.initial_c = p.c0.empty() ? nullptr : p.c0.data();
  a.output = r.out.data();
  a.final_h = r.fh.data();
  a.final_c = s.cell == CellType::kLstm ? r.fc.data() : nullptr;
  a.reserve = with_reserve ? r.reserve.data() : nullptr;
  cpu::CpuForwardWithKernels(kernels, s, a, aligned, runner);
  return r;
}

// Max |a - b| over max |b|: float32 arithmetic against float64 must land far under 1e-5.
double RelErr(const std::vector<float>& got, const std::vector<double>& want, size_t n) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::fabs(got[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return err / scale;
}

class ThreadRunner : public ParallelRunner {
 public:
  explicit ThreadRunner(int helpers, int delay_us = 0, bool drop = false)
      : helpers_(helpers), delay_us_(delay_us), drop_(drop) {}
  ~ThreadRunner() override {
    for (auto& t : threads_) t.join();
  }
  int NumHelperThreads() const override { return helpers_; }
  void Schedule(std::function<void()> fn) override {
    if (drop_) return;  // a pool that never gets to the work
    const int delay = delay_us_;
    threads_.emplace_back([fn, delay] {
      if (delay) std::this_thread::sleep_for(std::chrono::microseconds(delay));
      fn();
    });
  }

 private:
  int helpers_, delay_us_;
  bool drop_;
  std::vector<std::thread> threads_;
};

std::vector<const cpu::StepKernels*> AvailableKernels() {
  std::vector<const cpu::StepKernels*> k = {&cpu::kPortableKernels};
#if defined(FUSED_RNN_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) k.push_back(&cpu::kAvx2Kernels);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) k.push_back(&cpu::kAvx512Kernels);
#endif
  return k;
}

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
  // Every other case runs INT8 weights, against the reference with the same dequantized weights.
  if (seed % 2 == 0) MakeInt8(&p);
  SCOPED_TRACE(p.s.int8_weights ? "int8 weights" : "float weights");
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
// The loss sum(w_out * out) + sum(w_fh * final_h) + sum(w_fc * final_c) has the w's as its output gradients; its
// gradient with respect to every input is checked against float64 central differences of the reference.
struct Grads {
  std::vector<float> dx, drk, drb, dpk, dh0, dc0;
};

Grads RunBackward(const Problem& p, const cpu::StepKernels& k, ParallelRunner* runner, const std::vector<float>& w_out,
                  const std::vector<float>& w_fh, const std::vector<float>& w_fc) {
  const RnnShape& s = p.s;
  const int64_t D = s.num_dirs(), R = s.recurrent_width(), G = s.num_gates(), H = s.num_units, B = s.batch;
  const Result fwd = RunCore(p, k, nullptr, /*with_reserve=*/true);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Grads g;
  g.dx.assign(p.x.size(), nan);
  g.drk.assign(p.rk.size(), nan);
  g.drb.assign(s.cell == CellType::kGru ? D * G * H : 0, nan);
  g.dpk.assign(p.pk.size(), nan);
  g.dh0.assign(D * B * R, nan);
  g.dc0.assign(s.cell == CellType::kLstm ? D * B * H : 0, nan);
  std::vector<float> scratch(CpuBackwardScratchFloats(s) + 16, nan);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63});
  RnnBackwardArgs a;
  a.recurrent_kernel = p.rk.data();
  a.projection_kernel = p.pk.empty() ? nullptr : p.pk.data();
  a.sequence_lengths = p.lengths.data();
  a.initial_h = p.h0.data();
  a.initial_c = p.c0.empty() ? nullptr : p.c0.data();
  a.output = fwd.out.data();
  a.reserve = fwd.reserve.data();
  a.d_output = w_out.data();
  a.d_final_h = w_fh.data();
  a.d_final_c = s.cell == CellType::kLstm ? w_fc.data() : nullptr;
  a.d_x_proj = g.dx.data();
  a.d_recurrent_kernel = g.drk.data();
  a.d_recurrent_bias = g.drb.empty() ? nullptr : g.drb.data();
  a.d_projection_kernel = g.dpk.empty() ? nullptr : g.dpk.data();
  a.d_initial_h = g.dh0.data();
  a.d_initial_c = g.dc0.empty() ? nullptr : g.dc0.data();
  cpu::CpuBackwardWithKernels(k, s, a, aligned, runner);
  return g;
}

double Loss(const Problem& prob, const Params& p, const std::vector<float>& w_out, const std::vector<float>& w_fh,
            const std::vector<float>& w_fc) {
  std::vector<double> out, fh, fc;
  Reference(prob, p, &out, &fh, &fc);
  double l = 0;
  for (size_t i = 0; i < out.size(); ++i) l += w_out[i] * out[i];
  for (size_t i = 0; i < fh.size(); ++i) l += w_fh[i] * fh[i];
  if (prob.s.cell == CellType::kLstm) for (size_t i = 0; i < fc.size(); ++i) l += w_fc[i] * fc[i];
  return l;
}

std::vector<double> NumericGrad(const Problem& prob, std::vector<double> Params::*member,
                                const std::vector<float>& w_out, const std::vector<float>& w_fh,
                                const std::vector<float>& w_fc) {
  Params p = ToParams(prob);
  std::vector<double>& v = p.*member;
  std::vector<double> g(v.size());
  const double eps = 1e-6;
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + eps;
    const double up = Loss(prob, p, w_out, w_fh, w_fc);
    v[i] = keep - eps;
    const double down = Loss(prob, p, w_out, w_fh, w_fc);
    v[i] = keep;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

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
                      Case{CellType::kGru, Direction::kReverse, 3, 4, 33, 0, false, 0, 0}));

// Sizes whose steps are split across threads (step flops above the split threshold), and sizes with many
// positions: every thread count gives the same bits, and sampled gradient entries match float64 central
// differences.
TEST(BackwardTest, SplitStepsMatchSampledFiniteDifferences) {
  const Case cases[] = {{CellType::kLstm, Direction::kForward, 4, 4, 150, 0, false, 0, 0},
                        {CellType::kLstm, Direction::kBidirectional, 3, 3, 130, 40, false, 0.8f, 0.5f},
                        {CellType::kGru, Direction::kReverse, 4, 5, 140, 0, true, 0, 0},
                        // B*T > 256: the weight gradients accumulate over several packed chunks.
                        {CellType::kLstm, Direction::kBidirectional, 20, 15, 20, 12, false, 0.9f, 0.6f},
                        {CellType::kGru, Direction::kForward, 30, 11, 18, 0, true, 0, 0}};
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
    const cpu::StepKernels& k = cpu::PickKernels();
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
