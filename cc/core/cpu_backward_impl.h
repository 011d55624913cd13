// Backward kernels (backpropagation through time), written once over the SIMD abstraction like the forward step
// kernels and compiled per ISA. Include after cpu_kernels_impl.h (same per-ISA namespace).
//
// Per step, walking the steps backwards, for every batch row still inside its sequence:
//   dh      = d_output[t] + dh_carry                       (carry from step t+1, or d_final_h)
//   dr      = dh masked where the projection clip was active; dm = dr @ P^T      (projection)
//   LSTM:   dc = dc_carry + dm * o * (1 - tanh(c)^2), masked where the cell clip was active
//           da = [dc*g*i(1-i), dc*c_prev*f(1-f), dc*i*(1-g^2), dm*tanh(c)*o(1-o)];  dc_carry = dc * f
//   GRU:    da = [dh*(h_prev-n)*z(1-z), dan*hu_n*r(1-r), dan],  dan = dh*(1-z)*(1-n^2)
//           d(h_prev @ U + b) = [da_z, da_r, dan * r]
//   dh_carry = d(h_prev @ U) @ U^T  (+ dh * z for the GRU)
// da is the gradient of x_proj (written in place, it is also the left operand of the carry product). The
// weight gradients are left to WeightGrad over the h_{t-1}, m and dr records of every position.
#ifndef FUSED_RNN_ISA_NS
#error "include cpu_kernels_impl.h first"
#endif

#include <vector>

