// Step kernels, written once over a SIMD abstraction `Isa` (simd_<isa>.h) and compiled once per ISA with that
// ISA's flags. Everything here lives in a per-ISA namespace (FUSED_RNN_ISA_NS) so that no inline function is
// shared between TUs built with different flags (that would be an ODR violation picking one ISA for all).
//
// Per step and per 16-unit block the work is: acc[rows][gates] = x_proj + h_prev @ U, streamed over the packed
// panel of U (contiguous [R][G*16]), with every accumulator in registers; then the cell update straight from the
// registers. The panel of a block stays in the cache of the thread that owns the block for the whole sequence.
#ifndef FUSED_RNN_ISA_NS
#error "define FUSED_RNN_ISA_NS and include the ISA's simd header first"
#endif

#include <algorithm>
#include <type_traits>

#include "cc/core/cpu_internal.h"

namespace fused_rnn {
namespace cpu {
namespace FUSED_RNN_ISA_NS {

using V = Isa::V;
constexpr int kW = Isa::kWidth;
constexpr int kNV = static_cast<int>(kBlock) / kW;  // vectors per 16-unit block

// ---- activations (float32, a few ulp; checked against float64 in the tests) ----------------------------------
// They are a quarter of a forward step at B=32, H=100 (measured with them stubbed out: 3.4 -> 2.4 ms, 1 thread),
// so they avoid the division instruction (Isa::Recip) and build 2^n with Isa::Scale.

// x = n ln2 + r with integral n and |r| <= ln2/2 (ln2 split in two for an exact reduction).
inline V ReduceLn2(V x, V& n) {
  n = Isa::Round(Isa::Mul(x, Isa::Set1(1.44269504088896341f)));
  const V r = Isa::Fma(n, Isa::Set1(-0.693359375f), x);
  return Isa::Fma(n, Isa::Set1(2.12194440e-4f), r);
}

// (e^r - 1) / r on |r| <= ln2/2, Taylor to r^6 (e^r - 1 to r^7: relative error < 1e-8, no cancellation near 0).
inline V Expm1OverR(V r) {
  V p = Isa::Set1(1.0f / 5040.0f);
  p = Isa::Fma(p, r, Isa::Set1(1.0f / 720.0f));
  p = Isa::Fma(p, r, Isa::Set1(1.0f / 120.0f));
  p = Isa::Fma(p, r, Isa::Set1(1.0f / 24.0f));
  p = Isa::Fma(p, r, Isa::Set1(1.0f / 6.0f));
  p = Isa::Fma(p, r, Isa::Set1(0.5f));
  return Isa::Fma(p, r, Isa::Set1(1.0f));
}

inline V Exp(V x) {
  // Clamp with x as the second operand: min/max return the second operand for NaN, so NaN stays NaN. The
  // bounds keep 2^n normal for the ISAs that build it in the exponent field.
  x = Isa::Min(Isa::Set1(88.0f), Isa::Max(Isa::Set1(-87.0f), x));
  V n;
  const V r = ReduceLn2(x, n);
  return Isa::Scale(Isa::Fma(Expm1OverR(r), r, Isa::Set1(1.0f)), n);
}

inline V Sigmoid(V x) { return Isa::Recip(Isa::Add(Isa::Set1(1.0f), Exp(Isa::Sub(Isa::Zero(), x)))); }

// tanh|x| = e / (e + 2) with e = expm1(2|x|): one exponential, no cancellation near 0 (e is accurate relative to
// itself there), and no second branch for small |x|. 2|x| is clamped at 20, where tanh is 1 in float32.
inline V Tanh(V x) {
  const V ax = Isa::Abs(x);
  V n;
  const V r = ReduceLn2(Isa::Min(Isa::Set1(20.0f), Isa::Add(ax, ax)), n);
  const V one = Isa::Set1(1.0f), pow2n = Isa::Scale(one, n);
  const V e = Isa::Fma(Isa::Mul(pow2n, r), Expm1OverR(r), Isa::Sub(pow2n, one));  // 2^n (e^r - 1) + (2^n - 1)
  // A true division here, not Isa::Recip: with the estimate the mean error was 9.1e-9 against 5.8e-9 before
  // (6.2e-9 with the division), and the difference accumulated through a 2-layer ELMo past a 1e-5 export check.
  return Isa::CopySign(Isa::Div(e, Isa::Add(e, Isa::Set1(2.0f))), x);
}

inline void Activations(const float* x, int64_t n, float* sigmoid, float* tanh) {
  for (int64_t i = 0; i < n; i += kW) {
    const int m = n - i >= kW ? kW : static_cast<int>(n - i);
    const V v = Isa::LoadN(x + i, m);
    Isa::StoreN(sigmoid + i, Sigmoid(v), m);
    Isa::StoreN(tanh + i, Tanh(v), m);
  }
}

inline V Clip(V v, float clip) {
  return clip > 0.f ? Isa::Min(Isa::Set1(clip), Isa::Max(Isa::Set1(-clip), v)) : v;  // NaN propagates (see Exp)
}

inline int Valid(int64_t total, int64_t start) {  // lanes of a vector starting at `start` that lie below `total`
  const int64_t n = total - start;
  return n <= 0 ? 0 : (n >= kW ? kW : static_cast<int>(n));
}

#ifndef FUSED_RNN_PREFETCH_FLOATS
#define FUSED_RNN_PREFETCH_FLOATS 0
#endif
constexpr int kPrefetchFloats = FUSED_RNN_PREFETCH_FLOATS;

// ---- the register-blocked panel product ---------------------------------------------------------------------
// acc[m][j] += sum_k h_rows[m][k] * panel[k][j * kW .. +kW), for NJ = gates * kNV vectors per row.
// With one row, two independent accumulator sets (even/odd k) keep enough FMA chains in flight.
template <int NJ, int MR>
inline void PanelProduct(const float* __restrict panel, int64_t K, const float* const* h_rows, V (&acc)[MR][NJ]) {
  constexpr int kRowFloats = NJ * kW;
  if (MR == 1) {
    V acc_odd[NJ];
    for (int j = 0; j < NJ; ++j) acc_odd[j] = Isa::Zero();
    const float* __restrict h0 = h_rows[0];
    int64_t k = 0;
    for (; k + 1 < K; k += 2) {
      const V he = Isa::Set1(h0[k]);
      const V ho = Isa::Set1(h0[k + 1]);
      const float* pe = panel + k * kRowFloats;
      if (kPrefetchFloats > 0) {
        // One batch row streams the panel once per step (from L3 when the weights exceed L2): ask for the
        // lines kPrefetchFloats ahead, past this panel into the next one this thread reads.
#pragma GCC unroll 16
        for (int l = 0; l < 2 * kRowFloats; l += 16) __builtin_prefetch(pe + kPrefetchFloats + l, 0, 3);
      }
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) {
        acc[0][j] = Isa::Fma(he, Isa::Load(pe + j * kW), acc[0][j]);
        acc_odd[j] = Isa::Fma(ho, Isa::Load(pe + kRowFloats + j * kW), acc_odd[j]);
      }
    }
    if (k < K) {
      const V he = Isa::Set1(h0[k]);
      const float* pe = panel + k * kRowFloats;
      for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Fma(he, Isa::Load(pe + j * kW), acc[0][j]);
    }
    for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Add(acc[0][j], acc_odd[j]);
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const float* pk = panel + k * kRowFloats;
      V w[NJ];
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) w[j] = Isa::Load(pk + j * kW);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        const V hm = Isa::Set1(h_rows[m][k]);
#pragma GCC unroll 16
        for (int j = 0; j < NJ; ++j) acc[m][j] = Isa::Fma(hm, w[j], acc[m][j]);
      }
    }
  }
}

