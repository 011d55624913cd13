// Backward pass (backpropagation through time) of the CUDA core, float32 weights. See CudaBackward in
// cc/core/fused_rnn_cuda.h for the contract; the math is that of the CPU backward (cc/core/cpu_backward_impl.h):
//
//   per step, walking each sequence backwards from its last valid position:
//     [prep, projection only]  dr = (d_output + dh_carry), zero where the projection clip was active
//     gates   dm = dr @ P^T (or d_output + dh_carry); the cell's backward -> d_x_proj at this position, dc_carry
//     carry   dh_carry = d(h_prev @ U) @ U^T  (+ dh * z for the GRU)
//   then the weight gradients as products over every valid (row, position): dU = sum h_{t-1}^T da_t,
//   dP = sum m^T dr, and the GRU's recurrent bias = column sums of d(h_prev @ U).
//
// Why not persistent (as the forward is): the backward's sequential part is the same shape of work as a forward
// step, but this first GPU backward favours being obviously right: plain kernels on the caller's stream, 2 per
// step (3 with a projection), no grid-wide waits and so nothing that could hang; a CUDA graph takes the launch
// cost down. Deterministic: no atomics, every sum has one fixed order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>

#include "../core/fused_rnn_cuda.h"

namespace fused_rnn {
namespace {

thread_local char g_bwd_message[512];

const char* BwdCudaMessage(const char* what, cudaError_t e) {
  std::snprintf(g_bwd_message, sizeof(g_bwd_message), "%sbackward %s failed: %s", kCudaRuntimeFailurePrefix, what,
                cudaGetErrorString(e));
  cudaGetLastError();  // reported through the message; do not leave it for the caller's next check
  return g_bwd_message;
}

size_t Align256(size_t v) { return (v + 255) / 256 * 256; }

// The CUDA library stands alone (the device harness links it without the CPU core), so it has its own checks.
const char* CheckBwdShape(const RnnShape& s) {
  if (s.cell != CellType::kLstm && s.cell != CellType::kGru) return "fused_rnn CUDA backward: unknown cell type";
  if (s.direction != Direction::kForward && s.direction != Direction::kReverse &&
      s.direction != Direction::kBidirectional)
    return "fused_rnn CUDA backward: unknown direction";
  if (s.max_time < 0 || s.batch < 0 || s.num_units <= 0 || s.num_proj < 0)
    return "fused_rnn CUDA backward: negative sizes or num_units <= 0";
  if (s.cell == CellType::kGru && s.num_proj > 0) return "fused_rnn CUDA backward: projection is for LSTM only";
  if (s.num_units > (1 << 20) || s.num_proj > (1 << 20) || s.batch * s.max_time > INT32_MAX)
    return "fused_rnn CUDA backward: size out of the supported range";
  if (s.int8_weights) return "fused_rnn CUDA backward: INT8 weights are inference-only";
  return nullptr;
}
// Floats per (direction, row, position) of the training reserve (fused_rnn.h).
int ReserveWidth(const RnnShape& s) {
  return static_cast<int>(s.cell == CellType::kLstm ? 5 * s.num_units + s.num_proj : 4 * s.num_units);
}

struct BwdParams {
  int T, B, H, P, R, G, D, GH, F;
  bool time_major, lstm;
  int reverse_mask;  // bit d: direction d walks its sequences backwards
  float cell_clip, proj_clip;
  const int32_t* lengths;  // [B] or null (all T)
  const float* U;          // [D, R, GH]
  const float* Pk;         // [D, H, P]
  const float* h0;         // [D, B, R] or null (zeros)
  const float* c0;         // [D, B, H] or null (zeros)
  const float* output;     // [B, T, D*R] / [T, B, D*R]
  const float* reserve;    // [D, B, T, F]
  const float* d_output;   // like output
  float* d_x;              // [B, T, D*GH] / [T, B, D*GH]
  float* dh_carry;         // [D, B, R] (the caller's d_initial_h)
  float* dc_carry;         // [D, B, H] (the caller's d_initial_c; LSTM)
  float* dh_tot;           // [D, B, H] (GRU: d_output + carry of this step)
  float* dr_all;           // [D, B, T, P] (projection: dr of every valid position, for dP)
};

// Clamped to [0, T] like the forward's lengths: the adaptors validate them on the host, and this keeps a bad copy
// from ever indexing outside the sequence.
__device__ __forceinline__ int LenOf(const BwdParams& p, int b) {
  return p.lengths ? min(max(p.lengths[b], 0), p.T) : p.T;
}
__device__ __forceinline__ bool Rev(const BwdParams& p, int d) { return (p.reverse_mask >> d) & 1; }
// Time position of step s of a sequence of length len (s < len).
__device__ __forceinline__ int PosOf(const BwdParams& p, int d, int len, int s) {
  return Rev(p, d) ? len - 1 - s : s;
}
__device__ __forceinline__ int64_t RowIndex(const BwdParams& p, int b, int t) {
  return p.time_major ? static_cast<int64_t>(t) * p.B + b : static_cast<int64_t>(b) * p.T + t;
}
__device__ __forceinline__ const float* ResRow(const BwdParams& p, int d, int b, int t) {
  return p.reserve + ((static_cast<int64_t>(d) * p.B + b) * p.T + t) * p.F;
}
__device__ __forceinline__ float* DxRow(const BwdParams& p, int d, int b, int t) {
  return p.d_x + RowIndex(p, b, t) * (static_cast<int64_t>(p.D) * p.GH) + static_cast<int64_t>(d) * p.GH;
}
// h_{t-1} of the step at position t (R floats), or null meaning zeros (no initial state given).
__device__ __forceinline__ const float* HPrev(const BwdParams& p, int d, int b, int len, int t) {
  const bool first = Rev(p, d) ? t == len - 1 : t == 0;
  if (first) return p.h0 ? p.h0 + (static_cast<int64_t>(d) * p.B + b) * p.R : nullptr;
  const int tp = Rev(p, d) ? t + 1 : t - 1;
  return p.output + RowIndex(p, b, tp) * (static_cast<int64_t>(p.D) * p.R) + static_cast<int64_t>(d) * p.R;
}
// Clip that keeps NaN (as np.clip and the CPU path do).
__device__ __forceinline__ float ClipF(float v, float c) {
  return c > 0.f ? (v > c ? c : (v < -c ? -c : v)) : v;
}
// clip_by_value passes the gradient where |v| <= clip (NaN compares false: passes too).
__device__ __forceinline__ bool Clipped(float v, float c) { return c > 0.f && c < fabsf(v); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- per-step kernels ---------------------------------------------------------------------------------------

// Projection LSTM: dr = d_output + dh_carry, masked by the projection clip. One thread per (row, column).
__global__ void BwdPrepProjKernel(BwdParams p, int s) {
  const int d = blockIdx.y;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(p.B) * p.P) return;
  const int b = static_cast<int>(idx / p.P), r = static_cast<int>(idx % p.P);
  const int len = LenOf(p, b);
  if (s >= len) return;
  const int t = PosOf(p, d, len, s);
  float dh = p.d_output[RowIndex(p, b, t) * (static_cast<int64_t>(p.D) * p.R) + static_cast<int64_t>(d) * p.R + r] +
             p.dh_carry[(static_cast<int64_t>(d) * p.B + b) * p.R + r];
  if (Clipped(ResRow(p, d, b, t)[5 * p.H + r], p.proj_clip)) dh = 0.f;
  p.dr_all[((static_cast<int64_t>(d) * p.B + b) * p.T + t) * p.P + r] = dh;
}

// LSTM cell backward at step s. Without a projection one thread per (row, unit); with one, a warp per (row, unit)
// (dm = dr . P[j, :] is a dot over P).
template <bool kProj>
__global__ void BwdGatesLstmKernel(BwdParams p, int s) {
  const int d = blockIdx.y;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t item = kProj ? gid >> 5 : gid;
  const int lane = threadIdx.x & 31;
  if (item >= static_cast<int64_t>(p.B) * p.H) return;  // warp-uniform in the projection case
  const int b = static_cast<int>(item / p.H), j = static_cast<int>(item % p.H);
  const int len = LenOf(p, b);
  if (s >= len) return;
  const int t = PosOf(p, d, len, s);
  const int H = p.H;
  float dm;
  if (kProj) {
    const float* dr = p.dr_all + ((static_cast<int64_t>(d) * p.B + b) * p.T + t) * p.P;
    const float* prow = p.Pk + (static_cast<int64_t>(d) * H + j) * p.P;
    float acc = 0.f;
    for (int r = lane; r < p.P; r += 32) acc = fmaf(dr[r], prow[r], acc);
    acc = WarpSum(acc);
    if (lane != 0) return;
    dm = acc;
  } else {
    dm = p.d_output[RowIndex(p, b, t) * (static_cast<int64_t>(p.D) * p.R) + static_cast<int64_t>(d) * p.R + j] +
         p.dh_carry[(static_cast<int64_t>(d) * p.B + b) * p.R + j];
  }
  const float* res = ResRow(p, d, b, t);
  const float ig = res[j], fg = res[H + j], gg = res[2 * H + j], og = res[3 * H + j], c_pre = res[4 * H + j];
  const int64_t ci = (static_cast<int64_t>(d) * p.B + b) * H + j;
  float c_prev;
  if (s == 0) {
    c_prev = p.c0 ? p.c0[ci] : 0.f;  // the initial state is not clipped
  } else {
    c_prev = ClipF(ResRow(p, d, b, Rev(p, d) ? t + 1 : t - 1)[4 * H + j], p.cell_clip);
  }
  const float tc = tanhf(ClipF(c_pre, p.cell_clip));
  float dc = fmaf(dm * og, 1.f - tc * tc, p.dc_carry[ci]);
  if (Clipped(c_pre, p.cell_clip)) dc = 0.f;
  float* dx = DxRow(p, d, b, t);
  dx[j] = dc * gg * (ig * (1.f - ig));
  dx[H + j] = dc * c_prev * (fg * (1.f - fg));
  dx[2 * H + j] = dc * ig * (1.f - gg * gg);
  dx[3 * H + j] = dm * tc * (og * (1.f - og));
  p.dc_carry[ci] = dc * fg;
}

// GRU cell backward at step s, one thread per (row, unit).
__global__ void BwdGatesGruKernel(BwdParams p, int s) {
  const int d = blockIdx.y;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= static_cast<int64_t>(p.B) * p.H) return;
  const int b = static_cast<int>(item / p.H), j = static_cast<int>(item % p.H);
  const int len = LenOf(p, b);
  if (s >= len) return;
  const int t = PosOf(p, d, len, s);
  const int H = p.H;
  const int64_t hi = (static_cast<int64_t>(d) * p.B + b) * H + j;
  const float dh =
      p.d_output[RowIndex(p, b, t) * (static_cast<int64_t>(p.D) * H) + static_cast<int64_t>(d) * H + j] +
      p.dh_carry[hi];
  p.dh_tot[hi] = dh;
  const float* res = ResRow(p, d, b, t);
  const float zg = res[j], rg = res[H + j], ng = res[2 * H + j], hu_n = res[3 * H + j];
  const float* hp = HPrev(p, d, b, len, t);
  const float h_prev = hp ? hp[j] : 0.f;
  const float da_n = dh * (1.f - zg) * (1.f - ng * ng);
  float* dx = DxRow(p, d, b, t);
  dx[j] = dh * (h_prev - ng) * (zg * (1.f - zg));
  dx[H + j] = da_n * hu_n * (rg * (1.f - rg));
  dx[2 * H + j] = da_n;
}

// dh_carry[d, b, r] = sum_k a[b, k] U[d, r, k] (+ dh_tot * z for the GRU), with a = d_x_proj's row (LSTM) or
// d(h_prev @ U) = [da_z, da_r, da_n * r] (GRU). Two kernels:
//  - small batches (B <= 8): a warp per recurrent column r, NB rows at once, U's row read once per NB rows
//    (16-byte loads when the layout allows: the per-warp chain of L2 loads is what limits this kernel);
//  - larger batches: a tiled product over (rows x columns) with the K = G*H sum split across blocks (one
//    column block of a whole H=1024 layer is only 16 blocks otherwise), partial sums to the workspace, then a
//    reduction in a fixed order (deterministic) that adds the GRU term and writes dh_carry.
__device__ __forceinline__ float Dot4(float4 a, float4 b, float acc) {
  return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
}

struct CarryRows {
  const float* a;    // d_x_proj row of this step
  const float* res;  // reserve row of this step
};

template <int NB, bool kVec>
__global__ void BwdCarryKernel(BwdParams p, int s) {
  const int d = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + warp;
  if (r >= p.R) return;
  const int b0 = blockIdx.y * NB;
  const int H = p.H, GH = p.GH;
  CarryRows rows[NB];
  bool active[NB];
  bool any = false;
#pragma unroll
  for (int i = 0; i < NB; ++i) {
    const int b = b0 + i;
    active[i] = false;
    rows[i] = {nullptr, nullptr};
    if (b < p.B) {
      const int len = LenOf(p, b);
      if (s < len) {
        const int t = PosOf(p, d, len, s);
        active[i] = true;
        any = true;
        rows[i] = {DxRow(p, d, b, t), ResRow(p, d, b, t)};
      }
    }
  }
  if (!any) return;
  const float* u = p.U + (static_cast<int64_t>(d) * p.R + r) * GH;
  float acc[NB];
#pragma unroll
  for (int i = 0; i < NB; ++i) acc[i] = 0.f;
  // LSTM (and the GRU's z, r columns): a is d_x_proj itself.
  const int k_plain = p.lstm ? GH : 2 * H;
  if (kVec) {
    const float4* u4 = reinterpret_cast<const float4*>(u);
#pragma unroll 4
    for (int k4 = lane; k4 < k_plain / 4; k4 += 32) {
      const float4 w = __ldg(u4 + k4);
#pragma unroll
      for (int i = 0; i < NB; ++i)
        if (active[i]) acc[i] = Dot4(reinterpret_cast<const float4*>(rows[i].a)[k4], w, acc[i]);
    }
    if (!p.lstm) {
#pragma unroll 4
      for (int k4 = 2 * H / 4 + lane; k4 < GH / 4; k4 += 32) {
        const float4 w = __ldg(u4 + k4);
#pragma unroll
        for (int i = 0; i < NB; ++i) {
          if (!active[i]) continue;
          const float4 x = reinterpret_cast<const float4*>(rows[i].a)[k4];
          const float4 rg = reinterpret_cast<const float4*>(rows[i].res)[k4 - H / 4];
          acc[i] = Dot4(make_float4(x.x * rg.x, x.y * rg.y, x.z * rg.z, x.w * rg.w), w, acc[i]);
        }
      }
    }
  } else {
#pragma unroll 4
    for (int k = lane; k < k_plain; k += 32) {
      const float w = __ldg(u + k);
#pragma unroll
      for (int i = 0; i < NB; ++i)
        if (active[i]) acc[i] = fmaf(rows[i].a[k], w, acc[i]);
    }
    if (!p.lstm) {
      // GRU n columns: the reset gate multiplies h_prev @ U_n, so its gradient is da_n * r.
#pragma unroll 4
      for (int k = 2 * H + lane; k < GH; k += 32) {
        const float w = __ldg(u + k);
#pragma unroll
        for (int i = 0; i < NB; ++i)
          if (active[i]) acc[i] = fmaf(rows[i].a[k] * rows[i].res[k - H], w, acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < NB; ++i) {
    if (!active[i]) continue;  // warp-uniform
    float v = WarpSum(acc[i]);
    if (lane == 0) {
      const int64_t hi = (static_cast<int64_t>(d) * p.B + b0 + i) * p.R + r;
      if (!p.lstm) v = fmaf(p.dh_tot[hi], rows[i].res[r], v);  // dh * z flows straight to h_prev
      p.dh_carry[hi] = v;
    }
  }
}

// ---- the persistent small-H backward: every step of one (direction, row) in one block --------------------------
//
// For LSTM and GRU without a projection whose U fits one block's shared memory (4H^2 floats: H <= ~112 for an
// LSTM, ~130 for a GRU on sm_90's 227 KB). The rows of a batch are independent in the backward as in the forward
// (dh_{t-1} of row b needs only row b's gate gradients), so one block per (direction, row) runs all of its steps
// with two __syncthreads a step and no inter-block wait: any grid size runs (in waves), nothing can hang. It
// replaces the per-step pair of launches (gates, carry), whose launch and tail latency (~5-8 us a step in a CUDA
// graph) is most of a small layer's backward. Per step:
//   1. threads j < H: dh_carry[j] = the sum of the previous step's partial sums (+ the GRU's dh * z), then the
//      cell's backward for unit j (its loads were issued a step ahead), d_x_proj to global memory, and the carry
//      product's input a (LSTM: d_x_proj; GRU: [da_z, da_r, da_n * r]) to shared memory;
//   2. thread (q, sl): the partial sums of carry columns 4q..4q+3 over k-slice sl of a . U[r, :], from U^T held
//      in shared memory as [GHp][Rp] (a 16-byte load gives 4 columns; a[k] is a broadcast); no shuffles, and the
//      slices are summed in a fixed order (deterministic).
// (A first version with a warp per column and shuffle reductions took ~4 us a step at B=1: the reductions'
// latency, serialized over each warp's 13 columns.) The weight gradients stay the tiled products after the loop.
constexpr int kBwdSmallThreads = 256;
// At most this many k-rows of a thread's slice of U^T in registers (128 floats); a_s is padded by as many zeros
// so a short last slice reads no further than its end.
constexpr int kBwdSmallMaxRegRows = 32;

// A load issued where it is written (volatile: not sunk to its use behind the step's barriers). Only inputs the
// kernel never writes (reserve, d_output, output, initial states).
__device__ __forceinline__ float LdNc(const float* ptr) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(ptr));
  return v;
}

// The kernel's shared-memory geometry: U^T rows padded to Rp (a multiple of 4) columns, GHp (a multiple of 4)
// k-rows; NQ column quads; S k-slices of KC k-rows each (a multiple of 4).
struct BwdSmallGeom {
  int Rp, GHp, NQ, S, KC;
  size_t floats;  // U^T [GHp][Rp], a [GHp + kBwdSmallMaxRegRows], partial sums [S][Rp], dh * z [Rp]
};
__host__ __device__ inline BwdSmallGeom BwdSmallGeometry(int R, int GH) {
  BwdSmallGeom g;
  g.Rp = (R + 3) / 4 * 4;
  g.GHp = (GH + 3) / 4 * 4;
  g.NQ = g.Rp / 4;
  g.S = g.NQ >= kBwdSmallThreads ? 1 : kBwdSmallThreads / g.NQ;
  g.S = g.S < g.GHp / 4 ? g.S : g.GHp / 4;  // no empty slices (small H)
  g.KC = ((g.GHp + g.S - 1) / g.S + 3) / 4 * 4;
  g.floats = static_cast<size_t>(g.GHp) * g.Rp + g.GHp + kBwdSmallMaxRegRows + static_cast<size_t>(g.S) * g.Rp + g.Rp;
  return g;
}

// How many of a thread's k-rows of U^T it holds in registers (4 floats each): the most of {32, 16, 8} that its
// slice fills, else none. The rest stay in shared memory.
__host__ __device__ inline int BwdSmallAutoRegRows(const BwdSmallGeom& g) {
  return g.KC >= 32 ? 32 : g.KC >= 16 ? 16 : g.KC >= 8 ? 8 : 0;
}

// Per-step inputs of one unit (thread j < H), loaded a step ahead.
struct BwdSmallIn {
  float d_out;           // d_output at (b, t, d, j)
  float r0, r1, r2, r3;  // reserve: LSTM i, f, g, o; GRU z, r, n, hu_n
  float c_pre;           // LSTM: c before the clip at t
  float prev;            // LSTM: c_{t-1} before its clip (c0 at s = 0); GRU: h_{t-1}[j]
};

template <bool kLstm>
__device__ __forceinline__ BwdSmallIn BwdSmallLoad(const BwdParams& p, int d, int b, int len, int s, int j) {
  BwdSmallIn in;
  const int t = PosOf(p, d, len, s), H = p.H;
  in.d_out = LdNc(p.d_output + RowIndex(p, b, t) * (static_cast<int64_t>(p.D) * p.R) + static_cast<int64_t>(d) * p.R + j);
  const float* res = ResRow(p, d, b, t);
  in.r0 = LdNc(res + j);
  in.r1 = LdNc(res + H + j);
  in.r2 = LdNc(res + 2 * H + j);
  in.r3 = LdNc(res + 3 * H + j);
  if (kLstm) {
    in.c_pre = LdNc(res + 4 * H + j);
    // Raw: the step clips it where it uses it (s > 0), so nothing here waits for the load.
    in.prev = s == 0 ? (p.c0 ? LdNc(p.c0 + (static_cast<int64_t>(d) * p.B + b) * H + j) : 0.f)
                     : LdNc(ResRow(p, d, b, Rev(p, d) ? t + 1 : t - 1) + 4 * H + j);
  } else {
    in.c_pre = 0.f;
    const float* hp = HPrev(p, d, b, len, t);
    in.prev = hp ? LdNc(hp + j) : 0.f;
  }
  return in;
}

template <bool kLstm, int kRegRows>
__global__ void __launch_bounds__(kBwdSmallThreads) BwdSmallKernel(BwdParams p) {
  static_assert(kRegRows % 8 == 0 && kRegRows <= kBwdSmallMaxRegRows, "register rows: groups of 8, at most the pad");
  extern __shared__ __align__(16) float bwd_smem[];
  const int d = static_cast<int>(blockIdx.x) / p.B, b = static_cast<int>(blockIdx.x) - d * p.B;
  const int H = p.H, R = p.R, GH = p.GH;
  const BwdSmallGeom g = BwdSmallGeometry(R, GH);
  float* ut_s = bwd_smem;                                   // [GHp][Rp]: U^T
  float* a_s = ut_s + static_cast<size_t>(g.GHp) * g.Rp;    // [GHp]
  float* part_s = a_s + g.GHp + kBwdSmallMaxRegRows;       // [S][Rp] (a_s: zero padding for register rows)
  float* dhz_s = part_s + static_cast<size_t>(g.S) * g.Rp;  // [Rp] (GRU: dh * z)
  const int tid = threadIdx.x;
  const int len = LenOf(p, b);
  if (len == 0) return;  // the state gradients already hold d_final_h / d_final_c (CudaBackward's copy)
  // U^T into shared memory, zero-padded. Once per call, but a serial load-then-store loop cost ~50 us at H=100
  // (each 4-byte load's full latency, ~156 times a thread); so 16-byte loads, 8 in flight a thread: thread i takes
  // row r = i % R, k-quad i / R (neighbours store neighbouring columns: no bank conflicts).
  const float* u_g = p.U + static_cast<int64_t>(d) * R * GH;
  if (GH % 4 == 0 && (reinterpret_cast<uintptr_t>(u_g) & 15) == 0) {
    const int n = R * (GH / 4);
    for (int i0 = tid; i0 < n; i0 += 8 * kBwdSmallThreads) {
      float4 v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int i = i0 + u * kBwdSmallThreads, r = i % R, kq = i / R;
        v[u] = i < n ? __ldg(reinterpret_cast<const float4*>(u_g + static_cast<int64_t>(r) * GH + 4 * kq))
                     : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int i = i0 + u * kBwdSmallThreads, r = i % R, kq = i / R;
        if (i < n) {
          float* dst = ut_s + static_cast<size_t>(4 * kq) * g.Rp + r;
          dst[0] = v[u].x; dst[g.Rp] = v[u].y; dst[2 * g.Rp] = v[u].z; dst[3 * g.Rp] = v[u].w;
        }
      }
    }
    for (int i = tid; i < (g.Rp - R) * GH; i += kBwdSmallThreads) {  // padding columns (GHp == GH here)
      const int k = i / (g.Rp - R), r = R + i - k * (g.Rp - R);
      ut_s[static_cast<size_t>(k) * g.Rp + r] = 0.f;
    }
  } else {
    for (int i = tid; i < g.Rp * g.GHp; i += kBwdSmallThreads) {
      const int r = i / g.GHp, k = i - r * g.GHp;
      ut_s[static_cast<size_t>(k) * g.Rp + r] = (r < R && k < GH) ? u_g[static_cast<int64_t>(r) * GH + k] : 0.f;
    }
  }
  // Padding: 0 * 0 in every column's sum (also the register rows past a short last slice).
  for (int k = GH + tid; k < g.GHp + kBwdSmallMaxRegRows; k += blockDim.x) a_s[k] = 0.f;
  for (int i = tid; i < g.S * g.Rp; i += blockDim.x) part_s[i] = 0.f;
  for (int i = tid; i < g.Rp; i += blockDim.x) dhz_s[i] = 0.f;
  const int64_t si = static_cast<int64_t>(d) * p.B + b;
  const int j = tid;
  const bool unit = j < H;  // R == H (no projection)
  float carry = unit ? p.dh_carry[si * R + j] : 0.f;
  float dc = (kLstm && unit) ? p.dc_carry[si * H + j] : 0.f;
  // This thread's product work: column quad q over k-rows [k0, k1).
  const int q = tid % g.NQ, sl = tid / g.NQ;
  const int k0 = sl * g.KC, k1 = min(g.GHp, k0 + g.KC);
  const bool prod = sl < g.S && k0 < k1;
  __syncthreads();
  // The first kRegRows k-rows of this thread's slice, in registers (zero past the slice's end): a step then reads
  // only the rest of U from shared memory.
  float4 u_reg[kRegRows > 0 ? kRegRows : 1];
#pragma unroll
  for (int e = 0; e < kRegRows; ++e) {
    u_reg[e] = (prod && k0 + e < k1) ? *reinterpret_cast<const float4*>(ut_s + static_cast<size_t>(k0 + e) * g.Rp + 4 * q)
                                     : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  // One step. Its inputs `cur` were loaded a step ahead, and it issues the next step's loads into `next`. The
  // loop below runs steps in pairs with the two buffers swapped: with one buffer copied `in -> cur` every step, the
  // compiler moved each fresh load's register into the loop-carried one at once, waiting for the load there (ncu:
  // a third of the stall samples at H=100 and 128).
  auto step = [&](const int s, const BwdSmallIn& cur, BwdSmallIn& next) {
    if (unit) {
      if (s != len - 1) {  // the previous step's carry: its slices' partial sums, in order
        float v = 0.f;
        for (int i = 0; i < g.S; ++i) v += part_s[i * g.Rp + j];
        carry = kLstm ? v : v + dhz_s[j];
      }
      if (s > 0) next = BwdSmallLoad<kLstm>(p, d, b, len, s - 1, j);  // the next step's loads, behind this step
      const int t = PosOf(p, d, len, s);
      float* dx = DxRow(p, d, b, t);
      const float dh = cur.d_out + carry;
      if (kLstm) {
        const float ig = cur.r0, fg = cur.r1, gg = cur.r2, og = cur.r3;
        const float tc = tanhf(ClipF(cur.c_pre, p.cell_clip));
        float dcv = fmaf(dh * og, 1.f - tc * tc, dc);
        if (Clipped(cur.c_pre, p.cell_clip)) dcv = 0.f;
        const float c_prev = s == 0 ? cur.prev : ClipF(cur.prev, p.cell_clip);  // c0 is not clipped
        const float a0 = dcv * gg * (ig * (1.f - ig)), a1 = dcv * c_prev * (fg * (1.f - fg));
        const float a2 = dcv * ig * (1.f - gg * gg), a3 = dh * tc * (og * (1.f - og));
        a_s[j] = a0; a_s[H + j] = a1; a_s[2 * H + j] = a2; a_s[3 * H + j] = a3;
        dx[j] = a0; dx[H + j] = a1; dx[2 * H + j] = a2; dx[3 * H + j] = a3;
        dc = dcv * fg;
      } else {
        const float zg = cur.r0, rg = cur.r1, ng = cur.r2, hu_n = cur.r3;
        const float da_n = dh * (1.f - zg) * (1.f - ng * ng);
        const float a0 = dh * (cur.prev - ng) * (zg * (1.f - zg)), a1 = da_n * hu_n * (rg * (1.f - rg));
        a_s[j] = a0; a_s[H + j] = a1; a_s[2 * H + j] = da_n * rg;
        dx[j] = a0; dx[H + j] = a1; dx[2 * H + j] = da_n;
        dhz_s[j] = dh * zg;  // dh * z flows straight to h_prev
      }
    }
    __syncthreads();
    if (prod) {
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f), acc2 = acc;  // two chains: even and odd k-quads
      const float4* a4 = reinterpret_cast<const float4*>(a_s);
      const float* col = ut_s + 4 * q;
#pragma unroll
      for (int e = 0; e < kRegRows; e += 8) {  // register rows: 8 a step, even quad into acc, odd into acc2
        const float4 av = a4[(k0 + e) >> 2], aw = a4[((k0 + e) >> 2) + 1];
        const float av_[4] = {av.x, av.y, av.z, av.w}, aw_[4] = {aw.x, aw.y, aw.z, aw.w};
#pragma unroll
        for (int f = 0; f < 4; ++f) {
          const float4 w = u_reg[e + f], x = u_reg[e + 4 + f];
          acc.x = fmaf(av_[f], w.x, acc.x); acc.y = fmaf(av_[f], w.y, acc.y);
          acc.z = fmaf(av_[f], w.z, acc.z); acc.w = fmaf(av_[f], w.w, acc.w);
          acc2.x = fmaf(aw_[f], x.x, acc2.x); acc2.y = fmaf(aw_[f], x.y, acc2.y);
          acc2.z = fmaf(aw_[f], x.z, acc2.z); acc2.w = fmaf(aw_[f], x.w, acc2.w);
        }
      }
      int k = k0 + kRegRows;
      for (; k + 8 <= k1; k += 8) {
        const float4 av = a4[k >> 2], aw = a4[(k >> 2) + 1];
        const float av_[4] = {av.x, av.y, av.z, av.w}, aw_[4] = {aw.x, aw.y, aw.z, aw.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float4 w = *reinterpret_cast<const float4*>(col + static_cast<size_t>(k + e) * g.Rp);
          const float4 x = *reinterpret_cast<const float4*>(col + static_cast<size_t>(k + 4 + e) * g.Rp);
          acc.x = fmaf(av_[e], w.x, acc.x); acc.y = fmaf(av_[e], w.y, acc.y);
          acc.z = fmaf(av_[e], w.z, acc.z); acc.w = fmaf(av_[e], w.w, acc.w);
          acc2.x = fmaf(aw_[e], x.x, acc2.x); acc2.y = fmaf(aw_[e], x.y, acc2.y);
          acc2.z = fmaf(aw_[e], x.z, acc2.z); acc2.w = fmaf(aw_[e], x.w, acc2.w);
        }
      }
      for (; k < k1; k += 4) {
        const float4 av = a4[k >> 2];
        const float av_[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float4 w = *reinterpret_cast<const float4*>(col + static_cast<size_t>(k + e) * g.Rp);
          acc.x = fmaf(av_[e], w.x, acc.x); acc.y = fmaf(av_[e], w.y, acc.y);
          acc.z = fmaf(av_[e], w.z, acc.z); acc.w = fmaf(av_[e], w.w, acc.w);
        }
      }
      *reinterpret_cast<float4*>(part_s + sl * g.Rp + 4 * q) =
          make_float4(acc.x + acc2.x, acc.y + acc2.y, acc.z + acc2.z, acc.w + acc2.w);
    }
    __syncthreads();
  };
  BwdSmallIn in_a = {}, in_b = {};
  if (unit) in_a = BwdSmallLoad<kLstm>(p, d, b, len, len - 1, j);
  int s = len - 1;
  for (; s >= 1; s -= 2) {
    step(s, in_a, in_b);
    step(s - 1, in_b, in_a);
  }
  if (s == 0) step(0, in_a, in_b);
  if (unit) {
    float v = 0.f;
    for (int i = 0; i < g.S; ++i) v += part_s[i * g.Rp + j];
    p.dh_carry[si * R + j] = kLstm ? v : v + dhz_s[j];
    if (kLstm) p.dc_carry[si * H + j] = dc;
  }
}

constexpr int kCarryK = 16;

// Split-K tiled carry: block (column tile, row tile, direction * split) computes a TILE x TILE tile of partial
// sums over its K range; 256 threads with (TILE/16)^2 outputs each (rows ty + 16 i, columns tx + 16 j). The next
// chunk's global loads are issued before this chunk's products (each block's K loop is latency-bound).
template <int TILE>
__global__ void __launch_bounds__(256) BwdCarryTiledKernel(BwdParams p, int s, float* partial, int k_per_split) {
  constexpr int kOut = TILE / 16;              // outputs per thread along each side
  constexpr int kPer = TILE * kCarryK / 256;   // loads per thread per chunk (of each operand)
  constexpr int kThreadsPerRow = kCarryK / kPer;
  const int d = blockIdx.z % p.D, split = blockIdx.z / p.D;
  const int r_base = blockIdx.x * TILE, b_base = blockIdx.y * TILE;
  const int k_begin = split * k_per_split, k_end = min(p.GH, k_begin + k_per_split);
  __shared__ float a_s[kCarryK][TILE + 4];
  __shared__ float u_s[kCarryK][TILE + 4];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int lrow = tid / kThreadsPerRow, lk = (tid % kThreadsPerRow) * kPer;
  const float* a_row = nullptr;
  const float* res_row = nullptr;
  {
    const int b = b_base + lrow;
    if (b < p.B) {
      const int len = LenOf(p, b);
      if (s < len) {
        const int t = PosOf(p, d, len, s);
        a_row = DxRow(p, d, b, t);
        res_row = ResRow(p, d, b, t);
      }
    }
  }
  const int r_load = r_base + lrow;
  const float* u_row = r_load < p.R ? p.U + (static_cast<int64_t>(d) * p.R + r_load) * p.GH : nullptr;
  float av[kPer], uv[kPer];
  auto load = [&](int k0) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int k = k0 + lk + i;
      av[i] = 0.f;
      uv[i] = 0.f;
      if (k < k_end) {
        if (a_row) {
          av[i] = a_row[k];
          if (!p.lstm && k >= 2 * p.H) av[i] *= res_row[k - p.H];
        }
        if (u_row) uv[i] = __ldg(u_row + k);
      }
    }
  };
  float acc[kOut][kOut] = {};
  load(k_begin);
  for (int k0 = k_begin; k0 < k_end; k0 += kCarryK) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      a_s[lk + i][lrow] = av[i];
      u_s[lk + i][lrow] = uv[i];
    }
    __syncthreads();
    if (k0 + kCarryK < k_end) load(k0 + kCarryK);