namespace fused_rnn {
namespace cpu {
namespace FUSED_RNN_ISA_NS {

struct BwdRow {
  bool active;
  int64_t pos;       // time position of this step
  int64_t pos_prev;  // time position of the previous step (valid when step > 0)
  int64_t n;         // record index b * T + pos
};
inline BwdRow BwdRowAt(const BwdCtx& c, int64_t b, int64_t step) {
  const int64_t len = c.lengths[b];
  BwdRow r;
  r.active = step < len;
  r.pos = r.active ? (c.reverse ? len - 1 - step : step) : 0;
  r.pos_prev = c.reverse ? r.pos + 1 : r.pos - 1;
  r.n = b * c.T + r.pos;
  return r;
}

inline const float* HPrevRow(const BwdCtx& c, int64_t b, int64_t step, const BwdRow& r) {
  return step == 0 ? c.initial_h + b * c.R : c.output + b * c.out_b_stride + r.pos_prev * c.out_t_stride;
}
inline float* DxRow(const BwdCtx& c, int64_t b, int64_t pos) { return c.d_x + b * c.x_b_stride + pos * c.x_t_stride; }

// Per active row of `step`, for recurrent columns [col0, col1): dh = d_output + carry and, with a projection,
// dr. Runs after the carry of those columns is final (the step after). (The h_{t-1} records of the weight
// gradient are transposed afterwards, in bulk: TransposeRows.)
inline void BwdPrepColumns(const BwdCtx& c, int64_t step, int64_t col0, int64_t col1) {
  const int64_t R = c.R;
  for (int64_t b = 0; b < c.B; ++b) {
    const BwdRow rs = BwdRowAt(c, b, step);
    if (!rs.active) continue;
    const float* d_out = c.d_output + b * c.out_b_stride + rs.pos * c.out_t_stride;
    const float* r_pre = c.P > 0 ? c.reserve + rs.n * c.reserve_features + 5 * c.H : nullptr;
    for (int64_t j = col0; j < col1; j += kW) {
      const int n = Valid(col1, j);
      V dh = Isa::Add(Isa::LoadN(d_out + j, n), Isa::LoadN(c.dh_carry + b * R + j, n));
      Isa::StoreN(c.dh_tot + b * R + j, dh, n);
      if (c.P > 0) {
        // clip_by_value passes the gradient where |r| <= clip (NaN compares false: passes too).
        if (c.proj_clip > 0.f) dh = Isa::Select(Isa::Set1(c.proj_clip), Isa::Abs(Isa::LoadN(r_pre + j, n)), Isa::Zero(), dh);
        Isa::StoreN(c.dr + rs.n * c.P + j, dh, n);
      }
    }
  }
}

// Stage 2, LSTM: for MR rows and unit block u, dm (from dr @ P^T or dh) and the gate gradients.
template <int MR>
inline void LstmBwdBlock(const BwdCtx& c, int64_t step, int64_t b0, int64_t u) {
  const int64_t H = c.H, F = c.reserve_features, N = c.B * c.T, j0 = u * kBlock;
  BwdRow rs[MR];
  V dm[MR][kNV];
  const float* dr_rows[MR];
  for (int m = 0; m < MR; ++m) {
    rs[m] = BwdRowAt(c, b0 + m, step);
    for (int v = 0; v < kNV; ++v) dm[m][v] = Isa::Zero();
    dr_rows[m] = c.P > 0 ? c.dr + rs[m].n * c.P : nullptr;
  }
  if (c.P > 0) PanelProduct<kNV, MR>(c.pt_packed + u * c.P * kBlock, c.P, dr_rows, dm);
  const V one = Isa::Set1(1.0f);
  for (int m = 0; m < MR; ++m) {
    if (!rs[m].active) continue;
    const int64_t b = b0 + m;
    const float* res = c.reserve + rs[m].n * F;
    const float* c_prev_src = step == 0 ? c.initial_c + b * H : c.reserve + (b * c.T + rs[m].pos_prev) * F + 4 * H;
    float* dx = DxRow(c, b, rs[m].pos);
    for (int v = 0; v < kNV; ++v) {
      const int64_t j = j0 + v * kW;
      const int n = Valid(H, j);
      if (n == 0) continue;
      const V dmv = c.P > 0 ? dm[m][v] : Isa::LoadN(c.dh_tot + b * c.R + j, n);
      const V ig = Isa::LoadN(res + j, n), fg = Isa::LoadN(res + H + j, n);
      const V gg = Isa::LoadN(res + 2 * H + j, n), og = Isa::LoadN(res + 3 * H + j, n);
      const V c_pre = Isa::LoadN(res + 4 * H + j, n);
      V c_prev = Isa::LoadN(c_prev_src + j, n);
      if (step > 0) c_prev = Clip(c_prev, c.cell_clip);
      const V tc = Tanh(Clip(c_pre, c.cell_clip));
      V dc = Isa::Fma(Isa::Mul(dmv, og), Isa::Sub(one, Isa::Mul(tc, tc)), Isa::LoadN(c.dc_carry + b * H + j, n));
      if (c.cell_clip > 0.f) dc = Isa::Select(Isa::Set1(c.cell_clip), Isa::Abs(c_pre), Isa::Zero(), dc);
      const V da_i = Isa::Mul(Isa::Mul(dc, gg), Isa::Mul(ig, Isa::Sub(one, ig)));
      const V da_f = Isa::Mul(Isa::Mul(dc, c_prev), Isa::Mul(fg, Isa::Sub(one, fg)));
      const V da_g = Isa::Mul(Isa::Mul(dc, ig), Isa::Sub(one, Isa::Mul(gg, gg)));
      const V da_o = Isa::Mul(Isa::Mul(dmv, tc), Isa::Mul(og, Isa::Sub(one, og)));
      Isa::StoreN(c.dc_carry + b * H + j, Isa::Mul(dc, fg), n);
      Isa::StoreN(dx + j, da_i, n);
      Isa::StoreN(dx + H + j, da_f, n);
      Isa::StoreN(dx + 2 * H + j, da_g, n);
      Isa::StoreN(dx + 3 * H + j, da_o, n);
      if (c.P > 0) {
        alignas(64) float m_lanes[kW];
        Isa::Store(m_lanes, Isa::Mul(og, tc));
        for (int l = 0; l < n; ++l) c.m_t[(j + l) * N + rs[m].n] = m_lanes[l];
      }
    }
  }
}

// Stage 2, GRU: gate gradients for MR rows and unit block u.
template <int MR>
inline void GruBwdBlock(const BwdCtx& c, int64_t step, int64_t b0, int64_t u) {
  const int64_t H = c.H, F = c.reserve_features, GH = 3 * H, j0 = u * kBlock;
  const V one = Isa::Set1(1.0f);
  for (int m = 0; m < MR; ++m) {
    const int64_t b = b0 + m;
    const BwdRow rs = BwdRowAt(c, b, step);
    if (!rs.active) continue;
    const float* res = c.reserve + rs.n * F;
    const float* h_prev = HPrevRow(c, b, step, rs);
    float* dx = DxRow(c, b, rs.pos);
    float* dhu = c.dhu + rs.n * GH;
    for (int v = 0; v < kNV; ++v) {
      const int64_t j = j0 + v * kW;
      const int n = Valid(H, j);
      if (n == 0) continue;
      const V zg = Isa::LoadN(res + j, n), rg = Isa::LoadN(res + H + j, n);
      const V ng = Isa::LoadN(res + 2 * H + j, n), hu_n = Isa::LoadN(res + 3 * H + j, n);
      const V dh = Isa::LoadN(c.dh_tot + b * H + j, n);
      const V da_z = Isa::Mul(Isa::Mul(dh, Isa::Sub(Isa::LoadN(h_prev + j, n), ng)), Isa::Mul(zg, Isa::Sub(one, zg)));
      const V da_n = Isa::Mul(Isa::Mul(dh, Isa::Sub(one, zg)), Isa::Sub(one, Isa::Mul(ng, ng)));
      const V da_r = Isa::Mul(Isa::Mul(da_n, hu_n), Isa::Mul(rg, Isa::Sub(one, rg)));
      Isa::StoreN(dx + j, da_z, n);
      Isa::StoreN(dx + H + j, da_r, n);
      Isa::StoreN(dx + 2 * H + j, da_n, n);
      Isa::StoreN(dhu + j, da_z, n);
      Isa::StoreN(dhu + H + j, da_r, n);
      Isa::StoreN(dhu + 2 * H + j, Isa::Mul(da_n, rg), n);
    }
  }
}

// Stage 3: dh_carry[:, blocks q .. q+NQ) = d(h_prev @ U) @ U^T (+ dh * z for the GRU) for MR rows. NQ column
// blocks at once (their U^T panels are consecutive, GH * 16 floats apart): one 16-column block gave each row only
// kNV accumulators, too few FMA chains to cover the FMA latency (measured: half the forward's FMA rate).
template <int MR, int NQ>
inline void CarryBlock(const BwdCtx& c, int64_t step, int64_t b0, int64_t q) {
  constexpr int NJ = NQ * kNV;
  const int64_t R = c.R, GH = c.G * c.H, p0 = q * kBlock, panel_stride = GH * kBlock;
  const bool gru = c.dhu != nullptr;
  BwdRow rs[MR];
  const float* rows[MR];
  V acc[MR][NJ];
  int nv[NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) nv[j] = Valid(R, p0 + j * kW);  // vector j covers columns p0 + j*kW ..
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const int64_t b = b0 + m;
    rs[m] = BwdRowAt(c, b, step);
    rows[m] = gru ? c.dhu + rs[m].n * GH : DxRow(c, b, rs[m].pos);
    const float* z = c.reserve + rs[m].n * c.reserve_features;
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      acc[m][j] = Isa::Zero();
      if (gru && rs[m].active && nv[j] > 0) {
        acc[m][j] = Isa::Mul(Isa::LoadN(c.dh_tot + b * R + p0 + j * kW, nv[j]), Isa::LoadN(z + p0 + j * kW, nv[j]));
      }
    }
  }
  const float* __restrict panel = c.ut_packed + q * panel_stride;
  if (MR == 1) {
    // One row: even and odd k in separate accumulators, for twice the independent FMA chains.
    V acc_odd[NJ];
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) acc_odd[j] = Isa::Zero();
    const float* __restrict h0 = rows[0];
    int64_t k = 0;
    for (; k + 1 < GH; k += 2) {
      const V he = Isa::Set1(h0[k]), ho = Isa::Set1(h0[k + 1]);
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) {
        const float* p = panel + (j / kNV) * panel_stride + k * kBlock + (j % kNV) * kW;
        acc[0][j] = Isa::Fma(he, Isa::Load(p), acc[0][j]);
        acc_odd[j] = Isa::Fma(ho, Isa::Load(p + kBlock), acc_odd[j]);
      }
    }
    if (k < GH) {
      const V he = Isa::Set1(h0[k]);
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) {
        acc[0][j] = Isa::Fma(he, Isa::Load(panel + (j / kNV) * panel_stride + k * kBlock + (j % kNV) * kW), acc[0][j]);
      }
    }
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Add(acc[0][j], acc_odd[j]);
  } else {
    for (int64_t k = 0; k < GH; ++k) {
      V w[NJ];
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) w[j] = Isa::Load(panel + (j / kNV) * panel_stride + k * kBlock + (j % kNV) * kW);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const V hm = Isa::Set1(rows[m][k]);
#pragma GCC unroll 16
        for (int j = 0; j < NJ; ++j) acc[m][j] = Isa::Fma(hm, w[j], acc[m][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    if (!rs[m].active) continue;
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      if (nv[j] > 0) Isa::StoreN(c.dh_carry + (b0 + m) * R + p0 + j * kW, acc[m][j], nv[j]);
    }
  }
}