// The same product over an int8 panel: acc[m][j] += sum_k (h_rows[m][k] * inv_scale[k]) * float(panel[k][j]).
// Dequantizing the row through h (one scalar multiply per k) keeps the arithmetic float32 and the weights int8.
template <int NJ, int MR>
inline void PanelProductQ8(const int8_t* __restrict panel, const float* __restrict inv_scale, int64_t K,
                           const float* const* h_rows, V (&acc)[MR][NJ]) {
  constexpr int kRowBytes = NJ * kW;
  if (MR == 1) {
    V acc_odd[NJ];
    for (int j = 0; j < NJ; ++j) acc_odd[j] = Isa::Zero();
    const float* __restrict h0 = h_rows[0];
    int64_t k = 0;
    for (; k + 1 < K; k += 2) {
      const V he = Isa::Set1(h0[k] * inv_scale[k]);
      const V ho = Isa::Set1(h0[k + 1] * inv_scale[k + 1]);
      const int8_t* pe = panel + k * kRowBytes;
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) {
        acc[0][j] = Isa::Fma(he, Isa::LoadI8(pe + j * kW), acc[0][j]);
        acc_odd[j] = Isa::Fma(ho, Isa::LoadI8(pe + kRowBytes + j * kW), acc_odd[j]);
      }
    }
    if (k < K) {
      const V he = Isa::Set1(h0[k] * inv_scale[k]);
      const int8_t* pe = panel + k * kRowBytes;
      for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Fma(he, Isa::LoadI8(pe + j * kW), acc[0][j]);
    }
    for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Add(acc[0][j], acc_odd[j]);
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const int8_t* pk = panel + k * kRowBytes;
      V w[NJ];
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) w[j] = Isa::LoadI8(pk + j * kW);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        const V hm = Isa::Set1(h_rows[m][k] * inv_scale[k]);
#pragma GCC unroll 16
        for (int j = 0; j < NJ; ++j) acc[m][j] = Isa::Fma(hm, w[j], acc[m][j]);
      }
    }
  }
}

// The same product over a 16-bit panel (float16 or bfloat16 bits, converted exactly on load): half the bytes of
// the float panel, the same float32 arithmetic.
template <bool kBF16>
inline V Load16(const uint16_t* p) {
  if constexpr (kBF16) return Isa::LoadBF16(p);
  else return Isa::LoadF16(p);
}