#pragma unroll
    for (int kk = 0; kk < kCarryK; ++kk) {
      float ar[kOut], ur[kOut];
#pragma unroll
      for (int i = 0; i < kOut; ++i) {
        ar[i] = a_s[kk][ty + 16 * i];
        ur[i] = u_s[kk][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < kOut; ++i)
#pragma unroll
        for (int j = 0; j < kOut; ++j) acc[i][j] = fmaf(ar[i], ur[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* out = partial + (static_cast<int64_t>(split) * p.D + d) * p.B * p.R;
#pragma unroll
  for (int i = 0; i < kOut; ++i) {
    const int b = b_base + ty + 16 * i;
    if (b >= p.B) continue;
#pragma unroll
    for (int j = 0; j < kOut; ++j) {
      const int r = r_base + tx + 16 * j;
      if (r < p.R) out[static_cast<int64_t>(b) * p.R + r] = acc[i][j];
    }
  }
}

// Sums the splits in order, adds the GRU's dh * z, writes dh_carry for the rows inside their sequence.
__global__ void BwdCarryReduceKernel(BwdParams p, int s, const float* partial, int splits) {
  const int d = blockIdx.y;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(p.B) * p.R) return;
  const int b = static_cast<int>(idx / p.R), r = static_cast<int>(idx % p.R);
  const int len = LenOf(p, b);
  if (s >= len) return;
  float v = 0.f;
  const int64_t stride = static_cast<int64_t>(p.D) * p.B * p.R;
  const float* src = partial + static_cast<int64_t>(d) * p.B * p.R + idx;
  for (int sp = 0; sp < splits; ++sp) v += src[sp * stride];
  const int64_t hi = static_cast<int64_t>(d) * p.B * p.R + idx;
  if (!p.lstm) v = fmaf(p.dh_tot[hi], ResRow(p, d, b, PosOf(p, d, len, s))[r], v);
  p.dh_carry[hi] = v;
}

// Tile of the tiled carry: 32 for narrow layers (more blocks), else 64 (more reuse per shared-memory read).
int CarryTile(int64_t R) { return R < 256 ? 32 : 64; }
// Splits of the tiled carry's K so that the grid has about 256 blocks (2 per SM on a 132-SM part), each block
// keeping at least 64 of K (4 chunks).
int CarrySplits(int64_t B, int64_t R, int64_t D, int64_t GH) {
  const int64_t tile = CarryTile(R);
  const int64_t tiles = ((R + tile - 1) / tile) * ((B + tile - 1) / tile) * D;
  const int64_t splits = (256 + tiles - 1) / tiles;
  const int64_t max_splits = std::max<int64_t>(1, GH / 64);
  return static_cast<int>(std::min(splits, max_splits));
}
constexpr int kSmallBatch = 8;

// d_x_proj is zero at every position past a length (no step ran there).
__global__ void BwdZeroPastLengthKernel(BwdParams p) {
  const int b = static_cast<int>(blockIdx.x / p.T), t = static_cast<int>(blockIdx.x % p.T);
  if (t < LenOf(p, b)) return;
  const int64_t width = static_cast<int64_t>(p.D) * p.GH;
  float* row = p.d_x + RowIndex(p, b, t) * width;
  for (int64_t k = threadIdx.x; k < width; k += blockDim.x) row[k] = 0.f;
}

// ---- weight gradients: C[d][m][k] = sum over valid positions n of A(n, m) * Bv(n, k) --------------------------

enum AKind { kAHPrev = 0, kAProjM = 1 };
enum BKind { kBDx = 0, kBGruDhu = 1, kBDr = 2 };

constexpr int kTileM = 128, kTileK = 128, kTileN = 8;

// A(n, m): h_{t-1}[m] (kAHPrev) or m = o * tanh(clip(c)) (kAProjM, the projection's input).
template <int kA>
__device__ __forceinline__ void LoadA4(const BwdParams& p, int d, int b, int t, int len, int m0, int M, float* v) {
  if (kA == kAHPrev) {
    const float* hp = HPrev(p, d, b, len, t);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = (hp && m0 + i < M) ? hp[m0 + i] : 0.f;
  } else {
    const float* res = ResRow(p, d, b, t);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = m0 + i;
      v[i] = m < M ? res[3 * p.H + m] * tanhf(ClipF(res[4 * p.H + m], p.cell_clip)) : 0.f;
    }
  }
}

// Bv(n, k): d_x_proj (LSTM), the GRU's d(h_prev @ U), or dr (projection).
template <int kB>
__device__ __forceinline__ void LoadB4(const BwdParams& p, int d, int b, int t, int k0, int K, float* v) {
  if (kB == kBDr) {
    const float* dr = p.dr_all + ((static_cast<int64_t>(d) * p.B + b) * p.T + t) * p.P;
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = k0 + i < K ? dr[k0 + i] : 0.f;
  } else {
    const float* dx = DxRow(p, d, b, t);
    const float* res = ResRow(p, d, b, t);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int k = k0 + i;
      float x = k < K ? dx[k] : 0.f;
      if (kB == kBGruDhu && k < K && k >= 2 * p.H) x *= res[k - p.H];  // da_n * r
      v[i] = x;
    }
  }
}

