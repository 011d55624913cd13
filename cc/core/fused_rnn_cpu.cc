// CPU driver of the fused recurrence: picks the ISA, packs the weights, and runs the steps on the caller's
// thread plus helper threads.
//
// Parallel scheme. Each direction is a "chain" of stages: stage 0 packs the weights, then every step is one stage
// (two with a projection: gates, then m @ P). A chain's unit blocks are split into S slices. A thread owns the
// slices it claims for the whole call, so their weight panels stay in its core's cache; a slice of stage k starts
// once every slice of stage k-1 is done (one atomic counter per chain, no lock). The caller always takes part; a
// waiting thread claims any slice nobody has claimed after a short grace period, so a helper that is never run
// (a busy pool) costs speed, never progress. Slices cut units, never the batch, and each unit's arithmetic is the
// same whoever runs it: the result is bitwise independent of the number of threads.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "cc/core/cpu_internal.h"
#include "cc/core/fused_rnn.h"

#ifndef FUSED_RNN_SPLIT_FLOPS
#define FUSED_RNN_SPLIT_FLOPS 3.0e5
#endif

namespace fused_rnn {
namespace {

using cpu::CeilDiv;
using cpu::ChainCtx;
using cpu::kBlock;
using cpu::StepKernels;

}  // namespace

const StepKernels& cpu::PickKernels() {
  static const StepKernels* picked = [] {
    const char* force = std::getenv("FUSED_RNN_ISA");
    const std::string want = force ? force : "";
#if defined(FUSED_RNN_HAVE_X86_KERNELS)
    __builtin_cpu_init();
    const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    // F16C (the float16 weight loads) came with every AVX2 CPU, but is a separate flag: check it too.
    // Through cpuid, not __builtin_cpu_supports("f16c"): clang before 16 rejects that feature name (the
    // sanitizer build of tools/fuzz_core.sh uses clang 14). Leaf 1, ECX bit 29.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool has_f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && ((ecx >> 29) & 1u);
    const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c;
    if (want == "portable") return &cpu::kPortableKernels;
    // VNNI (the INT8 product), with the byte and 128-bit forms of AVX-512 its code uses.
    const bool has_vnni = has512 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
    if (has_vnni && want != "avx2" && want != "avx512") return &cpu::kAvx512VnniKernels;
    if (has512 && want != "avx2") return &cpu::kAvx512Kernels;
    if (has2) return &cpu::kAvx2Kernels;
#endif
    return &cpu::kPortableKernels;
  }();
  return *picked;
}

namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

int64_t Align16(int64_t n) { return (n + 15) & ~int64_t{15}; }

struct ScratchLayout {
  int64_t w_packed, p_packed, w_inv_scale, p_inv_scale, h_buf, c_state, m_buf, lengths, per_dir;
  // INT8 only (the VNNI path, ChainCtx::q8_vnni): column sums, fixed-point factors, planes, row flags.
  int64_t w_qsum, p_qsum, h_fix, m_fix, h_planes, m_planes, float_from;
};

int64_t Round4(int64_t n) { return (n + 3) & ~int64_t{3}; }

ScratchLayout Layout(const RnnShape& s) {
  const int64_t H = s.num_units, P = s.num_proj, R = s.recurrent_width(), B = s.batch, G = s.num_gates();
  ScratchLayout l;
  int64_t off = 0;
  // Packed weights: floats, 16-bit (half the floats), or int8 (a quarter) plus one inverse scale per row.
  const int64_t per_weight = s.int8_weights ? 4 : (s.weight16 != Weight16::kNone ? 2 : 1);
  // INT8 panels have K rounded up to 4 rows (the VNNI layout; the other layout uses the first K).
  const bool q8 = s.int8_weights;
  const int64_t R_rows = q8 ? Round4(R) : R, H_rows = q8 ? Round4(H) : H;
  l.w_packed = off; off += Align16(CeilDiv(CeilDiv(H, kBlock) * R_rows * G * kBlock, per_weight));
  l.p_packed = off; off += Align16(P > 0 ? CeilDiv(CeilDiv(P, kBlock) * H_rows * kBlock, per_weight) : 0);
  l.w_inv_scale = off; off += Align16(q8 ? R : 0);
  l.p_inv_scale = off; off += Align16(q8 && P > 0 ? H : 0);
  l.w_qsum = off; off += Align16(q8 ? CeilDiv(H, kBlock) * G * kBlock : 0);
  l.p_qsum = off; off += Align16(q8 && P > 0 ? CeilDiv(P, kBlock) * kBlock : 0);
  l.h_fix = off; off += Align16(q8 ? R : 0);
  l.m_fix = off; off += Align16(q8 && P > 0 ? H : 0);
  l.h_planes = off; off += 2 * Align16(q8 ? B * R_rows : 0);  // 4 byte planes of R_rows bytes: one float each
  l.m_planes = off; off += Align16(q8 && P > 0 ? B * H_rows : 0);
  l.float_from = off; off += Align16(q8 ? B : 0);
  l.h_buf = off;    off += 2 * Align16(B * R);
  l.c_state = off;  off += Align16(s.cell == CellType::kLstm ? B * H : 0);
  l.m_buf = off;    off += Align16(P > 0 ? B * H : 0);
  l.per_dir = off;
  l.lengths = off * s.num_dirs();  // shared [B] int32 copy when the caller gave none
  return l;
}

// ---- stage scheduler -----------------------------------------------------------------------------------------
struct Chain {
  std::atomic<int64_t> next_slice{0};  // slices handed out so far
  std::atomic<int64_t> done{0};        // (stage, slice) units finished
  int64_t num_slices = 1;
  int64_t num_stages = 0;
  // claim[x]: the next stage of slice x nobody has started. Whoever runs stage k of slice x first moves claim[x]
  // from k to k + 1, so every stage runs exactly once even when a waiting thread runs it for a preempted owner.
  std::unique_ptr<std::atomic<int64_t>[]> claim;
  // owner[x]: the participant (0 = the caller, i = helper i) that runs slice x's stages, a scheduling hint only
  // (claim decides who runs a stage). adopted[x]: taken by a thread that waited for a helper that had not come;
  // a helper that arrives later takes such slices back (else a helper woken 100 us late found nothing left and
  // the whole call ran on one thread: the p90 of LSTM H=1024 B=1 was the one-thread time).
  std::unique_ptr<std::atomic<int>[]> owner;
  std::unique_ptr<std::atomic<bool>[]> adopted;