template <int NJ, int MR, bool kBF16>
inline void PanelProduct16(const uint16_t* __restrict panel, int64_t K, const float* const* h_rows,
                           V (&acc)[MR][NJ]) {
  constexpr int kRowElems = NJ * kW;
  if (MR == 1) {
    V acc_odd[NJ];
    for (int j = 0; j < NJ; ++j) acc_odd[j] = Isa::Zero();
    const float* __restrict h0 = h_rows[0];
    int64_t k = 0;
    for (; k + 1 < K; k += 2) {
      const V he = Isa::Set1(h0[k]);
      const V ho = Isa::Set1(h0[k + 1]);
      const uint16_t* pe = panel + k * kRowElems;
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) {
        acc[0][j] = Isa::Fma(he, Load16<kBF16>(pe + j * kW), acc[0][j]);
        acc_odd[j] = Isa::Fma(ho, Load16<kBF16>(pe + kRowElems + j * kW), acc_odd[j]);
      }
    }
    if (k < K) {
      const V he = Isa::Set1(h0[k]);
      const uint16_t* pe = panel + k * kRowElems;
      for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Fma(he, Load16<kBF16>(pe + j * kW), acc[0][j]);
    }
    for (int j = 0; j < NJ; ++j) acc[0][j] = Isa::Add(acc[0][j], acc_odd[j]);
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const uint16_t* pk = panel + k * kRowElems;
      V w[NJ];
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) w[j] = Load16<kBF16>(pk + j * kW);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        const V hm = Isa::Set1(h_rows[m][k]);
#pragma GCC unroll 16
        for (int j = 0; j < NJ; ++j) acc[m][j] = Isa::Fma(hm, w[j], acc[m][j]);
      }
    }
  }
}

// acc += h_rows @ (panel u of U, or of P), whichever weight format the chain holds.
template <int NJ, int MR>
inline void PanelProductAny(const ChainCtx& c, bool projection, int64_t panel, int64_t K, const float* const* rows,
                            V (&acc)[MR][NJ]) {
  const int64_t elems = panel * K * NJ * kW;
  if (const int8_t* q = projection ? c.pq_packed : c.wq_packed) {
    PanelProductQ8<NJ, MR>(q + elems, projection ? c.p_inv_scale : c.w_inv_scale, K, rows, acc);
  } else if (const uint16_t* w16 = projection ? c.p16_packed : c.w16_packed) {
    if (c.w16_bf16) PanelProduct16<NJ, MR, true>(w16 + elems, K, rows, acc);
    else PanelProduct16<NJ, MR, false>(w16 + elems, K, rows, acc);
  } else {
    PanelProduct<NJ, MR>((projection ? c.p_packed : c.w_packed) + elems, K, rows, acc);
  }
}

// ---- the packed tail block (cpu_internal.h, PackedTailBlocks) ---------------------------------------------------
// acc[m][j] += sum_k hval(m, k) * wload(k, j) for NP vectors per row. NP is small (1-3 per 16 columns), so the k
// loop is split over S interleaved partial sums to keep about 8 independent FMA chains in flight; the partial sums
// are added in a fixed order (results do not depend on the thread count).
template <int NP, int MR, class HVal, class WLoad>
inline void TailProduct(int64_t K, HVal hval, WLoad wload, V (&acc)[MR][NP]) {
  constexpr int S = (8 / (MR * NP)) > 1 ? (8 / (MR * NP)) : 1;
  V part[S][MR][NP];
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < NP; ++j) part[s][m][j] = Isa::Zero();
  int64_t k = 0;
  for (; k + S <= K; k += S) {
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      V w[NP];
#pragma GCC unroll 8
      for (int j = 0; j < NP; ++j) w[j] = wload(k + s, j);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        const V hm = Isa::Set1(hval(m, k + s));
#pragma GCC unroll 8
        for (int j = 0; j < NP; ++j) part[s][m][j] = Isa::Fma(hm, w[j], part[s][m][j]);
      }
    }
  }
  for (; k < K; ++k) {
    for (int m = 0; m < MR; ++m) {
      const V hm = Isa::Set1(hval(m, k));
      for (int j = 0; j < NP; ++j) part[0][m][j] = Isa::Fma(hm, wload(k, j), part[0][m][j]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NP; ++j) {
      V sum = part[0][m][j];
      for (int s = 1; s < S; ++s) sum = Isa::Add(sum, part[s][m][j]);
      acc[m][j] = sum;
    }
}

// acc (the block's gate pre-activations, in the full block layout) += pk, the product over the packed tail panel of
// block u: gate g's r units sit at packed columns [g * r, g * r + r).
template <int NP, int MR, int NJ>
inline void AddPackedTail(const ChainCtx& c, int64_t u, const V (&pk)[MR][NP], V (&acc)[MR][NJ]) {
  constexpr int kRow = NP * kW;
  const int64_t r = c.H - u * kBlock;
  alignas(64) float row[kRow];
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NP; ++j) Isa::Store(row + j * kW, pk[m][j]);
    for (int g = 0; g < NJ / kNV; ++g) {
      for (int v = 0; v < kNV; ++v) {
        const int n = Valid(r, v * kW);
        if (n > 0) acc[m][g * kNV + v] = Isa::Add(acc[m][g * kNV + v], Isa::LoadN(row + g * r + v * kW, n));
      }
    }
  }
}

// acc (the block's gate pre-activations, in the full block layout) += h_rows @ the packed tail panel of block u.
template <int NP, int MR, int NJ>
inline void PackedTailGates(const ChainCtx& c, int64_t u, int64_t K, const float* const* h_rows, V (&acc)[MR][NJ]) {
  constexpr int kRow = NP * kW;              // elements per packed panel row
  const int64_t elems = u * K * NJ * kW;     // the full panels before it
  V pk[MR][NP];
  auto h_plain = [&](int m, int64_t k) { return h_rows[m][k]; };
  if (const int8_t* q = c.wq_packed) {
    const float* inv = c.w_inv_scale;
    TailProduct<NP, MR>(K, [&](int m, int64_t k) { return h_rows[m][k] * inv[k]; },
                        [&](int64_t k, int j) { return Isa::LoadI8(q + elems + k * kRow + j * kW); }, pk);
  } else if (const uint16_t* w16 = c.w16_packed) {
    if (c.w16_bf16) {
      TailProduct<NP, MR>(K, h_plain, [&](int64_t k, int j) { return Isa::LoadBF16(w16 + elems + k * kRow + j * kW); }, pk);
    } else {
      TailProduct<NP, MR>(K, h_plain, [&](int64_t k, int j) { return Isa::LoadF16(w16 + elems + k * kRow + j * kW); }, pk);
    }
  } else {
    const float* w = c.w_packed;
    TailProduct<NP, MR>(K, h_plain, [&](int64_t k, int j) { return Isa::Load(w + elems + k * kRow + j * kW); }, pk);
  }
  AddPackedTail<NP, MR, NJ>(c, u, pk, acc);
}