// Column blocks per carry product: 4 vectors of accumulators per row on every ISA.
constexpr int kCarryBlocks = kNV >= 4 ? 1 : 4 / kNV;

template <int MR> struct LstmBwdOp { static void Run(const BwdCtx& c, int64_t s, int64_t b, int64_t u) { LstmBwdBlock<MR>(c, s, b, u); } };
template <int MR> struct GruBwdOp { static void Run(const BwdCtx& c, int64_t s, int64_t b, int64_t u) { GruBwdBlock<MR>(c, s, b, u); } };

template <template <int> class Block>
inline void BwdRowGroups(const BwdCtx& c, int64_t step, int64_t block_begin, int64_t block_end) {
  constexpr int kMR = Isa::kMaxRows;
  auto any_active = [&](int64_t first, int rows) {
    for (int m = 0; m < rows; ++m) if (step < c.lengths[first + m]) return true;
    return false;
  };
  for (int64_t u = block_begin; u < block_end; ++u) {
    int64_t b = 0;
    for (; b + kMR <= c.B; b += kMR) {
      if (any_active(b, kMR)) Block<kMR>::Run(c, step, b, u);
    }
    for (; b < c.B; ++b) {
      if (any_active(b, 1)) Block<1>::Run(c, step, b, u);
    }
  }
}