  void Init(int64_t slices, int64_t stages) {
    num_slices = slices;
    num_stages = stages;
    claim.reset(new std::atomic<int64_t>[slices]);
    owner.reset(new std::atomic<int>[slices]);
    adopted.reset(new std::atomic<bool>[slices]);
    for (int64_t x = 0; x < slices; ++x) {
      claim[x].store(0, std::memory_order_relaxed);
      owner[x].store(-1, std::memory_order_relaxed);
      adopted[x].store(false, std::memory_order_relaxed);
    }
  }
};

struct Job {
  Chain chains[2];
  int num_chains = 1;
  int64_t share = 1;  // slices a thread claims when it joins a chain
  // Set by the caller once states and padded outputs are in place. Helpers are scheduled before that setup, so
  // their wake-up overlaps it (they pack weights meanwhile); no step (stage >= 1) starts before it.
  std::atomic<bool> ready{false};
  // Filled by the caller; helpers touch them only for slices they claimed, which the caller waits for.
  const RnnShape* shape = nullptr;
  ChainCtx ctx[2];
  const float* rec_kernel[2] = {nullptr, nullptr};  // [R][G*H] per direction
  const float* proj_kernel[2] = {nullptr, nullptr}; // [H][P]
  const int8_t* rec_kernel_q8[2] = {nullptr, nullptr};  // the same, int8 (with int8_weights)
  const int8_t* proj_kernel_q8[2] = {nullptr, nullptr};
  const float* rec_scale[2] = {nullptr, nullptr};   // [R]
  const float* proj_scale[2] = {nullptr, nullptr};  // [H]
  const uint16_t* rec_kernel_16[2] = {nullptr, nullptr};   // the same, 16-bit (with weight16)
  const uint16_t* proj_kernel_16[2] = {nullptr, nullptr};
  const StepKernels* kernels = nullptr;
  // Set by RunStaged (the backward): runs every stage instead of the forward's packing and step kernels.
  std::function<void(int, int64_t, int64_t)> custom;
};

// dst[0..16) = src[0..n), zero past n. Inline: a memcpy + fill call per 64-byte piece cost more than the copy
// (262K calls per call at H=1024).
inline void CopyBlock(float* __restrict dst, const float* __restrict src, int64_t n) {
  if (n == kBlock) {
    for (int l = 0; l < kBlock; ++l) dst[l] = src[l];
  } else {
    for (int l = 0; l < kBlock; ++l) dst[l] = l < n ? src[l] : 0.f;
  }
}

template <typename W>
inline void CopyBlockT(W* __restrict dst, const W* __restrict src, int64_t n) {
  for (int l = 0; l < kBlock; ++l) dst[l] = l < n ? src[l] : W(0);
}

// The packed tail panel (cpu_internal.h, PackedTailBlocks): row k holds the G gates' n columns side by side.
template <typename W>
void PackTailPanel(const ChainCtx& c, const W* rec, W* panel, int64_t j0, int64_t n) {
  const int64_t width = c.tail_blocks * kBlock, GH = c.G * c.H;
  for (int64_t k = 0; k < c.R; ++k) {
    W* dst = panel + k * width;
    for (int64_t col = 0; col < width; ++col) {
      dst[col] = col < c.G * n ? rec[k * GH + (col / n) * c.H + j0 + col % n] : W(0);
    }
  }
}

inline bool IsPackedTail(const ChainCtx& c, int64_t u) { return c.tail_blocks > 0 && u == c.num_unit_blocks - 1; }

// The same panels in a narrow weight type W (int8 or 16-bit patterns), zero-padded past H / P.
template <typename W>
void PackNarrowPanels(const ChainCtx& c, const Chain& ch, int64_t slice, const W* rec, const W* proj, W* wp, W* pp) {
  const int64_t H = c.H, R = c.R, G = c.G, S = ch.num_slices;
  for (int64_t u = slice * c.num_unit_blocks / S; u < (slice + 1) * c.num_unit_blocks / S; ++u) {
    W* panel = wp + u * R * G * kBlock;
    const int64_t j0 = u * kBlock, n = std::min<int64_t>(kBlock, H - j0);
    if (IsPackedTail(c, u)) {
      PackTailPanel(c, rec, panel, j0, n);
      continue;
    }
    for (int64_t k = 0; k < R; ++k) {
      for (int64_t g = 0; g < G; ++g) CopyBlockT(panel + (k * G + g) * kBlock, rec + k * G * H + g * H + j0, n);
    }
  }
  if (c.P > 0) {
    for (int64_t q = slice * c.num_proj_blocks / S; q < (slice + 1) * c.num_proj_blocks / S; ++q) {
      const int64_t p0 = q * kBlock, n = std::min<int64_t>(kBlock, c.P - p0);
      for (int64_t k = 0; k < H; ++k) CopyBlockT(pp + (q * H + k) * kBlock, proj + k * c.P + p0, n);
    }
  }
}

// INT8 weights on the VNNI path: the slice's panels in the VNNI layout with their column sums.
void PackSliceVnni(const Job& job, int chain, int64_t slice) {
  const ChainCtx& c = job.ctx[chain];
  const Chain& ch = job.chains[chain];
  const int64_t H = c.H, G = c.G, S = ch.num_slices;
  int64_t offsets[4 * kBlock];
  for (int64_t u = slice * c.num_unit_blocks / S; u < (slice + 1) * c.num_unit_blocks / S; ++u) {
    const int64_t j0 = u * kBlock, n = std::min<int64_t>(kBlock, H - j0);
    const bool tail = IsPackedTail(c, u);
    const int64_t cols = tail ? c.tail_blocks * kBlock : G * kBlock;
    for (int64_t col = 0; col < cols; ++col) {
      if (tail) offsets[col] = col < G * n ? (col / n) * H + j0 + col % n : -1;
      else offsets[col] = col % kBlock < n ? (col / kBlock) * H + j0 + col % kBlock : -1;
    }
    job.kernels->pack_vnni_panel(job.rec_kernel_q8[chain], G * H, offsets, cols, c.R,
                                 const_cast<int8_t*>(c.wq_packed) + u * c.R4 * G * kBlock,
                                 const_cast<int32_t*>(c.w_qsum128) + u * G * kBlock);
  }
  if (c.P > 0) {
    for (int64_t q = slice * c.num_proj_blocks / S; q < (slice + 1) * c.num_proj_blocks / S; ++q) {
      for (int64_t l = 0; l < kBlock; ++l) offsets[l] = q * kBlock + l < c.P ? q * kBlock + l : -1;
      job.kernels->pack_vnni_panel(job.proj_kernel_q8[chain], c.P, offsets, kBlock, H,
                                   const_cast<int8_t*>(c.pq_packed) + q * c.H4 * kBlock,
                                   const_cast<int32_t*>(c.p_qsum128) + q * kBlock);
    }
  }
}

// INT8 weights: the same panels, int8 (the inverse scales are set up by the caller, SetUpInt8).
void PackSliceQ8(const Job& job, int chain, int64_t slice) {
  const ChainCtx& c = job.ctx[chain];
  if (c.q8_vnni) {
    PackSliceVnni(job, chain, slice);
    return;
  }
  PackNarrowPanels<int8_t>(c, job.chains[chain], slice, job.rec_kernel_q8[chain], job.proj_kernel_q8[chain],
                           const_cast<int8_t*>(c.wq_packed), const_cast<int8_t*>(c.pq_packed));
}

// 2^e with bound * max_factor * 2^e <= 2^kVnniFixBits: the fixed-point exponent for values |v| <= bound scaled by
// factors up to max_factor. e is kept within float's normal range (a bound that small loses nothing that float
// arithmetic would have kept against the step's other terms).
int FixExponent(double bound, double max_factor) {
  const double x = bound * max_factor;
  if (!(x > 0.0) || !std::isfinite(x)) return 0;
  return std::max(-100, std::min(100, cpu::kVnniFixBits - 1 - std::ilogb(x)));
}

// The caller's set-up of an INT8 chain, before any step: inverse scales, and on the VNNI path the fixed-point
// factors, the planes of the initial state, and the row flags.
void SetUpInt8(Job& job, int chain, const float* initial_h) {
  ChainCtx& c = job.ctx[chain];
  float* inv = const_cast<float*>(c.w_inv_scale);
  const float* scale = job.rec_scale[chain];
  for (int64_t k = 0; k < c.R; ++k) inv[k] = scale[k] != 0.f ? 1.f / scale[k] : 0.f;
  float* pinv = const_cast<float*>(c.p_inv_scale);
  if (c.P > 0) {
    const float* pscale = job.proj_scale[chain];
    for (int64_t k = 0; k < c.H; ++k) pinv[k] = pscale[k] != 0.f ? 1.f / pscale[k] : 0.f;
  }
  if (!c.q8_vnni) return;
  const int64_t B = c.B, R = c.R;
  double max_inv = 0.0, max_pinv = 0.0, max_h0 = 0.0;
  for (int64_t k = 0; k < R; ++k) max_inv = std::max<double>(max_inv, inv[k]);
  for (int64_t k = 0; k < (c.P > 0 ? c.H : 0); ++k) max_pinv = std::max<double>(max_pinv, pinv[k]);
  for (int64_t b = 0; b < B; ++b) {
    bool finite = true;
    for (int64_t k = 0; k < R; ++k) {
      const float v = initial_h[b * R + k];
      if (std::isfinite(v)) max_h0 = std::max<double>(max_h0, std::fabs(v));
      else finite = false;
    }
    c.float_from_phase[b] = finite ? INT32_MAX : 0;
  }
  // The bound on |h| of steps >= 1: |o * tanh(c)| <= 1 (LSTM); a GRU's h is a convex mix of its previous h and
  // tanh (the caller runs this path only while max|h0| is modest); a projection's output is within its clip, else
  // within the largest column 1-norm of P (|m| <= 1).
  double h_bound = 1.0;
  if (c.G == 3) h_bound = std::max(1.0, max_h0);
  if (c.P > 0) {
    if (c.proj_clip > 0.f) {
      h_bound = c.proj_clip;
    } else {
      std::vector<double> col_norm(c.P, 0.0);
      const int8_t* q = job.proj_kernel_q8[chain];
      for (int64_t k = 0; k < c.H; ++k)
        for (int64_t j = 0; j < c.P; ++j) col_norm[j] += std::abs(static_cast<int>(q[k * c.P + j])) * static_cast<double>(pinv[k]);
      h_bound = 0.0;
      for (double v : col_norm) h_bound = std::max(h_bound, v);
    }
    const int em = FixExponent(1.0, max_pinv);
    float* m_fix = const_cast<float*>(c.m_fix);
    for (int64_t k = 0; k < c.H; ++k) m_fix[k] = static_cast<float>(std::ldexp(static_cast<double>(pinv[k]), em));
    c.m_unfix_exp = static_cast<float>(-em);
    std::memset(c.m_planes, 0, 4 * B * c.H4);
  }
  const int e = FixExponent(h_bound, max_inv);
  float* h_fix = const_cast<float*>(c.h_fix);
  for (int64_t k = 0; k < R; ++k) h_fix[k] = static_cast<float>(std::ldexp(static_cast<double>(inv[k]), e));
  c.h_unfix_exp[1] = static_cast<float>(-e);
  // Step 0 reads the initial state, with its own exponent (any magnitude; below 1e-6 nothing is lost).
  const int e0 = FixExponent(std::max(max_h0, 1e-6), max_inv);
  c.h_unfix_exp[0] = static_cast<float>(-e0);
  std::memset(c.h_planes[0], 0, 4 * B * c.R4);
  std::memset(c.h_planes[1], 0, 4 * B * c.R4);
  for (int64_t b = 0; b < B; ++b) {
    uint8_t* planes = c.h_planes[0] + b * 4 * c.R4;
    for (int64_t k = 0; k < R; ++k) {
      const float v = initial_h[b * R + k];
      const double x = std::isfinite(v) ? std::nearbyint(static_cast<float>(v * std::ldexp(static_cast<double>(inv[k]), e0))) : 0.0;
      const uint32_t u = static_cast<uint32_t>(static_cast<int32_t>(std::max(-2147483520.0, std::min(2147483520.0, x)))) ^ 0x80000000u;
      for (int p = 0; p < 4; ++p) planes[p * c.R4 + k] = static_cast<uint8_t>(u >> (8 * p));
    }
  }
}

void PackSlice(const Job& job, int chain, int64_t slice) {
  if (job.shape->int8_weights) {
    PackSliceQ8(job, chain, slice);
    return;
  }
  if (job.shape->weight16 != Weight16::kNone) {
    const ChainCtx& c = job.ctx[chain];
    PackNarrowPanels<uint16_t>(c, job.chains[chain], slice, job.rec_kernel_16[chain], job.proj_kernel_16[chain],
                               const_cast<uint16_t*>(c.w16_packed), const_cast<uint16_t*>(c.p16_packed));
    return;
  }
  const ChainCtx& c = job.ctx[chain];
  const Chain& ch = job.chains[chain];
  const int64_t H = c.H, R = c.R, G = c.G;
  const int64_t u0 = slice * c.num_unit_blocks / ch.num_slices, u1 = (slice + 1) * c.num_unit_blocks / ch.num_slices;
  const float* w = job.rec_kernel[chain];
  float* wp = const_cast<float*>(c.w_packed);
  for (int64_t u = u0; u < u1; ++u) {
    float* panel = wp + u * R * G * kBlock;
    const int64_t j0 = u * kBlock, n = std::min<int64_t>(kBlock, H - j0);
    if (IsPackedTail(c, u)) {
      PackTailPanel(c, w, panel, j0, n);
      continue;
    }
    for (int64_t k = 0; k < R; ++k) {
      float* dst = panel + k * G * kBlock;
      const float* src = w + k * G * H + j0;
      for (int64_t g = 0; g < G; ++g) CopyBlock(dst + g * kBlock, src + g * H, n);
    }
  }
  if (c.P > 0) {
    const int64_t q0 = slice * c.num_proj_blocks / ch.num_slices, q1 = (slice + 1) * c.num_proj_blocks / ch.num_slices;
    const float* p = job.proj_kernel[chain];
    float* pp = const_cast<float*>(c.p_packed);
    for (int64_t q = q0; q < q1; ++q) {
      float* panel = pp + q * H * kBlock;
      const int64_t p0 = q * kBlock, n = std::min<int64_t>(kBlock, c.P - p0);
      for (int64_t k = 0; k < H; ++k) CopyBlock(panel + k * kBlock, p + k * c.P + p0, n);
    }
  }
}

void RunStage(const Job& job, int chain, int64_t slice, int64_t stage) {
  if (job.custom) {
    job.custom(chain, slice, stage);
    return;
  }
  if (stage == 0) {
    PackSlice(job, chain, slice);
    return;
  }
  const ChainCtx& c = job.ctx[chain];
  const int64_t S = job.chains[chain].num_slices;
  const bool proj = c.P > 0;
  const int64_t step = proj ? (stage - 1) / 2 : stage - 1;
  const bool proj_phase = proj && ((stage - 1) & 1);
  if (job.shape->cell == CellType::kGru) {
    job.kernels->gru_gates(c, step, slice * c.num_unit_blocks / S, (slice + 1) * c.num_unit_blocks / S);
  } else if (!proj_phase) {
    job.kernels->lstm_gates(c, step, slice * c.num_unit_blocks / S, (slice + 1) * c.num_unit_blocks / S);
  } else {
    job.kernels->lstm_projection(c, step, slice * c.num_proj_blocks / S, (slice + 1) * c.num_proj_blocks / S);
  }
}

// Runs stage k of slice x if it is due (every slice finished stage k - 1) and nobody has started it.
bool TryRunStage(const Job& job, int chain_index, int64_t x) {
  Chain& ch = const_cast<Chain&>(job.chains[chain_index]);
  int64_t k = ch.claim[x].load(std::memory_order_acquire);
  if (k >= ch.num_stages || ch.done.load(std::memory_order_acquire) < k * ch.num_slices) return false;
  if (k >= 1 && !job.ready.load(std::memory_order_acquire)) return false;
  if (!ch.claim[x].compare_exchange_strong(k, k + 1, std::memory_order_acq_rel)) return false;
  RunStage(job, chain_index, x, k);
  ch.done.fetch_add(1, std::memory_order_release);
  return true;
}

// Runs any due stage of the chain (for an owner that is not running: preempted, or never scheduled).
bool HelpChain(const Job& job, int chain_index) {
  bool ran = false;
  for (int64_t x = 0; x < job.chains[chain_index].num_slices; ++x) ran |= TryRunStage(job, chain_index, x);
  return ran;
}

// Waiting: spin briefly (a step's hand-off is about a microsecond), then give the core away. A long wait
// means the awaited thread is not running (more runnable threads than cores).
inline void Backoff(int64_t spins) {
  CpuRelax();
  if ((spins & 255) == 0 && spins > (1 << 12)) {
    if (spins > (1 << 16)) std::this_thread::sleep_for(std::chrono::microseconds(20));
    else std::this_thread::yield();
  }
}

// Runs the slices `self` owns through every stage of one chain (slices stay with their thread: their weights stay
// in its cache). After a grace period a waiting thread adopts slices nobody took and runs due stages of any slice.
void WorkChain(const Job& job, int chain_index, int self) {
  Chain& ch = const_cast<Chain&>(job.chains[chain_index]);
  const int64_t S = ch.num_slices;
  while (true) {
    // The owned slice that is furthest behind (ownership can move to a helper that arrived late).
    int64_t slice = -1, stage = ch.num_stages;
    for (int64_t x = 0; x < S; ++x) {
      if (ch.owner[x].load(std::memory_order_relaxed) != self) continue;
      const int64_t k = ch.claim[x].load(std::memory_order_acquire);
      if (k < stage) {
        stage = k;
        slice = x;
      }
    }
    if (slice < 0) return;
    if (stage >= 1 && !job.ready.load(std::memory_order_acquire)) {
      while (!job.ready.load(std::memory_order_acquire)) CpuRelax();
    }
    if (ch.done.load(std::memory_order_acquire) < stage * S) {
      const auto start = std::chrono::steady_clock::now();
      int64_t spins = 0;
      bool new_slices = false;
      while (ch.done.load(std::memory_order_acquire) < stage * S) {
        Backoff(++spins);
        if ((spins & 255) == 0 && std::chrono::steady_clock::now() - start > std::chrono::microseconds(100)) {
          if (ch.next_slice.load(std::memory_order_relaxed) < S) {
            const int64_t first = ch.next_slice.fetch_add(S, std::memory_order_relaxed);
            for (int64_t x = first; x < S; ++x) {
              ch.adopted[x].store(true, std::memory_order_relaxed);
              ch.owner[x].store(self, std::memory_order_relaxed);
            }
            if (first < S) {
              new_slices = true;  // they start at stage 0: run them first
              break;
            }
          }
          HelpChain(job, chain_index);
        }
      }
      if (new_slices) continue;
    }
    TryRunStage(job, chain_index, slice);  // fails only when another thread took this stage meanwhile
  }
}

// Takes up to `take` slices of the chain: unhanded ones first, else ones adopted by a thread that gave up
// waiting for a helper. Returns false when there were none.
bool TakeSlices(Chain& ch, int self, int64_t take) {
  const int64_t first = ch.next_slice.fetch_add(take, std::memory_order_relaxed);
  if (first < ch.num_slices) {
    for (int64_t x = first; x < std::min(first + take, ch.num_slices); ++x) ch.owner[x].store(self, std::memory_order_relaxed);
    return true;
  }
  int64_t got = 0;
  for (int64_t x = ch.num_slices - 1; x >= 0 && got < take; --x) {
    if (!ch.adopted[x].exchange(false, std::memory_order_relaxed)) continue;
    ch.owner[x].store(self, std::memory_order_relaxed);
    ++got;
  }
  return got > 0;
}

// One participant: join the preferred chain (then the others) with a share of slices.
void Participate(const std::shared_ptr<Job>& job, int preferred, int self) {
  const bool is_caller = self == 0;
  for (int i = 0; i < job->num_chains; ++i) {
    const int ci = (preferred + i) % job->num_chains;
    Chain& ch = job->chains[ci];
    const int64_t take = is_caller && i > 0 ? ch.num_slices : job->share;  // the caller mops up other chains
    if (is_caller && i > 0) {
      // Slices of another chain that no helper took yet: adopted (a helper arriving later takes them back).
      const int64_t first = ch.next_slice.fetch_add(take, std::memory_order_relaxed);
      if (first >= ch.num_slices) continue;
      for (int64_t x = first; x < ch.num_slices; ++x) {
        ch.adopted[x].store(true, std::memory_order_relaxed);
        ch.owner[x].store(self, std::memory_order_relaxed);
      }
    } else if (!TakeSlices(ch, self, take)) {
      continue;
    }
    WorkChain(*job, ci, self);
    if (!is_caller) return;  // a helper does one chain; the caller goes on to make sure every chain finishes
  }
  if (is_caller) {
    for (int ci = 0; ci < job->num_chains; ++ci) {
      Chain& ch = job->chains[ci];
      const int64_t total = ch.num_slices * ch.num_stages;
      int64_t spins = 0, seen = ch.done.load(std::memory_order_acquire);
      auto since = std::chrono::steady_clock::now();
      while (seen < total) {
        Backoff(++spins);
        const int64_t now_done = ch.done.load(std::memory_order_acquire);
        if (now_done != seen) {
          // Progress: the owners are running. Helping now would only bounce the chain's state between cores.
          seen = now_done;
          since = std::chrono::steady_clock::now();
        } else if ((spins & 255) == 0 && std::chrono::steady_clock::now() - since > std::chrono::microseconds(100)) {
          HelpChain(*job, ci);  // 100 us without a finished stage: an owner is not running
          seen = ch.done.load(std::memory_order_acquire);
          since = std::chrono::steady_clock::now();
        }
      }
    }
  }
}

}  // namespace