// acc += h_rows @ panel u of U: the full-width product, or the packed tail's.
template <int NJ, int MR>
inline void GateProduct(const ChainCtx& c, int64_t u, int64_t K, const float* const* h_rows, V (&acc)[MR][NJ]) {
  if (c.tail_blocks > 0 && u == c.num_unit_blocks - 1) {
    switch (c.tail_blocks) {
      case 1: PackedTailGates<1 * kNV, MR, NJ>(c, u, K, h_rows, acc); return;
      case 2: PackedTailGates<2 * kNV, MR, NJ>(c, u, K, h_rows, acc); return;
      default:
        if constexpr (NJ > 3 * kNV) {  // 3 packed blocks only for the LSTM's 4 gates
          PackedTailGates<3 * kNV, MR, NJ>(c, u, K, h_rows, acc);
          return;
        }
    }
  }
  PanelProductAny<NJ, MR>(c, /*projection=*/false, u, K, h_rows, acc);
}


// ---- INT8 with VNNI: exact integer products over fixed-point planes of the state (ChainCtx::q8_vnni) --------
// Per 64 weights a row costs 4 vpdpbusd (one per plane) and no conversion, against 4 sign extensions, 4
// conversions and 4 FMAs on the float path: at B=1 the step becomes bound by the L3 stream of the weights.
#if defined(FUSED_RNN_VNNI)
// acc += the u8 x s8 dot products of h and w per 32-bit lane. Inline assembly, not _mm512_dpbusd_epi32: GCC 12
// copies every accumulator to a new register around each intrinsic (about two moves per vpdpbusd, and spills),
// which cost a third of the L2-resident product; "+v" keeps each accumulator in its register.
inline void DpBusd(__m512i& acc, __m512i h, __m512i w) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(h), "v"(w)); }

inline int32_t LoadU32(const uint8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

// Writes the planes of state values k0 .. k0 + n (n <= 16) of one row: X = round(v * fix[k]) clamped to the
// int32 range, stored as the four bytes of X + 2^31. Returns false when a value is NaN or infinite.
inline bool WritePlanes(V v, const float* fix, int64_t k0, int n, uint8_t* planes, int64_t plane_bytes) {
  const __mmask16 valid = static_cast<__mmask16>(n >= 16 ? 0xFFFFu : (1u << n) - 1u);
  const __mmask16 finite = _mm512_mask_cmp_ps_mask(valid, _mm512_abs_ps(v), _mm512_set1_ps(3.40282347e38f), _CMP_LE_OQ);
  const float lim = 2147483520.f;  // the largest float below 2^31; the bound keeps |X| <= 2^30 anyway
  __m512 x = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(valid, fix + k0));
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-lim)), _mm512_set1_ps(lim));
  const __m512i u = _mm512_xor_si512(_mm512_cvtps_epi32(x), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  _mm_mask_storeu_epi8(planes + k0, valid, _mm512_cvtepi32_epi8(u));
  _mm_mask_storeu_epi8(planes + plane_bytes + k0, valid, _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 8)));
  _mm_mask_storeu_epi8(planes + 2 * plane_bytes + k0, valid, _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 16)));
  _mm_mask_storeu_epi8(planes + 3 * plane_bytes + k0, valid, _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 24)));
  return finite == valid;
}

