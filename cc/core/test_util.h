// Test support shared by the core's tests and its fuzz target: random problems, a float64 reference written from
// the cell equations, a runner of the core with NaN-poisoned outputs, and a thread pool that runs helpers on time,
// late, or never.
#ifndef FUSED_RNN_CORE_TEST_UTIL_H_
#define FUSED_RNN_CORE_TEST_UTIL_H_

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "cc/core/cpu_internal.h"
#include "cc/core/fused_rnn.h"

namespace fused_rnn {
namespace test_util {

struct Problem {
  RnnShape s;
  std::vector<float> x, rk, rb, pk, h0, c0;
  std::vector<int32_t> lengths;
  // INT8 weights (s.int8_weights): rk / pk then hold the dequantized weights the reference uses.
  std::vector<int8_t> rk_q8, pk_q8;
  std::vector<float> rk_scale, pk_scale;
  // 16-bit weights (s.weight16): the bit patterns; rk / pk then hold their exact float values.
  std::vector<uint16_t> rk16, pk16;
};

// scale = 127 / max|row|, q = round-half-even(w * scale); w is replaced by q / scale.
inline void QuantizeRows(std::vector<float>* w, int64_t rows, int64_t cols, std::vector<int8_t>* q, std::vector<float>* scale) {
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

// IEEE binary16 by bit arithmetic, round to nearest even (finite, infinite and NaN inputs), and back exactly:
// the reference's own conversion, apart from the kernels' loaders (and not the compiler's _Float16, which clang
// before 16 does not have on x86-64: the sanitizer build of tools/fuzz_core.sh uses clang 14).
inline uint16_t FloatToHalfBits(float v) {
  uint32_t x;
  std::memcpy(&x, &v, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (x < 0x38800000u) {  // below 2^-14: a subnormal half in units of 2^-24 (1024 units is the smallest normal)
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(std::fabs(v) * 16777216.0f)));
  }
  uint32_t h = ((((x >> 23) - 127 + 15) << 10) | ((x & 0x7fffffu) >> 13));
  const uint32_t rest = x & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is still right
  return static_cast<uint16_t>(sign | h);
}

inline float HalfBitsToFloat(uint16_t bits) {
  const int e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                  : e == 31 ? (m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity())
                            : std::ldexp(static_cast<float>(1024 + m), e - 25);
  return (bits & 0x8000u) ? -mag : mag;
}

// Round-to-nearest-even float -> 16-bit bits (finite inputs for bfloat16), and the exact value back.
inline uint16_t ToBits16(float v, Weight16 kind, float* exact) {
  uint16_t bits;
  if (kind == Weight16::kFloat16) {
    bits = FloatToHalfBits(v);
    *exact = HalfBitsToFloat(bits);
  } else {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = static_cast<uint16_t>(u >> 16);
    const uint32_t back = static_cast<uint32_t>(bits) << 16;
    std::memcpy(exact, &back, 4);
  }
  return bits;
}

void Make16(Problem* p, Weight16 kind) {
  p->s.weight16 = kind;
  p->rk16.resize(p->rk.size());
  for (size_t i = 0; i < p->rk.size(); ++i) p->rk16[i] = ToBits16(p->rk[i], kind, &p->rk[i]);
  p->pk16.resize(p->pk.size());
  for (size_t i = 0; i < p->pk.size(); ++i) p->pk16[i] = ToBits16(p->pk[i], kind, &p->pk[i]);
}

inline Problem MakeProblem(CellType cell, Direction dir, int64_t T, int64_t B, int64_t H, int64_t P, bool time_major,
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

inline double Sig(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The problem's tensors in float64 (the backward test perturbs them by finite differences).
struct Params {
  std::vector<double> x, rk, rb, pk, h0, c0;
};
inline Params ToParams(const Problem& p) {
  auto d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  return {d(p.x), d(p.rk), d(p.rb), d(p.pk), d(p.h0), d(p.c0)};
}

// float64 reference, one row and one step at a time.
inline void Reference(const Problem& prob, const Params& p, std::vector<double>* out, std::vector<double>* fh,
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

inline void Reference(const Problem& p, std::vector<double>* out, std::vector<double>* fh, std::vector<double>* fc) {
  Reference(p, ToParams(p), out, fh, fc);
}

struct Result {
  std::vector<float> out, fh, fc, reserve;
};

inline Result RunCore(const Problem& p, const cpu::StepKernels& kernels, ParallelRunner* runner, bool with_reserve = false) {
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
  const bool narrow = s.int8_weights || s.weight16 != Weight16::kNone;
  if (s.weight16 != Weight16::kNone) {
    a.recurrent_kernel_16 = p.rk16.data();
    a.projection_kernel_16 = p.pk16.empty() ? nullptr : p.pk16.data();
  }
  a.recurrent_kernel = narrow ? nullptr : p.rk.data();
  a.recurrent_bias = p.rb.empty() ? nullptr : p.rb.data();
  a.projection_kernel = p.pk.empty() || narrow ? nullptr : p.pk.data();
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
inline double RelErr(const std::vector<float>& got, const std::vector<double>& want, size_t n) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::fabs(got[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return err / scale;
}

// ---- backward ----
// The loss sum(w_out * out) + sum(w_fh * final_h) + sum(w_fc * final_c) has the w's as its output gradients; its
// gradient with respect to every input is checked against float64 central differences of the reference.
struct Grads {
  std::vector<float> dx, drk, drb, dpk, dh0, dc0;
};

inline Grads RunBackward(const Problem& p, const cpu::StepKernels& k, ParallelRunner* runner, const std::vector<float>& w_out,
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

inline double Loss(const Problem& prob, const Params& p, const std::vector<float>& w_out, const std::vector<float>& w_fh,
            const std::vector<float>& w_fc) {
  std::vector<double> out, fh, fc;
  Reference(prob, p, &out, &fh, &fc);
  double l = 0;
  for (size_t i = 0; i < out.size(); ++i) l += w_out[i] * out[i];
  for (size_t i = 0; i < fh.size(); ++i) l += w_fh[i] * fh[i];
  if (prob.s.cell == CellType::kLstm) for (size_t i = 0; i < fc.size(); ++i) l += w_fc[i] * fc[i];
  return l;
}

inline std::vector<double> NumericGrad(const Problem& prob, std::vector<double> Params::*member,
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

inline std::vector<const cpu::StepKernels*> AvailableKernels() {
  std::vector<const cpu::StepKernels*> k = {&cpu::kPortableKernels};
#if defined(FUSED_RNN_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) k.push_back(&cpu::kAvx2Kernels);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) k.push_back(&cpu::kAvx512Kernels);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    k.push_back(&cpu::kAvx512VnniKernels);
  }
#endif
  return k;
}

}  // namespace test_util
}  // namespace fused_rnn

#endif  // FUSED_RNN_CORE_TEST_UTIL_H_