void cpu::RunStaged(int num_chains, int64_t slices, int64_t num_stages, int threads, ParallelRunner* runner,
                    std::function<void(int, int64_t, int64_t)> stage_fn, const std::function<void()>& setup) {
  auto job = std::make_shared<Job>();
  job->num_chains = num_chains;
  job->custom = std::move(stage_fn);
  for (int c = 0; c < num_chains; ++c) job->chains[c].Init(slices, num_stages);
  const int64_t threads_per_chain = std::max<int64_t>(1, threads / num_chains);
  job->share = CeilDiv(slices, threads_per_chain);
  for (int i = 1; i < threads && runner != nullptr; ++i) {
    std::shared_ptr<Job> keep = job;
    runner->Schedule([keep, i]() { Participate(keep, i % keep->num_chains, i); });
  }
  setup();
  job->ready.store(true, std::memory_order_release);
  Participate(job, 0, 0);
}

const char* CpuIsaName() { return cpu::PickKernels().name; }

int64_t CpuForwardScratchFloats(const RnnShape& s) {
  const ScratchLayout l = Layout(s);
  return l.lengths + Align16(s.batch);  // the int32 lengths fit in B floats
}

void CpuForward(const RnnShape& s, const RnnForwardArgs& a, float* scratch, ParallelRunner* runner) {
  cpu::CpuForwardWithKernels(cpu::PickKernels(), s, a, scratch, runner);
}