// Row b must use the float product from `phase` on (atomic minimum: concurrent slices may raise it).
inline void FloatFromPhase(const ChainCtx& c, int64_t b, int32_t phase) {
  int32_t cur = __atomic_load_n(c.float_from_phase + b, __ATOMIC_RELAXED);
  while (cur > phase &&
         !__atomic_compare_exchange_n(c.float_from_phase + b, &cur, phase, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

// acc[j] += 2^unfix_exp * sum_k X[k] * q[k][j * 16 + lane] for one row, exactly in int32 then rounded once to float.
// NJ vectors of 16 columns; panel [K4][NJ * 16][4]; planes [4][plane_bytes].
// Not inlined: inside the block kernels GCC kept the 4 * NJ accumulators on the stack (a load and a store around
// every vpdpbusd); on its own, it keeps them in registers.
template <int NJ>
__attribute__((noinline)) void VnniRowProduct(const int8_t* __restrict panel, const int32_t* __restrict qsum128, int64_t K4,
                           const uint8_t* __restrict planes, int64_t plane_bytes, float unfix_exp, V (&acc)[NJ]) {
  constexpr int S = NJ >= 3 ? 1 : 2;  // k streams: 4 * NJ * S independent accumulator chains
  // Every loop over `sum` is fully unrolled: an array indexed in a loop GCC keeps stays in memory.
  __m512i sum[S][4][NJ];
#pragma GCC unroll 2
  for (int t = 0; t < S; ++t)
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p)
#pragma GCC unroll 4
      for (int j = 0; j < NJ; ++j) sum[t][p][j] = _mm512_setzero_si512();
  // No lambda over `sum` here: a captured array stays in memory, and every accumulator went through the stack.
  int64_t k4 = 0;
  for (; k4 + S <= K4; k4 += S) {
#pragma GCC unroll 2
    for (int t = 0; t < S; ++t) {
      __m512i hp[4];
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) hp[p] = _mm512_set1_epi32(LoadU32(planes + p * plane_bytes + (k4 + t) * 4));
      const int8_t* pk = panel + (k4 + t) * NJ * 64;
#pragma GCC unroll 4
      for (int j = 0; j < NJ; ++j) {
        const __m512i w = _mm512_loadu_si512(pk + j * 64);
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) DpBusd(sum[t][p][j], hp[p], w);
      }
    }
  }
  for (; k4 < K4; ++k4) {
    __m512i hp[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) hp[p] = _mm512_set1_epi32(LoadU32(planes + p * plane_bytes + k4 * 4));
    const int8_t* pk = panel + k4 * NJ * 64;
#pragma GCC unroll 4
    for (int j = 0; j < NJ; ++j) {
      const __m512i w = _mm512_loadu_si512(pk + j * 64);
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) DpBusd(sum[0][p][j], hp[p], w);
    }
  }
  const V b256 = Isa::Set1(256.f), e = Isa::Set1(unfix_exp);
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) {
    __m512i d[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {
      d[p] = sum[0][p][j];
#pragma GCC unroll 2
      for (int t = 1; t < S; ++t) d[p] = _mm512_add_epi32(d[p], sum[t][p][j]);  // exact: K <= kMaxVnniK
    }
    // The top plane holds X's high byte + 128: remove 128 * sum_k q.
    d[3] = _mm512_sub_epi32(d[3], _mm512_loadu_si512(qsum128 + j * 16));
    V r = _mm512_cvtepi32_ps(d[3]);
    r = Isa::Fma(r, b256, _mm512_cvtepi32_ps(d[2]));
    r = Isa::Fma(r, b256, _mm512_cvtepi32_ps(d[1]));
    r = Isa::Fma(r, b256, _mm512_cvtepi32_ps(d[0]));
    acc[j] = Isa::Add(acc[j], Isa::Scale(r, e));
  }
}

// The float product over the same panel, for a row whose state is not finite: NaN and infinities propagate as
// they do on every other path. acc[j] += sum_k (h[k] * inv_scale[k]) * float(q[k][j * 16 + lane]).
template <int NJ>
inline void VnniRowProductFloat(const int8_t* __restrict panel, int64_t K, const float* h, const float* inv_scale,
                                V (&acc)[NJ]) {
  for (int64_t k = 0; k < K; ++k) {
    const V hv = Isa::Set1(h[k] * inv_scale[k]);
    const int8_t* pk = panel + (k / 4) * NJ * 64;
    const __m128i left = _mm_cvtsi32_si128(24 - 8 * static_cast<int>(k % 4)), right = _mm_cvtsi32_si128(24);
    for (int j = 0; j < NJ; ++j) {
      const __m512i w = _mm512_loadu_si512(pk + j * 64);
      const V wf = _mm512_cvtepi32_ps(_mm512_sra_epi32(_mm512_sll_epi32(w, left), right));
      acc[j] = Isa::Fma(hv, wf, acc[j]);
    }
  }
}

// acc[m] += rows[m] @ an int8 panel in the VNNI layout for MR rows from b0: the exact product from the planes, or
// the float one for a row flagged at or before `phase`.
template <int NJ, int MR>
inline void VnniProduct(const ChainCtx& c, const int8_t* panel, const int32_t* qsum128, int64_t K, int64_t K4,
                        const uint8_t* planes, float unfix_exp, const float* inv_scale, int32_t phase, int64_t b0,
                        const float* const* rows, V (&acc)[MR][NJ]) {
  for (int m = 0; m < MR; ++m) {
    if (__atomic_load_n(c.float_from_phase + b0 + m, __ATOMIC_RELAXED) <= phase) {
      VnniRowProductFloat<NJ>(panel, K, rows[m], inv_scale, acc[m]);
    } else {
      VnniRowProduct<NJ>(panel, qsum128, K4, planes + (b0 + m) * 4 * K4 * 4, K4 * 4, unfix_exp, acc[m]);
    }
  }
}

// acc += h_rows @ panel u of U on the VNNI path (the packed tail included).
template <int NJ, int MR>
inline void GateProductVnni(const ChainCtx& c, int64_t step, int64_t b0, int64_t u, const float* const* h_rows,
                            V (&acc)[MR][NJ]) {
  const int8_t* panel = c.wq_packed + u * c.R4 * c.G * kBlock;
  const int32_t* qsum = c.w_qsum128 + u * c.G * kBlock;
  const uint8_t* planes = c.h_planes[step & 1];
  const float unfix = c.h_unfix_exp[step == 0 ? 0 : 1];
  const int32_t phase = static_cast<int32_t>(2 * step);
  if (c.tail_blocks > 0 && u == c.num_unit_blocks - 1) {
    auto tail = [&](auto np) {
      constexpr int NP = decltype(np)::value;
      V pk[MR][NP];
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < NP; ++j) pk[m][j] = Isa::Zero();
      VnniProduct<NP, MR>(c, panel, qsum, c.R, c.R4 / 4, planes, unfix, c.w_inv_scale, phase, b0, h_rows, pk);
      AddPackedTail<NP, MR, NJ>(c, u, pk, acc);
    };
    switch (c.tail_blocks) {
      case 1: tail(std::integral_constant<int, 1>()); return;
      case 2: tail(std::integral_constant<int, 2>()); return;
      default:
        if constexpr (NJ > 3) {
          tail(std::integral_constant<int, 3>());
          return;
        }
    }
  }
  VnniProduct<NJ, MR>(c, panel, qsum, c.R, c.R4 / 4, planes, unfix, c.w_inv_scale, phase, b0, h_rows, acc);
}