// dU[k0 .. k0+MR)[the G gate columns of unit block u] += sum over the na rows of h_prev[i][k] * g_rows[i][cols].
// kFull: the block's 16 units all exist (no lane masks or per-load branches in the loop over rows).
template <int MR, int G, bool kFull>
inline void DuTile(const BwdCtx& c, int64_t k0, int64_t u, int na, const float* const* h_rows,
                   const float* const* g_rows) {
  constexpr int NJ = G * kNV;
  const int64_t H = c.H, GH = G * H, j0 = u * kBlock;
  int64_t off[NJ];
  int nv[NJ];
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j) {
    off[j] = (j / kNV) * H + j0 + (j % kNV) * kW;
    nv[j] = kFull ? kW : Valid(H, j0 + (j % kNV) * kW);
  }
  V acc[MR][NJ];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) acc[m][j] = Isa::LoadN(c.d_u + (k0 + m) * GH + off[j], nv[j]);
  for (int i = 0; i < na; ++i) {
    const float* __restrict g = g_rows[i];
    V w[NJ];
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) w[j] = kFull ? Isa::Load(g + off[j]) : Isa::LoadN(g + off[j], nv[j]);
    const float* __restrict h = h_rows[i] + k0;
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const V a = Isa::Set1(h[m]);
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) acc[m][j] = Isa::Fma(a, w[j], acc[m][j]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) Isa::StoreN(c.d_u + (k0 + m) * GH + off[j], acc[m][j], nv[j]);
}