// 128 x 128 output tile per block, 256 threads with 8 x 8 outputs each (rows ty*4 + {0..3} and 64 + ty*4 + ..,
// columns likewise with tx: 16-byte shared-memory reads), 8 positions per pass; the next pass's global loads
// are issued before this pass's products (the gathers are latency-bound). Positions past a length load zeros.
// With more than one split (small M x K, many positions) each split sums its own range of positions into
// `out` + split * D * M * K, and BwdSumSplitsKernel adds the splits in order.
template <int kA, int kB>
__global__ void __launch_bounds__(256) BwdWeightGradKernel(BwdParams p, float* out, int M, int K,
                                                           int64_t n_per_split) {
  const int d = blockIdx.z % p.D, split = blockIdx.z / p.D;
  const int m_base = blockIdx.y * kTileM, k_base = blockIdx.x * kTileK;
  __shared__ __align__(16) float a_s[kTileN][kTileM];
  __shared__ __align__(16) float b_s[kTileN][kTileK];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  // Loader: thread tid fills position row (tid >> 5) of the pass, 4 consecutive columns ((tid & 31) * 4).
  const int ln = tid >> 5, lc = (tid & 31) * 4;
  float acc[8][8] = {};
  const int64_t n_begin = split * n_per_split;
  const int64_t all = static_cast<int64_t>(p.B) * p.T;
  const int64_t total = all < n_begin + n_per_split ? all : n_begin + n_per_split;
  float av[4], bv[4];
  auto load = [&](int64_t n0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) av[i] = bv[i] = 0.f;
    const int64_t n = n0 + ln;
    if (n < total) {
      const int b = static_cast<int>(n / p.T), t = static_cast<int>(n % p.T);
      const int len = LenOf(p, b);
      if (t < len) {
        LoadA4<kA>(p, d, b, t, len, m_base + lc, M, av);
        LoadB4<kB>(p, d, b, t, k_base + lc, K, bv);
      }
    }
  };
  load(n_begin);
  for (int64_t n0 = n_begin; n0 < total; n0 += kTileN) {
    *reinterpret_cast<float4*>(&a_s[ln][lc]) = make_float4(av[0], av[1], av[2], av[3]);
    *reinterpret_cast<float4*>(&b_s[ln][lc]) = make_float4(bv[0], bv[1], bv[2], bv[3]);
    __syncthreads();
    if (n0 + kTileN < total) load(n0 + kTileN);
#pragma unroll
    for (int nn = 0; nn < kTileN; ++nn) {
      const float4 a_lo = *reinterpret_cast<const float4*>(&a_s[nn][ty * 4]);
      const float4 a_hi = *reinterpret_cast<const float4*>(&a_s[nn][64 + ty * 4]);
      const float4 b_lo = *reinterpret_cast<const float4*>(&b_s[nn][tx * 4]);
      const float4 b_hi = *reinterpret_cast<const float4*>(&b_s[nn][64 + tx * 4]);
      const float ar[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
      const float br[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* o = out + (static_cast<int64_t>(split) * p.D + d) * M * K;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m_base + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int k = k_base + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
      if (k < K) o[static_cast<int64_t>(m) * K + k] = acc[i][j];
    }
  }
}

// out[i] = sum over splits of partial[split][i], in split order (deterministic).
__global__ void BwdSumSplitsKernel(const float* partial, float* out, int64_t n, int splits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = 0.f;
  for (int sp = 0; sp < splits; ++sp) v += partial[sp * n + i];
  out[i] = v;
}

// Position splits of a weight-gradient product of M x K per direction: about 256 blocks, >= 256 positions each.
int WeightGradSplits(int64_t M, int64_t K, int64_t D, int64_t positions) {
  const int64_t tiles = ((M + kTileM - 1) / kTileM) * ((K + kTileK - 1) / kTileK) * D;
  const int64_t splits = (256 + tiles - 1) / tiles;
  return static_cast<int>(std::max<int64_t>(1, std::min(splits, positions / 256)));
}

// GRU recurrent bias: d_rb[d][k] = sum over valid positions of d(h_prev @ U)[k] ([da_z, da_r, da_n * r]).
// Block (column tile, direction, position split): 8 lanes of positions for each of 32 columns, each lane's
// positions in order, then the lanes in order (deterministic); 4 loads in flight a lane. (A thread per column
// walking every position one load at a time took ~0.2 ms at B=16, T=100: 1600 load latencies in a row.) With
// more than one split, each writes out + split * D * GH and BwdSumSplitsKernel adds them in order.
constexpr int kBiasCols = 32, kBiasLanes = 8;
__device__ __forceinline__ float GruBiasTerm(const BwdParams& p, int d, int64_t n, int k) {
  const int b = static_cast<int>(n / p.T), t = static_cast<int>(n % p.T);
  if (t >= LenOf(p, b)) return 0.f;
  float v = DxRow(p, d, b, t)[k];
  if (k >= 2 * p.H) v *= ResRow(p, d, b, t)[k - p.H];
  return v;
}
__global__ void __launch_bounds__(kBiasCols * kBiasLanes) BwdGruBiasKernel(BwdParams p, float* out,
                                                                          int64_t n_per_split) {
  const int d = blockIdx.y, split = blockIdx.z;
  const int c = threadIdx.x % kBiasCols, lane = threadIdx.x / kBiasCols;
  const int k = blockIdx.x * kBiasCols + c;
  __shared__ float red_s[kBiasLanes][kBiasCols];
  const int64_t all = static_cast<int64_t>(p.B) * p.T;
  const int64_t n_begin = split * n_per_split;
  const int64_t n_end = all < n_begin + n_per_split ? all : n_begin + n_per_split;
  float acc = 0.f;
  if (k < p.GH) {
    int64_t n = n_begin + lane;
    for (; n + 3 * kBiasLanes < n_end; n += 4 * kBiasLanes) {
      float v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = GruBiasTerm(p, d, n + u * kBiasLanes, k);
#pragma unroll
      for (int u = 0; u < 4; ++u) acc += v[u];
    }
    for (; n < n_end; n += kBiasLanes) acc += GruBiasTerm(p, d, n, k);
  }
  red_s[lane][c] = acc;
  __syncthreads();
  if (lane == 0 && k < p.GH) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < kBiasLanes; ++i) v += red_s[i][c];
    out[(static_cast<int64_t>(split) * p.D + d) * p.GH + k] = v;
  }
}
// Position splits of the GRU bias reduction: about 256 blocks, >= 64 positions each.
int GruBiasSplits(int64_t GH, int64_t D, int64_t positions) {
  const int64_t tiles = (GH + kBiasCols - 1) / kBiasCols * D;
  return static_cast<int>(std::max<int64_t>(1, std::min((256 + tiles - 1) / tiles, positions / 64)));
}

