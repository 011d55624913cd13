// The prologue kernel of the tensor-core mode's TF32-through-float16 plans (CudaTuning::tf32_exchange16): float32 U
// copied to float16 with each column scaled by a power of two, and the check of the initial state: the LSTM's shift
// for it (KernelParams::tc_h0_shift), or for a GRU which of the two launched recurrence kernels runs
// (fused_rnn_cuda_tc.cuh, KernelParams::tc_gate).
//
// Why float16 can stand in for TF32 here: both keep 10 explicit mantissa bits; float16 lacks the exponent range.
// A power-of-two scale per column (exact) puts the column's largest magnitude in [2^14, 2^15), so no weight
// overflows and every weight within 2^-28 of its column's largest keeps a normal float16 (smaller ones round with an
// absolute error below 2^-25 of it). h needs no scale: without a projection every h the recurrence makes has |h| <= 1
// (LSTM: o * tanh(c); GRU: a convex mix of tanh(.) and h_{t-1}), so only an initial state can leave float16's range;
// an |h| below 2^-14 becomes a float16 subnormal (absolute error at most 2^-25, far under TF32's error on the rest).
// An initial state with a finite |h0| > 65504 is handled per batch row. gate[1 + d * B + b] gets that row's shift
// s = ilogb(max finite |h0 row|) - 13 (>= 2; 0 for a row that fits): the LSTM kernel enters the row as h0 * 2^-s
// (largest magnitude in [2^13, 2^14)) and multiplies its step-0 sums by 2^s (later h have |h| < 1), so no second
// kernel is launched, and other rows keep their own precision. A GRU's h_t can stay near h0 for many steps, so for a
// GRU gate[0] (any row beyond float16) sends the call to the float32-exchange TF32 kernel instead.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "fused_rnn_cuda_params.h"