template <int G, bool kFull>
inline void DuColumns(const BwdCtx& c, int64_t u, int na, const float* const* h_rows, const float* const* g_rows) {
  constexpr int kMR = Isa::kMaxRows;
  int64_t k = 0;
  for (; k + kMR <= c.R; k += kMR) DuTile<kMR, G, kFull>(c, k, u, na, h_rows, g_rows);
  for (; k < c.R; ++k) DuTile<1, G, kFull>(c, k, u, na, h_rows, g_rows);
}

// Packed vector j of one tail block's G * r columns (cpu_internal.h, PackedTailBlocks: packed column g * r + i is
// src[g * H + i]), loaded lane range by lane range with masked loads (no buffer, no store-forwarding stalls), and
// the matching masked stores. Lanes past G * r come from `merge`.
inline V LoadPackedTail(V merge, const float* src, int64_t H, int64_t G, int64_t r, int j) {
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lo = std::max<int64_t>(g * r, j * kW), hi = std::min<int64_t>(g * r + r, j * kW + kW);
    // Lane l holds packed column j * kW + l: base is at or after src because H >= r.
    if (lo < hi) merge = Isa::LoadLanes(merge, src + g * (H - r) + j * kW, int(lo - j * kW), int(hi - j * kW));
  }
  return merge;
}
inline void StorePackedTail(float* dst, V v, int64_t H, int64_t G, int64_t r, int j) {
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lo = std::max<int64_t>(g * r, j * kW), hi = std::min<int64_t>(g * r + r, j * kW + kW);
    if (lo < hi) Isa::StoreLanes(dst + g * (H - r) + j * kW, v, int(lo - j * kW), int(hi - j * kW));
  }
}

// DuTile for the packed tail block: dU rows k0 .. k0+MR, their G * r tail columns held in NP vectors (the same
// additions in the same order as DuTile, on a quarter to three quarters of the vectors).
template <int MR, int NP>
inline void DuTailTile(const BwdCtx& c, int64_t k0, int64_t j0, int64_t r, int na, const float* const* h_rows,
                       const float* packed_rows) {
  constexpr int kRow = NP * kW;
  const int64_t H = c.H, G = c.G, GH = G * H;
  V acc[MR][NP];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) acc[m][j] = LoadPackedTail(Isa::Zero(), c.d_u + (k0 + m) * GH + j0, H, G, r, j);
  for (int i = 0; i < na; ++i) {
    V w[NP];
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) w[j] = Isa::Load(packed_rows + i * kRow + j * kW);
    const float* __restrict h = h_rows[i] + k0;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const V a = Isa::Set1(h[m]);
#pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) acc[m][j] = Isa::Fma(a, w[j], acc[m][j]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) StorePackedTail(c.d_u + (k0 + m) * GH + j0, acc[m][j], H, G, r, j);
}

// The tail block's dU columns: each gradient row's G * r tail values gathered once per step, then NP vectors per
// row instead of G * kNV mostly masked ones (H=100: one instead of four). More dU rows per tile than DuTile, for
// enough independent FMA chains with so few vectors per row.
template <int NP>
inline void DuTailColumns(const BwdCtx& c, int64_t u, int na, const float* const* h_rows,
                          const float* const* g_rows) {
  constexpr int kRow = NP * kW;
  constexpr int kRegs = kW >= 16 ? 32 : 16;
  constexpr int kMR = std::max(1, std::min(8, (kRegs - NP - 2) / NP));
  const int64_t j0 = u * kBlock, r = c.H - j0;
  alignas(64) float packed_rows[64 * kRow];  // na <= 64 rows (BwdWeightUpdate's chunk)
  for (int i = 0; i < na; ++i)
    for (int j = 0; j < NP; ++j)
      Isa::Store(packed_rows + i * kRow + j * kW, LoadPackedTail(Isa::Zero(), g_rows[i] + j0, c.H, c.G, r, j));
  int64_t k = 0;
  for (; k + kMR <= c.R; k += kMR) DuTailTile<kMR, NP>(c, k, j0, r, na, h_rows, packed_rows);
  for (; k < c.R; ++k) DuTailTile<1, NP>(c, k, j0, r, na, h_rows, packed_rows);
}