struct BwdLayout {
  size_t dh_tot = 0, dr_all = 0, partial = 0, wg_partial = 0, total = 0;
  int carry_splits = 0;  // 0: the small-batch carry kernel; else the tiled carry with this many K splits
  int u_splits = 1, p_splits = 1;  // position splits of the dU and dP products
  size_t rb_partial = 0;           // the GRU bias's partial sums (rb_splits > 1)
  int rb_splits = 1;
};
BwdLayout LayoutFor(const RnnShape& s) {
  const size_t D = s.num_dirs(), B = s.batch, T = s.max_time, H = s.num_units, P = s.num_proj;
  const size_t R = s.recurrent_width(), GH = s.num_gates() * H;
  BwdLayout l;
  l.carry_splits = B > static_cast<size_t>(kSmallBatch) ? CarrySplits(B, R, D, GH) : 0;
  size_t off = 0;
  l.dh_tot = off;
  off += Align256(s.cell == CellType::kGru ? D * B * H * sizeof(float) : 0);
  l.dr_all = off;
  off += Align256(P > 0 ? D * B * T * P * sizeof(float) : 0);
  l.partial = off;
  off += Align256(static_cast<size_t>(l.carry_splits) * D * B * R * sizeof(float));
  l.u_splits = WeightGradSplits(R, GH, D, B * T);
  l.p_splits = P > 0 ? WeightGradSplits(H, P, D, B * T) : 1;
  const size_t wg_floats = std::max(l.u_splits > 1 ? l.u_splits * D * R * GH : 0,
                                    l.p_splits > 1 ? l.p_splits * D * H * P : 0);
  l.wg_partial = off;
  off += Align256(wg_floats * sizeof(float));
  l.rb_splits = s.cell == CellType::kGru ? GruBiasSplits(GH, D, B * T) : 1;
  l.rb_partial = off;
  off += Align256(l.rb_splits > 1 ? l.rb_splits * D * GH * sizeof(float) : 0);
  l.total = off;
  return l;
}