// Packs `cols` columns of an int8 matrix (row k of column col at src[k * ld + col_offset[col]]; offset < 0: a zero
// column) into the VNNI layout [K4][cols][4], zero past K, with qsum128[col] = 128 * sum_k q[k][col].
void PackVnniPanel(const int8_t* src, int64_t ld, const int64_t* col_offset, int64_t cols, int64_t K, int8_t* dst,
                   int32_t* qsum128) {
  const int64_t K4 = CeilDiv(K, 4);
  const __m128i ones = _mm_set1_epi8(1);
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    bool contiguous = c0 + 16 <= cols && col_offset[c0] >= 0;
    for (int l = 1; l < 16 && contiguous; ++l) contiguous = col_offset[c0 + l] == col_offset[c0] + l;
    if (contiguous) {
      // 4 rows x 16 columns -> 16 columns x 4 rows: two rounds of byte / word interleaving.
      __m128i s[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128()};
      for (int64_t k4 = 0; k4 < K4; ++k4) {
        __m128i r[4];
        for (int i = 0; i < 4; ++i) {
          const int64_t k = k4 * 4 + i;
          r[i] = k < K ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k * ld + col_offset[c0]))
                       : _mm_setzero_si128();
        }
        const __m128i a = _mm_unpacklo_epi8(r[0], r[1]), b = _mm_unpackhi_epi8(r[0], r[1]);
        const __m128i cc = _mm_unpacklo_epi8(r[2], r[3]), d = _mm_unpackhi_epi8(r[2], r[3]);
        const __m128i o[4] = {_mm_unpacklo_epi16(a, cc), _mm_unpackhi_epi16(a, cc), _mm_unpacklo_epi16(b, d),
                              _mm_unpackhi_epi16(b, d)};
        int8_t* out = dst + (k4 * cols + c0) * 4;
        for (int i = 0; i < 4; ++i) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i), o[i]);
          s[i] = _mm_dpbusd_epi32(s[i], ones, o[i]);  // the 4 k of each column: 1 * q summed into its lane
        }
      }
      for (int i = 0; i < 4; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(qsum128 + c0 + 4 * i), _mm_slli_epi32(s[i], 7));
      continue;
    }
    for (int64_t col = c0; col < std::min<int64_t>(c0 + 16, cols); ++col) {
      int32_t sum = 0;
      for (int64_t k = 0; k < K4 * 4; ++k) {
        const int8_t v = col_offset[col] >= 0 && k < K ? src[k * ld + col_offset[col]] : int8_t{0};
        dst[((k / 4) * cols + col) * 4 + k % 4] = v;
        sum += v;
      }
      qsum128[col] = 128 * sum;
    }
  }
}
#endif  // FUSED_RNN_VNNI

// Row bookkeeping for one step: the time position a row reads and writes, and whether it is still running.
struct RowStep {
  bool active;
  bool last;
  int64_t pos;
};
inline RowStep RowAt(const ChainCtx& c, int64_t b, int64_t step) {
  const int64_t len = c.lengths[b];
  RowStep r;
  r.active = step < len;
  r.last = step == len - 1;
  r.pos = r.active ? (c.reverse ? len - 1 - step : step) : 0;
  return r;
}