// The step's rank-B update of dU (and the GRU's recurrent-bias gradient) for the columns of unit blocks
// [u0, u1), right after their gradient rows were written (still in cache). Rows in ascending order, steps in
// the walk's order: the same sums whatever the number of threads.
inline void BwdWeightUpdate(const BwdCtx& c, int64_t step, int64_t u0, int64_t u1) {
  constexpr int kRowChunk = 64;
  const int64_t GH = c.G * c.H;
  const bool gru = c.dhu != nullptr;
  const float* h_rows[kRowChunk];
  const float* g_rows[kRowChunk];
  for (int64_t b0 = 0; b0 < c.B; b0 += kRowChunk) {
    int na = 0;
    for (int64_t b = b0; b < std::min<int64_t>(c.B, b0 + kRowChunk); ++b) {
      const BwdRow rs = BwdRowAt(c, b, step);
      if (!rs.active) continue;
      h_rows[na] = HPrevRow(c, b, step, rs);
      g_rows[na] = gru ? c.dhu + rs.n * GH : DxRow(c, b, rs.pos);
      ++na;
    }
    if (na == 0) continue;
    const int tail_blocks = PackedTailBlocks(c.H, c.G);
    for (int64_t u = u0; u < u1; ++u) {
      const bool full = (u + 1) * kBlock <= c.H;
      if (!full && tail_blocks == 1) {
        DuTailColumns<1 * kNV>(c, u, na, h_rows, g_rows);
      } else if (!full && tail_blocks == 2) {
        DuTailColumns<2 * kNV>(c, u, na, h_rows, g_rows);
      } else if (!full && tail_blocks == 3) {
        DuTailColumns<3 * kNV>(c, u, na, h_rows, g_rows);
      } else if (gru) {
        if (full) DuColumns<3, true>(c, u, na, h_rows, g_rows);
        else DuColumns<3, false>(c, u, na, h_rows, g_rows);
      } else {
        if (full) DuColumns<4, true>(c, u, na, h_rows, g_rows);
        else DuColumns<4, false>(c, u, na, h_rows, g_rows);
      }
      if (c.d_rec_bias != nullptr) {
        const int64_t j0 = u * kBlock;
        for (int64_t g = 0; g < c.G; ++g) {
          for (int v = 0; v < kNV; ++v) {
            const int n = Valid(c.H, j0 + v * kW);
            if (n == 0) continue;
            float* dst = c.d_rec_bias + g * c.H + j0 + v * kW;
            V sum = Isa::LoadN(dst, n);
            for (int i = 0; i < na; ++i) sum = Isa::Add(sum, Isa::LoadN(g_rows[i] + g * c.H + j0 + v * kW, n));
            Isa::StoreN(dst, sum, n);
          }
        }
      }
    }
  }
}

// A step's two stages, each over a range of 16-column blocks (threads split blocks; see the driver):
// gates over unit blocks [u0, u1); then carry over recurrent-column blocks [q0, q1), followed by the next
// (earlier) step's prep of the same columns.
void BwdGates(const BwdCtx& c, int64_t step, int64_t u0, int64_t u1) {
  if (c.dhu != nullptr || c.P == 0) {
    // Elementwise (no product): one row at a time over all its unit blocks, so each row's reserve record is
    // read front to back instead of one line of every row's record per block (core backward, biLSTM H=100
    // B=32, 1 thread: -5%).
    for (int64_t b = 0; b < c.B; ++b) {
      if (step >= c.lengths[b]) continue;
      for (int64_t u = u0; u < u1; ++u) {
        if (c.dhu != nullptr) GruBwdBlock<1>(c, step, b, u);
        else LstmBwdBlock<1>(c, step, b, u);
      }
    }
    if (c.d_u != nullptr) BwdWeightUpdate(c, step, u0, u1);
    return;
  }
  BwdRowGroups<LstmBwdOp>(c, step, u0, u1);
}

