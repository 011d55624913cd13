// Portable "vector" of 16 floats as plain loops: any CPU, any compiler; the compiler vectorizes what it can
// (SSE2 on x86-64, NEON on AArch64).
#ifndef FUSED_RNN_CORE_SIMD_PORTABLE_H_
#define FUSED_RNN_CORE_SIMD_PORTABLE_H_
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fused_rnn {
namespace cpu {
namespace portable {

struct Isa {
  static constexpr int kWidth = 16;
  static constexpr int kMaxRows = 1;
  static constexpr const char* kName = "portable";
  struct V { float f[16]; };
#define FRNN_PORTABLE_MAP(expr) V r; for (int l = 0; l < 16; ++l) r.f[l] = (expr); return r
  static inline V Zero() { FRNN_PORTABLE_MAP(0.f); }
  static inline V Set1(float v) { FRNN_PORTABLE_MAP(v); }
  static inline V Load(const float* p) { V r; std::memcpy(r.f, p, sizeof(r.f)); return r; }
  static inline V LoadN(const float* p, int n) {
    V r = Zero();
    std::memcpy(r.f, p, sizeof(float) * (n < 16 ? n : 16));
    return r;
  }
  static inline void Store(float* p, const V& v) { std::memcpy(p, v.f, sizeof(v.f)); }
  static inline V LoadI8(const int8_t* p) { FRNN_PORTABLE_MAP(static_cast<float>(p[l])); }
  static inline float Bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
  static inline float HalfToFloat(uint16_t h) {  // exact, subnormals, infinities and NaN included
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return Bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return Bits(sign | ((exp + 112u) << 23) | (man << 13));
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24
    return sign ? -mag : mag;
  }
  static inline V LoadBF16(const uint16_t* p) { FRNN_PORTABLE_MAP(Bits(static_cast<uint32_t>(p[l]) << 16)); }
  static inline V LoadF16(const uint16_t* p) { FRNN_PORTABLE_MAP(HalfToFloat(p[l])); }
  // Lanes [lo, hi) from base[lane] (others from `merge`) / to base[lane]; lanes outside are not accessed.
  static inline V LoadLanes(V merge, const float* base, int lo, int hi) {
    for (int l = lo; l < hi; ++l) merge.f[l] = base[l];
    return merge;
  }
  static inline void StoreLanes(float* base, const V& v, int lo, int hi) {
    for (int l = lo; l < hi; ++l) base[l] = v.f[l];
  }
  static inline void StoreN(float* p, const V& v, int n) { std::memcpy(p, v.f, sizeof(float) * (n < 16 ? n : 16)); }
  static inline V Add(const V& a, const V& b) { FRNN_PORTABLE_MAP(a.f[l] + b.f[l]); }
  static inline V Sub(const V& a, const V& b) { FRNN_PORTABLE_MAP(a.f[l] - b.f[l]); }
  static inline V Mul(const V& a, const V& b) { FRNN_PORTABLE_MAP(a.f[l] * b.f[l]); }
  static inline V Div(const V& a, const V& b) { FRNN_PORTABLE_MAP(a.f[l] / b.f[l]); }
  static inline V Fma(const V& a, const V& b, const V& c) { FRNN_PORTABLE_MAP(a.f[l] * b.f[l] + c.f[l]); }
  // x86 minps/maxps semantics: the second operand when either is NaN (the kernels rely on it to keep NaN).
  static inline V Min(const V& a, const V& b) { FRNN_PORTABLE_MAP(a.f[l] < b.f[l] ? a.f[l] : b.f[l]); }
  static inline V Max(const V& a, const V& b) { FRNN_PORTABLE_MAP(a.f[l] > b.f[l] ? a.f[l] : b.f[l]); }
  static inline V Abs(const V& a) { FRNN_PORTABLE_MAP(std::fabs(a.f[l])); }
  static inline V CopySign(const V& m, const V& s) { FRNN_PORTABLE_MAP(std::copysign(m.f[l], s.f[l])); }
  static inline V Select(const V& a, const V& b, const V& t, const V& f) { FRNN_PORTABLE_MAP(a.f[l] < b.f[l] ? t.f[l] : f.f[l]); }
  static inline V Round(const V& a) { FRNN_PORTABLE_MAP(std::nearbyint(a.f[l])); }
  static inline V Scale(const V& p, const V& n) { FRNN_PORTABLE_MAP(std::ldexp(p.f[l], static_cast<int>(n.f[l]))); }
  static inline V Recip(const V& d) { FRNN_PORTABLE_MAP(1.0f / d.f[l]); }
#undef FRNN_PORTABLE_MAP
};
}  // namespace portable
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CORE_SIMD_PORTABLE_H_