// ---- LSTM gates + cell update for MR rows starting at b0 and unit block u ------------------------------------
template <int MR>
inline void LstmBlock(const ChainCtx& c, int64_t step, int64_t b0, int64_t u) {
  constexpr int NJ = 4 * kNV;
  const int64_t H = c.H, R = c.R, j0 = u * kBlock;
  const float* h_cur = c.h_buf[step & 1];
  float* h_next = c.h_buf[(step + 1) & 1];
  RowStep rs[MR];
  const float* h_rows[MR];
  V acc[MR][NJ];
  for (int m = 0; m < MR; ++m) {
    const int64_t b = b0 + m;
    rs[m] = RowAt(c, b, step);
    h_rows[m] = h_cur + b * R;
    const float* x_row = c.x_proj + b * c.x_b_stride + rs[m].pos * c.x_t_stride;
    for (int g = 0; g < 4; ++g) {
      for (int v = 0; v < kNV; ++v) {
        const int64_t col = g * H + j0 + v * kW;
        const int n = Valid(H, j0 + v * kW);
        V x = n > 0 ? Isa::LoadN(x_row + col, n) : Isa::Zero();
        if (c.rec_bias != nullptr && n > 0) x = Isa::Add(x, Isa::LoadN(c.rec_bias + col, n));
        acc[m][g * kNV + v] = x;
      }
    }
  }
#if defined(FUSED_RNN_VNNI)
  if (c.q8_vnni) GateProductVnni<NJ, MR>(c, step, b0, u, h_rows, acc);
  else
#endif
    GateProduct<NJ, MR>(c, u, R, h_rows, acc);
  // The cell update in three passes over all MR rows (gate activations, cell state, tanh of the cell), each fully
  // unrolled: 4 * MR * kNV independent dependency chains, then MR * kNV. Row by row, each row's ~50-deep chain
  // of activation arithmetic left the out-of-order core waiting on latency (measured: the activations stubbed out
  // took a B=32 forward from 3.4 to 2.4 ms; halving their instruction count changed nothing). Rows past their
  // length are computed too (their values are never stored).
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) acc[m][j] = j / kNV == 2 ? Tanh(acc[m][j]) : Sigmoid(acc[m][j]);
  V c_pre[MR][kNV], c_new[MR][kNV], h_new[MR][kNV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) {
      const int n = Valid(H, j0 + v * kW);
      c_pre[m][v] = Isa::Fma(acc[m][kNV + v], Isa::LoadN(c.c_state + (b0 + m) * H + j0 + v * kW, n),
                             Isa::Mul(acc[m][v], acc[m][2 * kNV + v]));
      c_new[m][v] = Clip(c_pre[m][v], c.cell_clip);
    }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) h_new[m][v] = Isa::Mul(acc[m][3 * kNV + v], Tanh(c_new[m][v]));
  for (int m = 0; m < MR; ++m) {
    if (!rs[m].active) continue;
    const int64_t b = b0 + m;
    float* res = c.reserve ? c.reserve + (b * c.T + rs[m].pos) * c.reserve_features : nullptr;
    for (int v = 0; v < kNV; ++v) {
      const int64_t j = j0 + v * kW;
      const int n = Valid(H, j);
      if (n == 0) continue;
      Isa::StoreN(c.c_state + b * H + j, c_new[m][v], n);
      if (res) {
        Isa::StoreN(res + j, acc[m][v], n);
        Isa::StoreN(res + H + j, acc[m][kNV + v], n);
        Isa::StoreN(res + 2 * H + j, acc[m][2 * kNV + v], n);
        Isa::StoreN(res + 3 * H + j, acc[m][3 * kNV + v], n);
        Isa::StoreN(res + 4 * H + j, c_pre[m][v], n);
      }
      if (rs[m].last) Isa::StoreN(c.final_c + b * H + j, c_new[m][v], n);
#if defined(FUSED_RNN_VNNI)
      if (c.q8_vnni) {  // the planes the next phase reads: m for the projection, else the next step's h
        const bool ok = c.P > 0 ? WritePlanes(h_new[m][v], c.m_fix, j, n, c.m_planes + b * 4 * c.H4, c.H4)
                                : WritePlanes(h_new[m][v], c.h_fix, j, n, c.h_planes[(step + 1) & 1] + b * 4 * c.R4, c.R4);
        if (!ok) FloatFromPhase(c, b, static_cast<int32_t>(2 * step + (c.P > 0 ? 1 : 2)));
      }
#endif
      if (c.P > 0) {
        Isa::StoreN(c.m_buf + b * H + j, h_new[m][v], n);
      } else {
        Isa::StoreN(h_next + b * R + j, h_new[m][v], n);
        Isa::StoreN(c.output + b * c.out_b_stride + rs[m].pos * c.out_t_stride + j, h_new[m][v], n);
        if (rs[m].last) Isa::StoreN(c.final_h + b * R + j, h_new[m][v], n);
      }
    }
  }
}

// ---- projection: r = clip(m @ P) for MR rows and projection column block q ------------------------------------
template <int MR>
inline void ProjectionBlock(const ChainCtx& c, int64_t step, int64_t b0, int64_t q) {
  const int64_t H = c.H, R = c.R, p0 = q * kBlock;
  float* h_next = c.h_buf[(step + 1) & 1];
  RowStep rs[MR];
  const float* m_rows[MR];
  V acc[MR][kNV];
  for (int m = 0; m < MR; ++m) {
    rs[m] = RowAt(c, b0 + m, step);
    m_rows[m] = c.m_buf + (b0 + m) * H;
    for (int v = 0; v < kNV; ++v) acc[m][v] = Isa::Zero();
  }
#if defined(FUSED_RNN_VNNI)
  if (c.q8_vnni) {
    VnniProduct<kNV, MR>(c, c.pq_packed + q * c.H4 * kBlock, c.p_qsum128 + q * kBlock, H, c.H4 / 4, c.m_planes,
                         c.m_unfix_exp, c.p_inv_scale, static_cast<int32_t>(2 * step + 1), b0, m_rows, acc);
  } else
#endif
    PanelProductAny<kNV, MR>(c, /*projection=*/true, q, H, m_rows, acc);
  for (int m = 0; m < MR; ++m) {
    if (!rs[m].active) continue;
    const int64_t b = b0 + m;
    for (int v = 0; v < kNV; ++v) {
      const int64_t p = p0 + v * kW;
      const int n = Valid(R, p);
      if (n == 0) continue;
      if (c.reserve) Isa::StoreN(c.reserve + (b * c.T + rs[m].pos) * c.reserve_features + 5 * H + p, acc[m][v], n);
      const V r = Clip(acc[m][v], c.proj_clip);
#if defined(FUSED_RNN_VNNI)
      if (c.q8_vnni && !WritePlanes(r, c.h_fix, p, n, c.h_planes[(step + 1) & 1] + b * 4 * c.R4, c.R4)) {
        FloatFromPhase(c, b, static_cast<int32_t>(2 * step + 2));
      }
#endif
      Isa::StoreN(h_next + b * R + p, r, n);
      Isa::StoreN(c.output + b * c.out_b_stride + rs[m].pos * c.out_t_stride + p, r, n);
      if (rs[m].last) Isa::StoreN(c.final_h + b * R + p, r, n);
    }
  }
}