int64_t CeilDivL(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <int NB>
cudaError_t LaunchCarry(const BwdParams& p, int s, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(CeilDivL(p.R, 8)), static_cast<unsigned>(CeilDivL(p.B, NB)), p.D);
  if (vec) {
    BwdCarryKernel<NB, true><<<grid, 256, 0, stream>>>(p, s);
  } else {
    BwdCarryKernel<NB, false><<<grid, 256, 0, stream>>>(p, s);
  }
  return cudaGetLastError();
}

// Whether the persistent small-H kernel runs this backward: no projection, U^T in one block's shared memory, and
// few enough waves of blocks (each wave runs every step once more; the per-step launches cost ~5-8 us a step
// against ~1-2 us for a step of the persistent kernel, so up to 4 waves it is ahead). Device facts are cached per
// device; the kernel's dynamic shared-memory cap is raised to the device's opt-in maximum once (never lowered:
// concurrent calls never see a smaller cap than their own launch needs).
using BwdSmallFn = void (*)(BwdParams);
constexpr int kBwdSmallRegChoices[] = {0, 8, 16, 32};
constexpr int kBwdSmallRegCount = 4;
BwdSmallFn BwdSmallKernelFor(bool lstm, int reg_rows) {
  static const BwdSmallFn table[2][kBwdSmallRegCount] = {
      {BwdSmallKernel<false, 0>, BwdSmallKernel<false, 8>, BwdSmallKernel<false, 16>, BwdSmallKernel<false, 32>},
      {BwdSmallKernel<true, 0>, BwdSmallKernel<true, 8>, BwdSmallKernel<true, 16>, BwdSmallKernel<true, 32>}};
  for (int i = 0; i < kBwdSmallRegCount; ++i)
    if (kBwdSmallRegChoices[i] == reg_rows) return table[lstm ? 1 : 0][i];
  return nullptr;
}

