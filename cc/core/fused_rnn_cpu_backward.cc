// CPU driver of the backward pass: the sequential part (packing the transposed weights, then two stages per step)
// on the forward's stage scheduler, then the weight gradients (one product over every position) split over all
// threads.
//
// Why this split: the sequential part only needs dh @ U^T per step (the same work as a forward step); the
// weight gradient sum_t h_{t-1}^T da_t is independent across steps, so it runs afterwards as one large product
// with K = B*T instead of B*T rank-B updates that would stream dU through memory at every step.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "cc/core/cpu_internal.h"
#include "cc/core/fused_rnn.h"

#ifndef FUSED_RNN_SPLIT_FLOPS
#define FUSED_RNN_SPLIT_FLOPS 3.0e5
#endif

namespace fused_rnn {
namespace {

using cpu::BwdCtx;
using cpu::CeilDiv;
using cpu::kBlock;
using cpu::StepKernels;
using cpu::WeightGradArgs;

int64_t Align16(int64_t n) { return (n + 15) & ~int64_t{15}; }

struct BwdLayout {
  int64_t ut_packed, pt_packed, dh_tot, zero_row, h_rows, hprev_t, m_t, dr, dhu, per_dir, lengths;
};

// Floats that hold n pointers (scratch offsets stay 64-byte aligned).
int64_t PointerFloats(int64_t n) { return Align16(CeilDiv(n * static_cast<int64_t>(sizeof(void*)), sizeof(float))); }

BwdLayout Layout(const RnnShape& s) {
  const int64_t H = s.num_units, P = s.num_proj, R = s.recurrent_width(), B = s.batch, G = s.num_gates();
  const int64_t N = B * s.max_time, GH = G * H;
  BwdLayout l;
  int64_t off = 0;
  l.ut_packed = off; off += Align16(CeilDiv(R, kBlock) * GH * kBlock);
  l.pt_packed = off; off += Align16(P > 0 ? CeilDiv(H, kBlock) * P * kBlock : 0);
  l.dh_tot = off;    off += Align16(B * R);
  l.zero_row = off;  off += Align16(R);
  l.h_rows = off;    off += PointerFloats(N);
  l.hprev_t = off;   off += Align16(R * N);
  l.m_t = off;       off += Align16(P > 0 ? H * N : 0);
  l.dr = off;        off += Align16(P > 0 ? N * P : 0);
  l.dhu = off;       off += Align16(s.cell == CellType::kGru ? N * GH : 0);
  l.per_dir = off;
  l.lengths = off * s.num_dirs();
  return l;
}

// A parallel loop in which the caller takes part. Helpers that start late (or never) find no task left and
// return without touching the caller's data; the task set itself outlives them through the shared pointer.
struct TaskSet {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t total = 0;
  std::function<void(int64_t)> fn;
};

void Drain(TaskSet* ts) {
  while (true) {
    const int64_t i = ts->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= ts->total) return;
    ts->fn(i);
    ts->done.fetch_add(1, std::memory_order_release);
  }
}

void ParallelFor(int64_t total, int64_t max_threads, ParallelRunner* runner, std::function<void(int64_t)> fn) {
  if (total <= 0) return;
  auto ts = std::make_shared<TaskSet>();
  ts->total = total;
  ts->fn = std::move(fn);
  const int64_t helpers = std::min<int64_t>({runner ? runner->NumHelperThreads() : 0, max_threads - 1, total - 1});
  for (int64_t i = 0; i < helpers; ++i) runner->Schedule([ts]() { Drain(ts.get()); });
  Drain(ts.get());
  int64_t spins = 0;
  while (ts->done.load(std::memory_order_acquire) < total) {
    if ((++spins & 63) == 0) {
      if (spins > (1 << 14)) std::this_thread::sleep_for(std::chrono::microseconds(20));
      else std::this_thread::yield();
    }
  }
}

// U [R][GH] -> panels over R of [GH][16]; P [H][P] -> panels over H of [P][16] (zero past the edge); panels
// [q0, q1) only.
void PackTransposed(const float* w, int64_t rows, int64_t cols, float* packed, int64_t q0, int64_t q1) {
  for (int64_t q = q0; q < q1; ++q) {
    float* panel = packed + q * cols * kBlock;
    for (int64_t l = 0; l < kBlock; ++l) {
      const int64_t r = q * kBlock + l;
      if (r < rows) {
        const float* src = w + r * cols;
        for (int64_t k = 0; k < cols; ++k) panel[k * kBlock + l] = src[k];
      } else {
        for (int64_t k = 0; k < cols; ++k) panel[k * kBlock + l] = 0.f;
      }
    }
  }
}

}  // namespace