template <int NQ>
inline void CarryRowGroups(const BwdCtx& c, int64_t step, int64_t q) {
  constexpr int kMR = Isa::kMaxRows;
  int64_t b = 0;
  for (; b + kMR <= c.B; b += kMR) {
    bool any = false;
    for (int m = 0; m < kMR; ++m) any |= step < c.lengths[b + m];
    if (any) CarryBlock<kMR, NQ>(c, step, b, q);
  }
  for (; b < c.B; ++b) {
    if (step < c.lengths[b]) CarryBlock<1, NQ>(c, step, b, q);
  }
}

void BwdCarry(const BwdCtx& c, int64_t step, int64_t q0, int64_t q1) {
  int64_t q = q0;
  for (; q + kCarryBlocks <= q1; q += kCarryBlocks) CarryRowGroups<kCarryBlocks>(c, step, q);
  // The remainder in one call, not block by block: a single block has too few FMA chains (perf at biLSTM H=100
  // B=32, where 3 of 7 blocks are left over: 1.85x the time per block of the 4-block product).
  switch (q1 - q) {
    case 3: CarryRowGroups<3>(c, step, q); break;
    case 2: CarryRowGroups<2>(c, step, q); break;
    case 1: CarryRowGroups<1>(c, step, q); break;
    default: for (; q < q1; ++q) CarryRowGroups<1>(c, step, q);
  }
  if (step > 0) BwdPrepColumns(c, step - 1, q0 * kBlock, std::min(q1 * kBlock, c.R));
}

void BwdPrep(const BwdCtx& c, int64_t step, int64_t col0, int64_t col1) { BwdPrepColumns(c, step, col0, col1); }

// out_t[c * ld + n] = rows[n][c] for n in [n0, n1), c in [c0, c1): 16 x 16 tiles through a stack buffer, column
// blocks outer so that the 16 output rows being written stay on the same pages for 1024 positions. Writing the
// transposed records one scalar at a time during the sequential pass touched a new line and page per store and
// cost more than the weight-gradient product itself.
void TransposeRows(const float* const* rows, int64_t n0, int64_t n1, int64_t c0, int64_t c1, float* out_t,
                   int64_t ld) {
  alignas(64) float tile[kBlock][kBlock];
  for (int64_t cb = c0; cb < c1; cb += kBlock) {
    const int64_t nc = std::min<int64_t>(kBlock, c1 - cb);
    for (int64_t nb = n0; nb < n1; nb += kBlock) {
      const int64_t nn = std::min<int64_t>(kBlock, n1 - nb);
      for (int64_t i = 0; i < nn; ++i) {
        const float* src = rows[nb + i] + cb;
        for (int64_t l = 0; l < nc; ++l) tile[l][i] = src[l];
      }
      for (int64_t l = 0; l < nc; ++l) {
        float* dst = out_t + (cb + l) * ld + nb;
        for (int v = 0; v < kNV; ++v) {
          const int n = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kW, nn - v * kW)));
          if (n > 0) Isa::StoreN(dst + v * kW, Isa::LoadN(&tile[l][v * kW], n), n);
        }
      }
    }
  }
}

// ---- weight gradients: out = A^T-records times rows, a register tile of kWgRows x kWgVecs vectors ----------------
constexpr int kWgVecs = 4;
constexpr int kWgRows = kW == 8 ? 2 : 4;  // AVX2 has 16 registers: 2 x 4 accumulators + 4 loads
constexpr int64_t kWgStripe = kWgVecs * kW;

constexpr int64_t kWgChunk = 256;  // positions per packed chunk: 256 x 64 floats = 64 KiB, L2-resident