// Whether the persistent small-H kernel runs this backward (*fn: which one; null for the per-step kernels): no
// projection, U^T in one block's shared memory, and few enough waves of blocks (each wave runs every step once
// more; the per-step launches cost ~5-8 us a step against ~1-2 us for a step of the persistent kernel, so up to 4
// waves it is ahead). Device facts are cached per device; each kernel's dynamic shared-memory cap is raised to the
// device's opt-in maximum once (never lowered: concurrent calls never see a smaller cap than their own launch
// needs).
const char* PlanBwdSmall(const RnnShape& s, const CudaBackwardTuning* tuning, BwdSmallFn* use) {
  *use = nullptr;
  const int forced = tuning ? tuning->persistent : -1;
  if (forced == 0) return nullptr;
  const bool lstm = s.cell == CellType::kLstm;
  const int64_t H = s.num_units, R = s.recurrent_width(), GH = s.num_gates() * H, D = s.num_dirs();
  const BwdSmallGeom geom = BwdSmallGeometry(static_cast<int>(R), static_cast<int>(GH));
  const size_t smem = sizeof(float) * geom.floats;
  const int want_regs = tuning ? tuning->small_reg_rows : -1;
  const int reg_rows = want_regs < 0 ? BwdSmallAutoRegRows(geom) : want_regs;
  const BwdSmallFn fn = BwdSmallKernelFor(lstm, reg_rows);
  if (fn == nullptr) return "fused_rnn CUDA backward: the persistent kernel's small_reg_rows must be -1, 0, 8, 16 or 32";
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return BwdCudaMessage("cudaGetDevice", e);
  struct Facts { int optin = 0, sms = 0; bool raised[2][kBwdSmallRegCount] = {}; };
  static std::mutex& mu = *new std::mutex;  // leaked: see fused_rnn_cuda.cu's caches
  static std::map<int, Facts>& facts = *new std::map<int, Facts>;
  std::lock_guard<std::mutex> lock(mu);
  Facts& f = facts[device];
  if (f.sms == 0) {
    if ((e = cudaDeviceGetAttribute(&f.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) {
      f.sms = 0;
      return BwdCudaMessage("cudaDeviceGetAttribute", e);
    }
  }
  const bool fits = s.num_proj == 0 && H <= kBwdSmallThreads && smem <= static_cast<size_t>(f.optin);
  if (!fits) {
    return forced == 1 ? "fused_rnn CUDA backward: the persistent small-H kernel cannot run this shape (a "
                         "projection, or U larger than one block's shared memory)"
                       : nullptr;
  }
  // Blocks per SM of a variant, its shared-memory cap raised first.
  auto blocks_per_sm = [&](int rows, int* per_sm) -> const char* {
    int ri = 0;
    while (kBwdSmallRegChoices[ri] != rows) ++ri;
    const void* k = reinterpret_cast<const void*>(BwdSmallKernelFor(lstm, rows));
    cudaError_t err;
    if (!f.raised[lstm ? 1 : 0][ri]) {
      if ((err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, f.optin)) != cudaSuccess)
        return BwdCudaMessage("cudaFuncSetAttribute", err);
      f.raised[lstm ? 1 : 0][ri] = true;
    }
    if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, k, kBwdSmallThreads, smem)) != cudaSuccess)
      return BwdCudaMessage("cudaOccupancyMaxActiveBlocksPerMultiprocessor", err);
    return nullptr;
  };
  int per_sm = 0;
  if (const char* err = blocks_per_sm(reg_rows, &per_sm)) return err;
  BwdSmallFn chosen = fn;
  if (want_regs < 0 && reg_rows > 0) {
    // The register rows cost occupancy (up to ~240 registers a thread: one block per SM). Where shared memory
    // would let more blocks share an SM and the grid needs more than one wave of the register variant, the
    // shared-memory variant runs fewer waves.
    int per_sm0 = 0;
    if (const char* err = blocks_per_sm(0, &per_sm0)) return err;
    const int64_t blocks = D * s.batch;
    if (per_sm > 0 && CeilDivL(blocks, static_cast<int64_t>(per_sm) * f.sms) >
                          CeilDivL(blocks, static_cast<int64_t>(per_sm0) * f.sms)) {
      chosen = BwdSmallKernelFor(lstm, 0);
      per_sm = per_sm0;
    }
  }
  if (per_sm < 1) {
    return forced == 1 ? "fused_rnn CUDA backward: the persistent small-H kernel does not fit an SM" : nullptr;
  }
  const int64_t waves = CeilDivL(D * s.batch, static_cast<int64_t>(per_sm) * f.sms);
  if (forced == 1 || waves <= 4) *use = chosen;
  return nullptr;
}

}  // namespace