// ---- GRU (reset_after): z, r from x + h@U + b_r; n = tanh(x_n + r * (h@U_n + b_rn)) -------------------------
template <int MR>
inline void GruBlock(const ChainCtx& c, int64_t step, int64_t b0, int64_t u) {
  constexpr int NJ = 3 * kNV;
  const int64_t H = c.H, j0 = u * kBlock;
  const float* h_cur = c.h_buf[step & 1];
  float* h_next = c.h_buf[(step + 1) & 1];
  RowStep rs[MR];
  const float* h_rows[MR];
  const float* x_rows[MR];
  V acc[MR][NJ];
  for (int m = 0; m < MR; ++m) {
    const int64_t b = b0 + m;
    rs[m] = RowAt(c, b, step);
    h_rows[m] = h_cur + b * H;
    x_rows[m] = c.x_proj + b * c.x_b_stride + rs[m].pos * c.x_t_stride;
    for (int g = 0; g < 3; ++g) {
      for (int v = 0; v < kNV; ++v) {
        const int64_t col = g * H + j0 + v * kW;
        const int n = Valid(H, j0 + v * kW);
        V a = (g < 2 && n > 0) ? Isa::LoadN(x_rows[m] + col, n) : Isa::Zero();
        if (c.rec_bias != nullptr && n > 0) a = Isa::Add(a, Isa::LoadN(c.rec_bias + col, n));
        acc[m][g * kNV + v] = a;
      }
    }
  }
#if defined(FUSED_RNN_VNNI)
  if (c.q8_vnni) GateProductVnni<NJ, MR>(c, step, b0, u, h_rows, acc);
  else
#endif
    GateProduct<NJ, MR>(c, u, H, h_rows, acc);
  for (int m = 0; m < MR; ++m) {
    if (!rs[m].active) continue;
    const int64_t b = b0 + m;
    float* res = c.reserve ? c.reserve + (b * c.T + rs[m].pos) * c.reserve_features : nullptr;
    for (int v = 0; v < kNV; ++v) {
      const int64_t j = j0 + v * kW;
      const int n = Valid(H, j);
      if (n == 0) continue;
      const V zg = Sigmoid(acc[m][0 * kNV + v]);
      const V rg = Sigmoid(acc[m][1 * kNV + v]);
      const V an = acc[m][2 * kNV + v];
      const V ng = Tanh(Isa::Fma(rg, an, Isa::LoadN(x_rows[m] + 2 * H + j, n)));
      const V h_prev = Isa::LoadN(h_rows[m] + j, n);
      const V h_new = Isa::Fma(zg, Isa::Sub(h_prev, ng), ng);  // z * h_prev + (1 - z) * n
      if (res) {
        Isa::StoreN(res + j, zg, n);
        Isa::StoreN(res + H + j, rg, n);
        Isa::StoreN(res + 2 * H + j, ng, n);
        Isa::StoreN(res + 3 * H + j, an, n);
      }
#if defined(FUSED_RNN_VNNI)
      if (c.q8_vnni && !WritePlanes(h_new, c.h_fix, j, n, c.h_planes[(step + 1) & 1] + b * 4 * c.R4, c.R4)) {
        FloatFromPhase(c, b, static_cast<int32_t>(2 * step + 2));
      }
#endif
      Isa::StoreN(h_next + b * H + j, h_new, n);
      Isa::StoreN(c.output + b * c.out_b_stride + rs[m].pos * c.out_t_stride + j, h_new, n);
      if (rs[m].last) Isa::StoreN(c.final_h + b * H + j, h_new, n);
    }
  }
}

// Runs `Block<MR>` over every group of batch rows that still has an active row, MR rows at a time. Blocks are
// the outer loop: a block's weight panel is read from L3 once per step and then served from L1/L2 to every row
// group (rows outside would re-stream every panel once per row group).
template <template <int> class Block>
inline void ForRowGroups(const ChainCtx& c, int64_t step, int64_t block_begin, int64_t block_end) {
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

template <int MR> struct LstmOp { static void Run(const ChainCtx& c, int64_t s, int64_t b, int64_t u) { LstmBlock<MR>(c, s, b, u); } };
template <int MR> struct ProjOp { static void Run(const ChainCtx& c, int64_t s, int64_t b, int64_t u) { ProjectionBlock<MR>(c, s, b, u); } };
template <int MR> struct GruOp { static void Run(const ChainCtx& c, int64_t s, int64_t b, int64_t u) { GruBlock<MR>(c, s, b, u); } };

void LstmGates(const ChainCtx& c, int64_t step, int64_t b0, int64_t b1) { ForRowGroups<LstmOp>(c, step, b0, b1); }
void LstmProjection(const ChainCtx& c, int64_t step, int64_t b0, int64_t b1) { ForRowGroups<ProjOp>(c, step, b0, b1); }
void GruGates(const ChainCtx& c, int64_t step, int64_t b0, int64_t b1) { ForRowGroups<GruOp>(c, step, b0, b1); }

}  // namespace FUSED_RNN_ISA_NS
}  // namespace cpu
}  // namespace fused_rnn