void cpu::CpuForwardWithKernels(const StepKernels& kernels, const RnnShape& s, const RnnForwardArgs& a,
                                float* scratch, ParallelRunner* runner) {
  const int64_t T = s.max_time, B = s.batch, H = s.num_units, P = s.num_proj, R = s.recurrent_width();
  const int64_t G = s.num_gates(), D = s.num_dirs();
  const bool lstm = s.cell == CellType::kLstm;
  if (B == 0) return;
  const ScratchLayout l = Layout(s);
  const int32_t* lengths = a.sequence_lengths;
  if (lengths == nullptr) {
    int32_t* own = reinterpret_cast<int32_t*>(scratch + l.lengths);
    for (int64_t b = 0; b < B; ++b) own[b] = static_cast<int32_t>(T);
    lengths = own;
  }
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) max_len = std::max<int64_t>(max_len, lengths[b]);

  const int64_t out_w = D * R;
  const int64_t out_b_stride = s.time_major ? out_w : T * out_w;
  const int64_t out_t_stride = s.time_major ? B * out_w : out_w;

  // INT8 as exact integer products where the kernels can (ChainCtx::q8_vnni): int32 sums stay exact up to
  // kMaxVnniK rows. The fixed point keeps 7 bits beyond float32's 24, and one exponent serves a whole step: a
  // large initial state (step 0's exponent; a GRU's bound for every step) or scales of very different size
  // spend those bits, so past |h0| > 64 or a 2^12 spread of the nonzero 1 / scale (rows whose largest weights
  // differ that much) the float path runs instead (found by fuzzing: |h0| = 1e6 gave 2.5e-4 relative error).
  bool use_vnni = s.int8_weights && kernels.int8_vnni && R <= cpu::kMaxVnniK && H <= cpu::kMaxVnniK;
  for (int64_t i = 0; i < D * B * R && use_vnni; ++i) use_vnni = !(std::fabs(a.initial_h[i]) > 64.f);
  auto narrow_spread = [](const float* scale, int64_t n) {
    float lo = 0.f, hi = 0.f;  // the smallest and largest nonzero scale (1 / scale's spread is the same ratio)
    for (int64_t i = 0; i < n; ++i) {
      if (scale[i] == 0.f) continue;
      lo = lo == 0.f ? scale[i] : std::min(lo, scale[i]);
      hi = std::max(hi, scale[i]);
    }
    return lo == 0.f || hi <= 4096.f * lo;
  };
  if (use_vnni) use_vnni = narrow_spread(a.recurrent_scale, D * R);
  if (use_vnni && s.num_proj > 0) use_vnni = narrow_spread(a.projection_scale, D * H);
  auto job = std::make_shared<Job>();
  job->shape = &s;
  job->kernels = &kernels;
  job->num_chains = static_cast<int>(D);
  const int64_t x_w = D * G * H;
  for (int d = 0; d < D; ++d) {
    ChainCtx& c = job->ctx[d];
    float* base = scratch + d * l.per_dir;
    c.dir = d;
    c.reverse = s.direction == Direction::kReverse || (s.direction == Direction::kBidirectional && d == 1);
    c.T = T; c.B = B; c.H = H; c.P = P; c.R = R; c.G = G;
    c.cell_clip = s.cell_clip; c.proj_clip = s.proj_clip;
    c.x_proj = Offset(a.x_proj, d * G * H);  // T == 0: x_proj and output may be empty (null)
    c.x_b_stride = s.time_major ? x_w : T * x_w;
    c.x_t_stride = s.time_major ? B * x_w : x_w;
    c.output = Offset(a.output, d * R);
    c.out_b_stride = out_b_stride; c.out_t_stride = out_t_stride;
    c.lengths = lengths;
    c.rec_bias = a.recurrent_bias ? a.recurrent_bias + d * G * H : nullptr;
    if (s.int8_weights) {
      c.wq_packed = reinterpret_cast<const int8_t*>(base + l.w_packed);
      c.pq_packed = P > 0 ? reinterpret_cast<const int8_t*>(base + l.p_packed) : nullptr;
      c.w_inv_scale = base + l.w_inv_scale;
      c.p_inv_scale = P > 0 ? base + l.p_inv_scale : nullptr;
      c.q8_vnni = use_vnni;
      c.R4 = Round4(R);
      c.H4 = Round4(H);
      c.w_qsum128 = reinterpret_cast<const int32_t*>(base + l.w_qsum);
      c.p_qsum128 = P > 0 ? reinterpret_cast<const int32_t*>(base + l.p_qsum) : nullptr;
      c.h_fix = base + l.h_fix;
      c.m_fix = P > 0 ? base + l.m_fix : nullptr;
      c.h_planes[0] = reinterpret_cast<uint8_t*>(base + l.h_planes);
      c.h_planes[1] = reinterpret_cast<uint8_t*>(base + l.h_planes + Align16(B * c.R4));
      c.m_planes = P > 0 ? reinterpret_cast<uint8_t*>(base + l.m_planes) : nullptr;
      c.float_from_phase = reinterpret_cast<int32_t*>(base + l.float_from);
    } else if (s.weight16 != Weight16::kNone) {
      c.w16_packed = reinterpret_cast<const uint16_t*>(base + l.w_packed);
      c.p16_packed = P > 0 ? reinterpret_cast<const uint16_t*>(base + l.p_packed) : nullptr;
      c.w16_bf16 = s.weight16 == Weight16::kBFloat16;
    } else {
      c.w_packed = base + l.w_packed;
      c.p_packed = P > 0 ? base + l.p_packed : nullptr;
    }
    c.h_buf[0] = base + l.h_buf;
    c.h_buf[1] = base + l.h_buf + Align16(B * R);
    c.c_state = lstm ? base + l.c_state : nullptr;
    c.m_buf = P > 0 ? base + l.m_buf : nullptr;
    c.final_h = a.final_h + d * B * R;
    c.final_c = lstm ? a.final_c + d * B * H : nullptr;
    c.reserve_features = ReserveFeatures(s);
    c.reserve = a.reserve ? a.reserve + d * B * T * c.reserve_features : nullptr;
    c.num_unit_blocks = CeilDiv(H, kBlock);
    c.tail_blocks = PackedTailBlocks(H, G);
    c.num_proj_blocks = P > 0 ? CeilDiv(P, kBlock) : 0;
    if (s.int8_weights) {
      job->rec_kernel_q8[d] = a.recurrent_kernel_q8 + d * R * G * H;
      job->rec_scale[d] = a.recurrent_scale + d * R;
      job->proj_kernel_q8[d] = P > 0 ? a.projection_kernel_q8 + d * H * P : nullptr;
      job->proj_scale[d] = P > 0 ? a.projection_scale + d * H : nullptr;
    } else if (s.weight16 != Weight16::kNone) {
      job->rec_kernel_16[d] = a.recurrent_kernel_16 + d * R * G * H;
      job->proj_kernel_16[d] = P > 0 ? a.projection_kernel_16 + d * H * P : nullptr;
    } else {
      job->rec_kernel[d] = a.recurrent_kernel + d * R * G * H;
      job->proj_kernel[d] = P > 0 ? a.projection_kernel + d * H * P : nullptr;
    }
  }
  // Threads: splitting a step across cores pays only when a step is long against the hand-off (about 1 us per
  // step between the two vCPUs of the development VM).
  const int helpers_available = runner ? std::max(0, runner->NumHelperThreads()) : 0;
  const double step_flops = 2.0 * B * (static_cast<double>(R) * G * H + static_cast<double>(H) * P);
  const int64_t max_slices = std::max<int64_t>(1, CeilDiv(H, kBlock));
  int64_t slices_per_chain = 1;
  int threads = 1;
  // Both directions of a small step on the caller alone: a helper that is preempted in the middle of a step (the
  // other vCPU taken by the hypervisor or another thread) holds that direction until it runs again, which on the
  // development VM cost 3-4 ms in about half the calls of a biLSTM H=100 B=1 layer timed after idle gaps (0.45 ms
  // otherwise; 0.54 ms with one thread every time). Above the split size the helper's share of the work pays.
  if (D == 2 && helpers_available >= 1 && step_flops >= FUSED_RNN_SPLIT_FLOPS) threads = 2;
  if (step_flops >= FUSED_RNN_SPLIT_FLOPS && helpers_available >= 1) {
    const int total = 1 + helpers_available;
    slices_per_chain = std::min<int64_t>(max_slices, std::max(1, total / static_cast<int>(D)));
    threads = static_cast<int>(std::min<int64_t>(total, slices_per_chain * D));
  }
  const int64_t stages_per_step = P > 0 ? 2 : 1;
  for (int d = 0; d < D; ++d) {
    job->chains[d].Init(slices_per_chain, 1 + max_len * stages_per_step);
  }
  const int64_t threads_per_chain = std::max<int64_t>(1, threads / D);
  job->share = CeilDiv(slices_per_chain, threads_per_chain);

  if (max_len > 0) {
    for (int i = 1; i < threads; ++i) {
      std::shared_ptr<Job> keep = job;
      runner->Schedule([keep, i]() { Participate(keep, i % keep->num_chains, i); });
    }
  }

  // Set-up while the helpers wake: outputs past each sequence's end are zero; h_buf[0] = initial h, h_buf[1]
  // zeroed (rows that finish early never read uninitialised memory); empty sequences return their initial state.
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = lengths[b]; t < T; ++t) {
      std::memset(a.output + b * out_b_stride + t * out_t_stride, 0, sizeof(float) * out_w);
    }
  }
  for (int d = 0; d < D; ++d) {
    ChainCtx& c = job->ctx[d];
    std::memcpy(c.h_buf[0], a.initial_h + d * B * R, sizeof(float) * B * R);
    std::memset(c.h_buf[1], 0, sizeof(float) * B * R);
    if (lstm) std::memcpy(c.c_state, a.initial_c + d * B * H, sizeof(float) * B * H);
    if (s.int8_weights) SetUpInt8(*job, d, a.initial_h + d * B * R);
    for (int64_t b = 0; b < B; ++b) {
      if (lengths[b] > 0) continue;
      std::memcpy(c.final_h + b * R, a.initial_h + (d * B + b) * R, sizeof(float) * R);
      if (lstm) std::memcpy(c.final_c + b * H, a.initial_c + (d * B + b) * H, sizeof(float) * H);
    }
  }
  job->ready.store(true, std::memory_order_release);
  if (max_len == 0) return;
  Participate(job, 0, 0);
}

}  // namespace fused_rnn