size_t CudaBackwardWorkspaceBytes(const RnnShape& shape) {
  if (CheckBwdShape(shape) != nullptr) return 0;
  return LayoutFor(shape).total;
}

const char* CudaBackward(const RnnShape& s, const RnnBackwardArgs& a, void* workspace, size_t workspace_bytes,
                         void* stream_ptr, const CudaBackwardTuning* tuning) {
  if (const char* err = CheckBwdShape(s)) return err;
  const bool lstm = s.cell == CellType::kLstm;
  const int64_t T = s.max_time, B = s.batch, H = s.num_units, P = s.num_proj, R = s.recurrent_width();
  const int64_t D = s.num_dirs(), G = s.num_gates(), GH = G * H;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t e;
  auto zero = [&](float* ptr, int64_t n) -> cudaError_t {
    return (ptr && n > 0) ? cudaMemsetAsync(ptr, 0, sizeof(float) * n, stream) : cudaSuccess;
  };
  // State gradients start as the gradients of the final states (zero when not given) and are carried in place.
  auto start_carry = [&](float* dst, const float* src, int64_t n) -> cudaError_t {
    if (!dst || n <= 0) return cudaSuccess;
    if (!src) return cudaMemsetAsync(dst, 0, sizeof(float) * n, stream);
    return cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyDeviceToDevice, stream);
  };
  // (An empty batch has empty state gradients: their pointers may then be null.)
  if ((B > 0 && (!a.d_initial_h || (lstm && !a.d_initial_c))) || !a.d_recurrent_kernel ||
      (P > 0 && !a.d_projection_kernel))
    return "fused_rnn CUDA backward: a gradient output pointer is null";
  BwdSmallFn small_fn = nullptr;  // decided before anything is enqueued: a forced plan that cannot run changes nothing
  if (const char* err = PlanBwdSmall(s, tuning, &small_fn)) return err;
  const bool small = small_fn != nullptr;
  if ((e = start_carry(a.d_initial_h, a.d_final_h, D * B * R)) != cudaSuccess) return BwdCudaMessage("copy d_final_h", e);
  if (lstm && (e = start_carry(a.d_initial_c, a.d_final_c, D * B * H)) != cudaSuccess)
    return BwdCudaMessage("copy d_final_c", e);
  if (B == 0 || T == 0) {
    // No step ran: zero weight gradients, the state gradients pass straight through (done above).
    if ((e = zero(a.d_recurrent_kernel, D * R * GH)) != cudaSuccess ||
        (!lstm && (e = zero(a.d_recurrent_bias, D * GH)) != cudaSuccess) ||
        (P > 0 && (e = zero(a.d_projection_kernel, D * H * P)) != cudaSuccess))
      return BwdCudaMessage("cudaMemsetAsync", e);
    return nullptr;
  }
  if (!a.recurrent_kernel || (P > 0 && !a.projection_kernel) || !a.output || !a.reserve || !a.d_output ||
      !a.d_x_proj)
    return "fused_rnn CUDA backward: an input pointer is null";
  const BwdLayout l = LayoutFor(s);
  if (l.total > 0) {
    if (!workspace || workspace_bytes < l.total) {
      std::snprintf(g_bwd_message, sizeof(g_bwd_message),
                    "fused_rnn CUDA backward: workspace too small (need %zu bytes)", l.total);
      return g_bwd_message;
    }
    if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
      return "fused_rnn CUDA backward: workspace must be 256-byte aligned";
  }
  char* ws = static_cast<char*>(workspace);
  BwdParams p;
  p.T = static_cast<int>(T); p.B = static_cast<int>(B); p.H = static_cast<int>(H); p.P = static_cast<int>(P);
  p.R = static_cast<int>(R); p.G = static_cast<int>(G); p.D = static_cast<int>(D); p.GH = static_cast<int>(GH);
  p.F = ReserveWidth(s);
  p.time_major = s.time_major;
  p.lstm = lstm;
  p.reverse_mask = s.direction == Direction::kReverse ? 1 : (s.direction == Direction::kBidirectional ? 2 : 0);
  p.cell_clip = lstm ? s.cell_clip : 0.f;
  p.proj_clip = P > 0 ? s.proj_clip : 0.f;
  p.lengths = a.sequence_lengths;
  p.U = a.recurrent_kernel;
  p.Pk = P > 0 ? a.projection_kernel : nullptr;
  p.h0 = a.initial_h;
  p.c0 = lstm ? a.initial_c : nullptr;
  p.output = a.output;
  p.reserve = a.reserve;
  p.d_output = a.d_output;
  p.d_x = a.d_x_proj;
  p.dh_carry = a.d_initial_h;
  p.dc_carry = lstm ? a.d_initial_c : nullptr;
  p.dh_tot = lstm ? nullptr : reinterpret_cast<float*>(ws + l.dh_tot);
  p.dr_all = P > 0 ? reinterpret_cast<float*>(ws + l.dr_all) : nullptr;

  BwdZeroPastLengthKernel<<<static_cast<unsigned>(B * T), 256, 0, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return BwdCudaMessage("zero kernel launch", e);
  // 16-byte loads in the small-batch carry: rows of d_x_proj, U and (GRU) the reserve must be 16-byte aligned.
  auto aligned16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  const bool vec = GH % 4 == 0 && (D * GH) % 4 == 0 && aligned16(a.d_x_proj) && aligned16(a.recurrent_kernel) &&
                   (lstm || (H % 4 == 0 && p.F % 4 == 0 && aligned16(a.reserve)));
  const int nb = B >= 8 ? 8 : (B >= 4 ? 4 : (B >= 2 ? 2 : 1));
  const unsigned gate_blocks = static_cast<unsigned>(CeilDivL(B * H * (P > 0 ? 32 : 1), 256));
  float* partial = l.carry_splits > 0 ? reinterpret_cast<float*>(ws + l.partial) : nullptr;
  const int k_per_split = l.carry_splits > 0 ? static_cast<int>(CeilDivL(CeilDivL(GH, l.carry_splits), kCarryK) * kCarryK) : 0;
  const int tile = CarryTile(R);
  const dim3 tiled_grid(static_cast<unsigned>(CeilDivL(R, tile)), static_cast<unsigned>(CeilDivL(B, tile)),
                        static_cast<unsigned>(D * std::max(1, l.carry_splits)));
  const unsigned reduce_blocks = static_cast<unsigned>(CeilDivL(B * R, 256));
  if (small) {
    const size_t smem = sizeof(float) * BwdSmallGeometry(p.R, p.GH).floats;
    small_fn<<<static_cast<unsigned>(D * B), kBwdSmallThreads, smem, stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return BwdCudaMessage("persistent backward launch", e);
  }
  for (int st = small ? -1 : p.T - 1; st >= 0; --st) {
    if (P > 0) {
      BwdPrepProjKernel<<<dim3(static_cast<unsigned>(CeilDivL(B * P, 256)), p.D), 256, 0, stream>>>(p, st);
      BwdGatesLstmKernel<true><<<dim3(gate_blocks, p.D), 256, 0, stream>>>(p, st);
    } else if (lstm) {
      BwdGatesLstmKernel<false><<<dim3(gate_blocks, p.D), 256, 0, stream>>>(p, st);
    } else {
      BwdGatesGruKernel<<<dim3(gate_blocks, p.D), 256, 0, stream>>>(p, st);
    }
    if ((e = cudaGetLastError()) != cudaSuccess) return BwdCudaMessage("gate kernel launch", e);
    if (l.carry_splits > 0) {
      if (tile == 32) {
        BwdCarryTiledKernel<32><<<tiled_grid, 256, 0, stream>>>(p, st, partial, k_per_split);
      } else {
        BwdCarryTiledKernel<64><<<tiled_grid, 256, 0, stream>>>(p, st, partial, k_per_split);
      }
      BwdCarryReduceKernel<<<dim3(reduce_blocks, p.D), 256, 0, stream>>>(p, st, partial, l.carry_splits);
      e = cudaGetLastError();
    } else {
      switch (nb) {
        case 8: e = LaunchCarry<8>(p, st, vec, stream); break;
        case 4: e = LaunchCarry<4>(p, st, vec, stream); break;
        case 2: e = LaunchCarry<2>(p, st, vec, stream); break;
        default: e = LaunchCarry<1>(p, st, vec, stream); break;
      }
    }
    if (e != cudaSuccess) return BwdCudaMessage("carry kernel launch", e);
  }
  // Weight gradients over every valid position.
  float* wg_partial = reinterpret_cast<float*>(ws + l.wg_partial);
  const int64_t positions = B * T;
  auto weight_grad = [&](auto kernel, float* out, int M, int K, int splits) -> cudaError_t {
    const int64_t per = CeilDivL(CeilDivL(positions, splits), kTileN) * kTileN;
    const dim3 grid(static_cast<unsigned>(CeilDivL(K, kTileK)), static_cast<unsigned>(CeilDivL(M, kTileM)),
                    static_cast<unsigned>(D * splits));
    kernel<<<grid, 256, 0, stream>>>(p, splits > 1 ? wg_partial : out, M, K, per);
    if (splits > 1) {
      const int64_t n = D * static_cast<int64_t>(M) * K;
      BwdSumSplitsKernel<<<static_cast<unsigned>(CeilDivL(n, 256)), 256, 0, stream>>>(wg_partial, out, n, splits);
    }
    return cudaGetLastError();
  };
  if (lstm) {
    e = weight_grad(BwdWeightGradKernel<kAHPrev, kBDx>, a.d_recurrent_kernel, p.R, p.GH, l.u_splits);
  } else {
    e = weight_grad(BwdWeightGradKernel<kAHPrev, kBGruDhu>, a.d_recurrent_kernel, p.R, p.GH, l.u_splits);
    if (e == cudaSuccess && a.d_recurrent_bias) {
      const int splits = l.rb_splits;
      float* rb_out = splits > 1 ? reinterpret_cast<float*>(ws + l.rb_partial) : a.d_recurrent_bias;
      const int64_t per = CeilDivL(positions, splits);
      BwdGruBiasKernel<<<dim3(static_cast<unsigned>(CeilDivL(GH, kBiasCols)), p.D, static_cast<unsigned>(splits)),
                         kBiasCols * kBiasLanes, 0, stream>>>(p, rb_out, per);
      if (splits > 1) {
        BwdSumSplitsKernel<<<static_cast<unsigned>(CeilDivL(D * GH, 256)), 256, 0, stream>>>(rb_out, a.d_recurrent_bias,
                                                                                          D * GH, splits);
      }
      e = cudaGetLastError();
    }
  }
  if (e == cudaSuccess && P > 0) {
    e = weight_grad(BwdWeightGradKernel<kAProjM, kBDr>, a.d_projection_kernel, p.H, p.P, l.p_splits);
  }
  if (e != cudaSuccess) return BwdCudaMessage("weight-gradient kernel launch", e);
  return nullptr;
}

}  // namespace fused_rnn