namespace fused_rnn {
namespace cuda_impl {
namespace {

constexpr int kCols = 32;      // columns per block
constexpr int kThreads = 1024;
constexpr int kBatch = 8;      // loads per thread issued before any is used

// Block (d, 32 columns): threads split into VEC-wide column groups x k-slices. The first kBatch loads of every thread
// cover rows [0, kBatch * kSlices) (1024 rows for VEC = 4) and stay in registers from the max pass to the copy pass,
// so for K <= 1024 U is read from memory once; rows past that are read again (from L2) in the copy pass. Session 36
// timed the earlier two-pass kernel (256 threads, every row read twice) at 13.1 us for H=1024 (16 MB in, 8 MB out),
// against ~5 us to read 16 MB at HBM speed. VEC = 4 (GH % 4 == 0 and 16-byte aligned U): 16-byte loads. Every
// block also checks a grid-strided share of h0.
template <int VEC>
__global__ void __launch_bounds__(kThreads) TcF16CopyKernel(const float* __restrict__ w, int K, int GH, int col_blocks,
                                                            uint16_t* __restrict__ w16, float* __restrict__ col_scale,
                                                            const float* __restrict__ h0, long long h0_count,
                                                            int h0_width, int* gate) {
  constexpr int kGroups = kCols / VEC;           // column groups per block
  constexpr int kSlices = kThreads / kGroups;    // k-slices
  constexpr int kFirstRows = kBatch * kSlices;   // rows held in registers
  constexpr int kWarps = kThreads / 32;
  static_assert(kGroups <= 32 && 32 % kGroups == 0, "a warp holds whole column groups");
  __shared__ float max_s[kWarps][kCols];
  __shared__ int exp_s[kCols];
  const int tx = threadIdx.x % kGroups, ty = threadIdx.x / kGroups;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int d = blockIdx.x / col_blocks;
  const int col0 = (blockIdx.x - d * col_blocks) * kCols + tx * VEC;  // GH % VEC == 0: a group is all in or out
  const bool ok = col0 < GH;
  const float* wd = w + (long long)d * K * GH + col0;
  using V = typename std::conditional<VEC == 4, float4, float>::type;
  auto load = [&](int k) -> V { return __ldg(reinterpret_cast<const V*>(wd + (long long)k * GH)); };
  auto lanes = [](const V& v, float (&o)[VEC]) {
    if constexpr (VEC == 4) {
      o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
    } else {
      o[0] = v;
    }
  };
  float m[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) m[j] = 0.f;
  auto take_max = [&](const V& vv) {
    float v[VEC];
    lanes(vv, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = fabsf(v[j]);
      if (a <= 3.402823466e38f) m[j] = fmaxf(m[j], a);  // finite only: Inf and NaN pass through unchanged
    }
  };
  V first[kBatch];
  if (ok) {
    // One running pointer rather than kBatch 64-bit addresses: with 1024 threads a thread has 64 registers, and the
    // kBatch vectors take 4 * kBatch of them.
    const V* src = reinterpret_cast<const V*>(wd + (long long)ty * GH);
    const long long step = (long long)kSlices * GH / VEC;
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (ty + b * kSlices < K) first[b] = __ldg(src + b * step);
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (ty + b * kSlices < K) take_max(first[b]);
    // Rows past the first batch (K > kFirstRows only), two loads in flight: `first` holds the thread's registers.
    for (int k0 = ty + kFirstRows; k0 < K; k0 += 2 * kSlices) {
      V vb[2];
#pragma unroll
      for (int b = 0; b < 2; ++b)
        if (k0 + b * kSlices < K) vb[b] = load(k0 + b * kSlices);
#pragma unroll
      for (int b = 0; b < 2; ++b)
        if (k0 + b * kSlices < K) take_max(vb[b]);
    }
  }
  // Column maxima: over the warp's slices (lanes of one column group are kGroups apart), then over the warps.
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
#pragma unroll
    for (int off = kGroups; off < 32; off <<= 1) m[j] = fmaxf(m[j], __shfl_xor_sync(0xffffffffu, m[j], off));
  }
  if (lane < kGroups) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) max_s[warp][tx * VEC + j] = m[j];
  }
  __syncthreads();
  if (warp < kCols) {  // warp c reduces column c over the warps' maxima
    const int c = warp;
    float mc = lane < kWarps ? max_s[lane][c] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, off));
    if (lane == 0) {
      int e = 0;
      if (mc > 0.f) {
        int ex = 0;
        frexpf(mc, &ex);        // mc = f * 2^ex, f in [0.5, 1)
        e = min(15 - ex, 126);  // mc * 2^e in [2^14, 2^15); 2^-e stays a normal float
      }
      exp_s[c] = e;
      const int col = (blockIdx.x - d * col_blocks) * kCols + c;
      if (col < GH) col_scale[(long long)d * GH + col] = ldexpf(1.f, -e);
    }
  }
  __syncthreads();
  if (ok) {
    // 2^e is a normal float (e in [-113, 126]), so v * 2^e is the correctly rounded ldexpf(v, e) without its call.
    float sc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) sc[j] = __int_as_float((exp_s[tx * VEC + j] + 127) << 23);
    uint16_t* o = w16 + (long long)d * K * GH + col0;
    auto store = [&](int k, const V& vv) {
      float v[VEC];
      lanes(vv, v);
      uint16_t h[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) h[j] = __half_as_ushort(__float2half_rn(v[j] * sc[j]));
      if constexpr (VEC == 4) {
        *reinterpret_cast<uint2*>(o + (long long)k * GH) =
            make_uint2(h[0] | (uint32_t(h[1]) << 16), h[2] | (uint32_t(h[3]) << 16));
      } else {
        o[(long long)k * GH] = h[0];
      }
    };
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (ty + b * kSlices < K) store(ty + b * kSlices, first[b]);
    for (int k0 = ty + kFirstRows; k0 < K; k0 += kBatch * kSlices) {
      V vb[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (k0 + b * kSlices < K) vb[b] = load(k0 + b * kSlices);
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (k0 + b * kSlices < K) store(k0 + b * kSlices, vb[b]);
    }
  }
  // h0: per row, the shift that brings its largest finite magnitude into float16's range (0 when it fits). The gate
  // words are zeroed by the call's workspace memset.
  if (h0 != nullptr) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < h0_count;
         i += (long long)gridDim.x * blockDim.x) {
      const float a = fabsf(h0[i]);
      if (a > 65504.f && a <= 3.402823466e38f) {  // finite, beyond float16: biased exponent 142..254, shift 2..114
        // Rare (only an initial state beyond float16's range gets here), so plain atomics.
        atomicMax(gate + 1 + i / h0_width, static_cast<int>(__float_as_uint(a) >> 23) - 127 - 13);
        atomicOr(gate, 1);
      }
    }
  }
}

}  // namespace

int LaunchTcF16Copy(const float* w, int D, int K, int GH, uint16_t* w16, float* col_scale, const float* h0,
                    long long h0_count, int h0_width, int* gate, void* stream) {
  const int col_blocks = (GH + kCols - 1) / kCols;
  const bool vec4 = GH % 4 == 0 && (reinterpret_cast<uintptr_t>(w) & 15) == 0 &&
                    (reinterpret_cast<uintptr_t>(w16) & 7) == 0;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(D * col_blocks);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = static_cast<cudaStream_t>(stream);
  // The launch's own status (cudaGetLastError would also return an earlier, unrelated error of this thread).
  return static_cast<int>(vec4 ? cudaLaunchKernelEx(&cfg, TcF16CopyKernel<4>, w, K, GH, col_blocks, w16, col_scale,
                                                    h0, h0_count, h0_width, gate)
                               : cudaLaunchKernelEx(&cfg, TcF16CopyKernel<1>, w, K, GH, col_blocks, w16, col_scale,
                                                    h0, h0_count, h0_width, gate));
}

}  // namespace cuda_impl
}  // namespace fused_rnn
