// AVX2+FMA vector of 8 floats. Included only by the TU compiled with -mavx2 -mfma.
#ifndef FUSED_RNN_CORE_SIMD_AVX2_H_
#define FUSED_RNN_CORE_SIMD_AVX2_H_
#include <immintrin.h>
#include <cstdint>

namespace fused_rnn {
namespace cpu {
namespace avx2 {

struct Isa {
  static constexpr int kWidth = 8;
  static constexpr int kMaxRows = 1;  // 16-unit blocks are 2 ymm per gate: 1 row x 4 gates x 2 = 8 of 16 registers
  static constexpr const char* kName = "avx2";
  using V = __m256;
  static inline __m256i TailMask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline V Zero() { return _mm256_setzero_ps(); }
  static inline V Set1(float v) { return _mm256_set1_ps(v); }
  static inline V Load(const float* p) { return _mm256_loadu_ps(p); }
  static inline V LoadN(const float* p, int n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, TailMask(n));
  }
  static inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static inline V LoadI8(const int8_t* p) {  // 8 int8 -> 8 floats (exact)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static inline V LoadBF16(const uint16_t* p) {  // 8 bfloat16 -> 8 floats (exact)
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static inline V LoadF16(const uint16_t* p) {  // 8 IEEE halves -> 8 floats (exact; F16C, checked at dispatch)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline void StoreN(float* p, V v, int n) {
    if (n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, TailMask(n), v);
  }
  // Lanes [lo, hi) from base[lane] (others from `merge`) / to base[lane]; lanes outside are not accessed.
  static inline __m256i LaneMask(int lo, int hi) { return _mm256_andnot_si256(TailMask(lo), TailMask(hi)); }
  static inline V LoadLanes(V merge, const float* base, int lo, int hi) {
    const __m256i m = LaneMask(lo, hi);
    return _mm256_blendv_ps(merge, _mm256_maskload_ps(base, m), _mm256_castsi256_ps(m));
  }
  static inline void StoreLanes(float* base, V v, int lo, int hi) { _mm256_maskstore_ps(base, LaneMask(lo, hi), v); }
  static inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline V Div(V a, V b) { return _mm256_div_ps(a, b); }
  static inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V Min(V a, V b) { return _mm256_min_ps(a, b); }
  static inline V Max(V a, V b) { return _mm256_max_ps(a, b); }
  static inline V Abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static inline V CopySign(V mag, V sign) {
    const V sign_bit = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(sign_bit, mag), _mm256_and_ps(sign_bit, sign));
  }
  static inline V Select(V a_lt, V b, V if_true, V if_false) {
    return _mm256_blendv_ps(if_false, if_true, _mm256_cmp_ps(a_lt, b, _CMP_LT_OQ));
  }
  static inline V Round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline V Scale(V p, V n) { return _mm256_mul_ps(p, Pow2i(n)); }  // n integral in [-126, 127]
  // 1/d for finite d > 0: a 12-bit estimate and one Newton step (about 2 ulp; no division).
  static inline V Recip(V d) {
    const V r = _mm256_rcp_ps(d);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(1.0f)), r);
  }
  static inline V Pow2i(V n) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
};
}  // namespace avx2
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CORE_SIMD_AVX2_H_
