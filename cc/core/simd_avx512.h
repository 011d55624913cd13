// AVX-512 vector of 16 floats. Included only by the TUs compiled with -mavx512f (see cpu_kernels_impl.h): the
// plain AVX-512 one, and the one also built with -mavx512vnni, which defines FUSED_RNN_AVX512_NS to its own
// namespace so that no inline function is shared between TUs built with different flags.
#ifndef FUSED_RNN_CORE_SIMD_AVX512_H_
#define FUSED_RNN_CORE_SIMD_AVX512_H_
#include <immintrin.h>
#include <cstdint>

#ifndef FUSED_RNN_AVX512_NS
#define FUSED_RNN_AVX512_NS avx512
#define FUSED_RNN_AVX512_NAME "avx512"
#endif

namespace fused_rnn {
namespace cpu {
namespace FUSED_RNN_AVX512_NS {

struct Isa {
  static constexpr int kWidth = 16;
  static constexpr int kMaxRows = 4;  // 4 rows x 4 gates = 16 accumulators of 32 zmm registers
  static constexpr const char* kName = FUSED_RNN_AVX512_NAME;
  using V = __m512;
  static inline V Zero() { return _mm512_setzero_ps(); }
  static inline V Set1(float v) { return _mm512_set1_ps(v); }
  static inline V Load(const float* p) { return _mm512_loadu_ps(p); }
  static inline V LoadN(const float* p, int n) {
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  }
  static inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline V LoadI8(const int8_t* p) {  // 16 int8 -> 16 floats (exact)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static inline V LoadBF16(const uint16_t* p) {  // 16 bfloat16 -> 16 floats (exact: the high half of a float)
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static inline V LoadF16(const uint16_t* p) {  // 16 IEEE halves -> 16 floats (exact, vcvtph2ps)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline void StoreN(float* p, V v, int n) {
    if (n >= 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
  }
  // Lanes [lo, hi) from base[lane] (others from `merge`) / to base[lane]; lanes outside are not accessed.
  static inline __mmask16 LaneMask(int lo, int hi) { return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u)); }
  static inline V LoadLanes(V merge, const float* base, int lo, int hi) { return _mm512_mask_loadu_ps(merge, LaneMask(lo, hi), base); }
  static inline void StoreLanes(float* base, V v, int lo, int hi) { _mm512_mask_storeu_ps(base, LaneMask(lo, hi), v); }
  static inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline V Div(V a, V b) { return _mm512_div_ps(a, b); }
  static inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }  // a*b+c
  static inline V Min(V a, V b) { return _mm512_min_ps(a, b); }
  static inline V Max(V a, V b) { return _mm512_max_ps(a, b); }
  static inline V Abs(V a) { return _mm512_abs_ps(a); }
  static inline V CopySign(V mag, V sign) {  // |mag| with the sign of `sign`
    const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_andnot_si512(sign_bit, _mm512_castps_si512(mag)),
                                               _mm512_and_si512(sign_bit, _mm512_castps_si512(sign))));
  }
  static inline V Select(V a_lt, V b, V if_true, V if_false) {  // a_lt < b ? if_true : if_false
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a_lt, b, _CMP_LT_OQ), if_false, if_true);
  }
  static inline V Round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n (vscalefps: one instruction instead of building 2^n in the exponent field).
  static inline V Scale(V p, V n) { return _mm512_scalef_ps(p, n); }
  // 1/d to about 1 ulp without a division (vdivps is a long-latency, low-throughput instruction): a 14-bit
  // estimate and one Newton step. For finite d > 0 only (the activations' denominators are in [1, 2e38]).
  static inline V Recip(V d) {
    const V r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
  }
};
}  // namespace FUSED_RNN_AVX512_NS
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CORE_SIMD_AVX512_H_