int64_t CpuBackwardScratchFloats(const RnnShape& s) { return Layout(s).lengths + Align16(s.batch); }

void CpuBackward(const RnnShape& s, const RnnBackwardArgs& a, float* scratch, ParallelRunner* runner) {
  cpu::CpuBackwardWithKernels(cpu::PickKernels(), s, a, scratch, runner);
}

void cpu::CpuBackwardWithKernels(const StepKernels& kernels, const RnnShape& s, const RnnBackwardArgs& a,
                                 float* scratch, ParallelRunner* runner) {
  const int64_t T = s.max_time, B = s.batch, H = s.num_units, P = s.num_proj, R = s.recurrent_width();
  const int64_t G = s.num_gates(), D = s.num_dirs(), GH = G * H, N = B * T;
  const bool lstm = s.cell == CellType::kLstm;
  if (B == 0 || T == 0) {
    // No step ran: the weight gradients are zero and the state gradients pass straight through. Sizes can be
    // zero here with null pointers (an empty batch), which memset/memcpy must not be given.
    auto zero = [](float* p, int64_t n) { if (n > 0) std::memset(p, 0, sizeof(float) * n); };
    auto copy = [](float* dst, const float* src, int64_t n) { if (n > 0) std::memcpy(dst, src, sizeof(float) * n); };
    zero(a.d_recurrent_kernel, D * R * GH);
    if (!lstm && a.d_recurrent_bias) zero(a.d_recurrent_bias, D * GH);
    if (P > 0) zero(a.d_projection_kernel, D * H * P);
    copy(a.d_initial_h, a.d_final_h, D * B * R);
    if (lstm) copy(a.d_initial_c, a.d_final_c, D * B * H);
    return;
  }
  const BwdLayout l = Layout(s);
  const int32_t* lengths = a.sequence_lengths;
  if (lengths == nullptr) {
    int32_t* own = reinterpret_cast<int32_t*>(scratch + l.lengths);
    for (int64_t b = 0; b < B; ++b) own[b] = static_cast<int32_t>(T);
    lengths = own;
  }
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) max_len = std::max<int64_t>(max_len, lengths[b]);

  const int64_t out_w = D * R, x_w = D * GH;
  const int64_t out_b_stride = s.time_major ? out_w : T * out_w, out_t_stride = s.time_major ? B * out_w : out_w;
  const int64_t x_b_stride = s.time_major ? x_w : T * x_w, x_t_stride = s.time_major ? B * x_w : x_w;

  // Small U with a batch (dU within 512 KiB, half a core's L2; B >= 8; no projection): dU is accumulated during
  // the steps, a rank-B update per step while the step's gradient rows are still in cache. Otherwise one product
  // over all steps afterwards (phase 2), which reads every gradient row back from memory but streams dU once (a
  // rank-1 update per step at B=1 streams all of dU per step: 5-7x slower measured at H=256). Measured at
  // biLSTM H=100 B=32 with the caches evicted before each call (as inside a training step): 1 thread 8.1-10.3 ->
  // 7.4-8.2 ms. The choice depends on the shape alone, so the sums are the same whatever the number of threads.
  const bool du_in_steps =
      P == 0 && B >= 8 && R * GH * static_cast<int64_t>(sizeof(float)) <= (int64_t{512} << 10);

  BwdCtx ctx[2];
  for (int d = 0; d < D; ++d) {
    BwdCtx& c = ctx[d];
    float* base = scratch + d * l.per_dir;
    c.reverse = s.direction == Direction::kReverse || (s.direction == Direction::kBidirectional && d == 1);
    c.T = T; c.B = B; c.H = H; c.P = P; c.R = R; c.G = G; c.max_len = max_len;
    c.cell_clip = s.cell_clip; c.proj_clip = s.proj_clip;
    c.lengths = lengths;
    c.output = a.output + d * R;
    c.d_output = a.d_output + d * R;
    c.out_b_stride = out_b_stride; c.out_t_stride = out_t_stride;
    c.reserve_features = ReserveFeatures(s);
    c.reserve = a.reserve + d * N * c.reserve_features;
    c.initial_h = a.initial_h + d * B * R;
    c.initial_c = lstm ? a.initial_c + d * B * H : nullptr;
    c.d_x = a.d_x_proj + d * GH;
    c.x_b_stride = x_b_stride; c.x_t_stride = x_t_stride;
    c.ut_packed = base + l.ut_packed;
    c.pt_packed = P > 0 ? base + l.pt_packed : nullptr;
    c.dh_carry = a.d_initial_h + d * B * R;
    c.dc_carry = lstm ? a.d_initial_c + d * B * H : nullptr;
    c.dh_tot = base + l.dh_tot;
    c.hprev_t = base + l.hprev_t;
    c.m_t = P > 0 ? base + l.m_t : nullptr;
    c.dr = P > 0 ? base + l.dr : nullptr;
    c.dhu = lstm ? nullptr : base + l.dhu;
    if (du_in_steps) {
      c.d_u = a.d_recurrent_kernel + d * R * GH;
      c.d_rec_bias = !lstm && a.d_recurrent_bias ? a.d_recurrent_bias + d * GH : nullptr;
    }
  }
  // Phase 1, the sequential part, on the forward's stage scheduler: per direction (chain), stage 0 packs the
  // transposed weights, then every step is two stages: gates over unit blocks, then the carry over recurrent
  // columns (with the next step's prep of those columns). Threads split blocks, as in the forward, once a step
  // is long enough to pay for the hand-off.
  const int helpers_available = runner ? std::max(0, runner->NumHelperThreads()) : 0;
  const double step_flops = 2.0 * B * (static_cast<double>(R) * GH + static_cast<double>(H) * P);
  const int64_t unit_blocks = CeilDiv(H, kBlock), col_blocks = CeilDiv(R, kBlock);
  int64_t slices = 1;
  // Small steps: both directions on the caller (a helper preempted mid-step stalls its direction; see CpuForward).
  int threads = (D == 2 && helpers_available >= 1 && step_flops >= FUSED_RNN_SPLIT_FLOPS) ? 2 : 1;
  if (step_flops >= FUSED_RNN_SPLIT_FLOPS && helpers_available >= 1) {
    const int total = 1 + helpers_available;
    slices = std::min<int64_t>(std::max(unit_blocks, col_blocks), std::max(1, total / static_cast<int>(D)));
    threads = static_cast<int>(std::min<int64_t>(total, slices * D));
  }
  const int64_t S = slices;
  auto stage_fn = [&](int d, int64_t slice, int64_t stage) {
    const BwdCtx& c = ctx[d];
    const int64_t u0 = slice * unit_blocks / S, u1 = (slice + 1) * unit_blocks / S;
    const int64_t q0 = slice * col_blocks / S, q1 = (slice + 1) * col_blocks / S;
    if (stage == 0) {
      PackTransposed(a.recurrent_kernel + d * R * GH, R, GH, const_cast<float*>(c.ut_packed), q0, q1);
      if (P > 0) PackTransposed(a.projection_kernel + d * H * P, H, P, const_cast<float*>(c.pt_packed), u0, u1);
      return;
    }
    const int64_t step = max_len - 1 - (stage - 1) / 2;
    if ((stage - 1) % 2 == 0) kernels.bwd_gates(c, step, u0, u1);
    else kernels.bwd_carry(c, step, q0, q1);
  };
  auto setup = [&]() {
    // d_x_proj is zero past each length (the forward never read x_proj there).
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = lengths[b]; t < T; ++t) std::memset(a.d_x_proj + b * x_b_stride + t * x_t_stride, 0, sizeof(float) * x_w);
    }
    for (int d = 0; d < D; ++d) {
      // Records of positions past a length stay zero, so the weight products can run over every position.
      float* base = scratch + d * l.per_dir;
      // (hprev_t is written whole by the transposition after phase 1.)
      std::memset(base + l.m_t, 0, sizeof(float) * (l.per_dir - l.m_t));
      if (ctx[d].d_u) std::memset(ctx[d].d_u, 0, sizeof(float) * R * GH);
      if (ctx[d].d_rec_bias) std::memset(ctx[d].d_rec_bias, 0, sizeof(float) * GH);
      std::memcpy(ctx[d].dh_carry, a.d_final_h + d * B * R, sizeof(float) * B * R);
      if (lstm) std::memcpy(ctx[d].dc_carry, a.d_final_c + d * B * H, sizeof(float) * B * H);
      if (max_len > 0) kernels.bwd_prep(ctx[d], max_len - 1, 0, R);
    }
  };
  if (max_len == 0) {
    setup();
  } else {
    cpu::RunStaged(static_cast<int>(D), S, 1 + 2 * max_len, threads, runner, stage_fn, setup);
  }

  // Phase 2a: the h_{t-1} records of every position, transposed for the weight product: h_{t-1} is the forward's
  // output at the previous position of the walk (initial_h at a sequence's first step); zero past a length.
  for (int d = 0; d < D && !du_in_steps; ++d) {
    const BwdCtx& c = ctx[d];
    float* base = scratch + d * l.per_dir;
    std::memset(base + l.zero_row, 0, sizeof(float) * R);
    const float** h_rows = reinterpret_cast<const float**>(base + l.h_rows);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = lengths[b];
      for (int64_t t = 0; t < T; ++t) {
        const int64_t step = c.reverse ? len - 1 - t : t;
        const int64_t t_prev = c.reverse ? t + 1 : t - 1;
        h_rows[b * T + t] = t >= len ? base + l.zero_row
                            : step == 0 ? c.initial_h + b * R
                                        : c.output + b * out_b_stride + t_prev * out_t_stride;
      }
    }
  }
  const int64_t all_threads = 1 + helpers_available;
  if (!du_in_steps) {
    const int64_t col_blocks_t = CeilDiv(R, kBlock);
    const int64_t per_dir_tasks = std::min<int64_t>(col_blocks_t, 2 * all_threads);
    ParallelFor(D * per_dir_tasks, all_threads, runner, [&](int64_t i) {
      const int d = static_cast<int>(i / per_dir_tasks);
      const int64_t k = i % per_dir_tasks;
      float* base = scratch + d * l.per_dir;
      const int64_t c0 = (k * col_blocks_t / per_dir_tasks) * kBlock;
      const int64_t c1 = std::min(R, ((k + 1) * col_blocks_t / per_dir_tasks) * kBlock);
      kernels.transpose_rows(reinterpret_cast<const float* const*>(base + l.h_rows), 0, N, c0, c1, base + l.hprev_t,
                             N);
    });
  }

  // Phase 2b: dU (and the GRU's recurrent bias) and dP, column stripes over every thread.
  WeightGradArgs wg[2][2];
  for (int d = 0; d < D; ++d) {
    WeightGradArgs& u = wg[d][0];
    u.out = a.d_recurrent_kernel + d * R * GH;
    u.M = R; u.K = GH; u.N = N; u.T = T;
    u.a_t = ctx[d].hprev_t;
    if (lstm) {
      u.rows = ctx[d].d_x; u.b_stride = x_b_stride; u.t_stride = x_t_stride;
    } else {
      u.rows = ctx[d].dhu; u.b_stride = T * GH; u.t_stride = GH;
      u.bias_out = a.d_recurrent_bias ? a.d_recurrent_bias + d * GH : nullptr;
    }
    WeightGradArgs& p = wg[d][1];
    if (P > 0) {
      p.out = a.d_projection_kernel + d * H * P;
      p.M = H; p.K = P; p.N = N; p.T = T;
      p.a_t = ctx[d].m_t;
      p.rows = ctx[d].dr; p.b_stride = T * P; p.t_stride = P;
    }
  }
  // Tasks: (direction, matrix, column chunk); chunks are whole tile stripes.
  const int64_t stripe = kernels.weight_grad_stripe;
  struct Task { int d, which; int64_t k0, k1; };
  std::vector<Task> tasks;
  for (int d = 0; d < D; ++d) {
    for (int which = du_in_steps ? 1 : 0; which < (P > 0 ? 2 : 1); ++which) {
      const int64_t K = wg[d][which].K, stripes = CeilDiv(K, stripe);
      const int64_t chunks = std::min<int64_t>(stripes, 4 * all_threads);
      for (int64_t i = 0; i < chunks; ++i) {
        tasks.push_back({d, which, (i * stripes / chunks) * stripe, std::min(K, ((i + 1) * stripes / chunks) * stripe)});
      }
    }
  }
  ParallelFor(static_cast<int64_t>(tasks.size()), all_threads, runner, [&](int64_t i) {
    const Task& t = tasks[i];
    kernels.weight_grad(wg[t.d][t.which], t.k0, t.k1);
  });
}

}  // namespace fused_rnn