// One register tile over a packed chunk: out[m0.., k0..] (+)= sum_{n in chunk} a_t[m][n0 + n] * packed[n][..].
template <int MR>
inline void WeightGradTile(const WeightGradArgs& w, int64_t m0, int64_t k0, const float* __restrict packed,
                           int64_t n0, int64_t n1, bool accumulate) {
  // Every loop over the tile is fully unrolled: with a loop left rolled GCC keeps acc[][] in memory and stores
  // every accumulator to the stack on each iteration of n (measured: a third of the FMA rate).
  V acc[MR][kWgVecs];
  int nv[kWgVecs];
#pragma GCC unroll 8
  for (int j = 0; j < kWgVecs; ++j) nv[j] = Valid(w.K, k0 + j * kW);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < kWgVecs; ++j)
      acc[m][j] = accumulate && nv[j] > 0 ? Isa::LoadN(w.out + (m0 + m) * w.K + k0 + j * kW, nv[j]) : Isa::Zero();
  const float* a_rows[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) a_rows[m] = w.a_t + (m0 + m) * w.N + n0;
  for (int64_t n = 0; n < n1 - n0; ++n) {
    const float* row = packed + n * kWgStripe;
    V bv[kWgVecs];
#pragma GCC unroll 8
    for (int j = 0; j < kWgVecs; ++j) bv[j] = Isa::Load(row + j * kW);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const V a = Isa::Set1(a_rows[m][n]);
#pragma GCC unroll 8
      for (int j = 0; j < kWgVecs; ++j) acc[m][j] = Isa::Fma(a, bv[j], acc[m][j]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < kWgVecs; ++j)
      if (nv[j] > 0) Isa::StoreN(w.out + (m0 + m) * w.K + k0 + j * kW, acc[m][j], nv[j]);
}

// The rows are strided (a position's row of d_x_proj is D*G*H floats from the next): each stripe of columns is
// copied chunk by chunk into a contiguous, L2-resident buffer first, so the tiles stream it without TLB misses.
void WeightGrad(const WeightGradArgs& w, int64_t k_begin, int64_t k_end) {
  std::vector<float> packed_storage(kWgChunk * kWgStripe + kW);
  float* packed = packed_storage.data();
  const int64_t T = w.T > 0 ? w.T : 1;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kWgStripe) {
    V bias_sum[kWgVecs];
    for (int j = 0; j < kWgVecs; ++j) bias_sum[j] = Isa::Zero();
    bool first = true;
    for (int64_t n0 = 0; n0 < w.N || first; n0 += kWgChunk) {
      const int64_t n1 = std::min(w.N, n0 + kWgChunk);
      for (int64_t n = n0; n < n1; ++n) {
        const float* src = w.rows + (n / T) * w.b_stride + (n % T) * w.t_stride + k0;
        float* dst = packed + (n - n0) * kWgStripe;
        for (int j = 0; j < kWgVecs; ++j) {
          const int nv = Valid(w.K, k0 + j * kW);
          const V v = nv > 0 ? Isa::LoadN(src + j * kW, nv) : Isa::Zero();
          Isa::Store(dst + j * kW, v);
          if (w.bias_out != nullptr) bias_sum[j] = Isa::Add(bias_sum[j], v);
        }
      }
      int64_t m = 0;
      for (; m + kWgRows <= w.M; m += kWgRows) WeightGradTile<kWgRows>(w, m, k0, packed, n0, n1, !first);
      for (; m < w.M; ++m) WeightGradTile<1>(w, m, k0, packed, n0, n1, !first);
      first = false;
    }
    if (w.bias_out != nullptr) {
      for (int j = 0; j < kWgVecs; ++j) {
        const int nv = Valid(w.K, k0 + j * kW);
        if (nv > 0) Isa::StoreN(w.bias_out + k0 + j * kW, bias_sum[j], nv);
      }
    }
  }
}

}  // namespace FUSED_RNN_ISA_NS
}  // namespace cpu
}  // namespace fused_rnn
