// INT8 and 16-bit weights run as float32 (CudaTuning::as_float32): the recurrent (and projection) kernel converted
// into the workspace once per call, so that the float32 plan runs on the same weights where it is faster than any
// plan of the narrow kind. int8: W[k][j] = q[k][j] * (1 / scale[k]) (0 for a zero scale, as the int8 kernels take it);
// float16 / bfloat16: widened exactly. Where the float32 weights stay on chip anyway (every B=1 layer up to H=1024 on
// an H100), narrow weights save no bandwidth and only add their decode to each product.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fused_rnn_cuda_params.h"

namespace fused_rnn {
namespace cuda_impl {
namespace {

constexpr int kThreads = 256;

// One matrix [rows][cols] with a scale per row. VEC: 4 columns a thread (cols % 4 == 0, q 4-byte and out 16-byte
// aligned), else 1.
template <int VEC>
__device__ void DequantRows(const int8_t* __restrict__ q, const float* __restrict__ scale, long long rows, int cols,
                            float* __restrict__ out, long long first, long long stride) {
  const long long per_row = cols / VEC;
  const long long n = rows * per_row;
  for (long long i = first; i < n; i += stride) {
    const long long r = i / per_row;
    const float s = __ldg(scale + r);
    const float inv = s != 0.f ? 1.f / s : 0.f;
    if constexpr (VEC == 4) {
      const char4 v = __ldg(reinterpret_cast<const char4*>(q) + i);
      reinterpret_cast<float4*>(out)[i] = make_float4(float(v.x) * inv, float(v.y) * inv, float(v.z) * inv,
                                                      float(v.w) * inv);
    } else {
      out[i] = float(q[i]) * inv;
    }
  }
}

__global__ void __launch_bounds__(kThreads) I8DequantKernel(const int8_t* q_rec, const float* s_rec, long long rows_rec,
                                                            int cols_rec, float* out_rec, int vec_rec,
                                                            const int8_t* q_proj, const float* s_proj,
                                                            long long rows_proj, int cols_proj, float* out_proj,
                                                            int vec_proj, int* zero_word) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *zero_word = 0;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long stride = (long long)gridDim.x * blockDim.x;
  if (vec_rec) DequantRows<4>(q_rec, s_rec, rows_rec, cols_rec, out_rec, first, stride);
  else DequantRows<1>(q_rec, s_rec, rows_rec, cols_rec, out_rec, first, stride);
  if (q_proj == nullptr) return;
  if (vec_proj) DequantRows<4>(q_proj, s_proj, rows_proj, cols_proj, out_proj, first, stride);
  else DequantRows<1>(q_proj, s_proj, rows_proj, cols_proj, out_proj, first, stride);
}

// 16-bit words to float32, n elements; VEC = 4 when n % 4 == 0, the words 8-byte and out 16-byte aligned. BF16:
// bfloat16 (the word is the top half of the float32), else float16.
template <bool BF16>
__device__ __forceinline__ float Widen(uint16_t w) {
  if constexpr (BF16) return __uint_as_float(static_cast<unsigned>(w) << 16);
  else return __half2float(__ushort_as_half(w));
}

template <bool BF16>
__device__ void WidenAll(const uint16_t* __restrict__ w, long long n, float* __restrict__ out, bool vec,
                         long long first, long long stride) {
  if (vec) {
    for (long long i = first; i < n / 4; i += stride) {
      const ushort4 v = __ldg(reinterpret_cast<const ushort4*>(w) + i);
      reinterpret_cast<float4*>(out)[i] = make_float4(Widen<BF16>(v.x), Widen<BF16>(v.y), Widen<BF16>(v.z),
                                                      Widen<BF16>(v.w));
    }
  } else {
    for (long long i = first; i < n; i += stride) out[i] = Widen<BF16>(w[i]);
  }
}

template <bool BF16>
__global__ void __launch_bounds__(kThreads) Widen16Kernel(const uint16_t* w_rec, long long n_rec, float* out_rec,
                                                          int vec_rec, const uint16_t* w_proj, long long n_proj,
                                                          float* out_proj, int vec_proj, int* zero_word) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *zero_word = 0;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long stride = (long long)gridDim.x * blockDim.x;
  WidenAll<BF16>(w_rec, n_rec, out_rec, vec_rec != 0, first, stride);
  if (w_proj != nullptr) WidenAll<BF16>(w_proj, n_proj, out_proj, vec_proj != 0, first, stride);
}

unsigned Blocks(long long elems, int sm_count) {  // enough to fill the GPU a few times over; threads stride
  long long blocks = (elems / 4 + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 8LL * sm_count ? 8LL * sm_count : blocks));
}

bool Vec4(const void* q, int cols, const void* out) {
  return cols % 4 == 0 && (reinterpret_cast<uintptr_t>(q) & 3) == 0 && (reinterpret_cast<uintptr_t>(out) & 15) == 0;
}

}  // namespace

int LaunchI8Dequant(const int8_t* q_rec, const float* s_rec, long long rows_rec, int cols_rec, float* out_rec,
                    const int8_t* q_proj, const float* s_proj, long long rows_proj, int cols_proj, float* out_proj,
                    int* zero_word, int sm_count, void* stream) {
  const long long elems = rows_rec * cols_rec + (q_proj ? rows_proj * cols_proj : 0);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(Blocks(elems, sm_count));
  cfg.blockDim = dim3(kThreads);
  cfg.stream = static_cast<cudaStream_t>(stream);
  // The launch's own status (cudaGetLastError would also return an earlier, unrelated error of this thread).
  return static_cast<int>(cudaLaunchKernelEx(&cfg, I8DequantKernel, q_rec, s_rec, rows_rec, cols_rec, out_rec,
                                             Vec4(q_rec, cols_rec, out_rec) ? 1 : 0, q_proj, s_proj, rows_proj,
                                             cols_proj, out_proj,
                                             q_proj && Vec4(q_proj, cols_proj, out_proj) ? 1 : 0, zero_word));
}

int LaunchWiden16(bool bf16, const uint16_t* w_rec, long long n_rec, float* out_rec, const uint16_t* w_proj,
                  long long n_proj, float* out_proj, int* zero_word, int sm_count, void* stream) {
  auto vec = [](const void* w, long long n, const void* out) {
    return n % 4 == 0 && (reinterpret_cast<uintptr_t>(w) & 7) == 0 && (reinterpret_cast<uintptr_t>(out) & 15) == 0;
  };
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(Blocks(n_rec + (w_proj ? n_proj : 0), sm_count));
  cfg.blockDim = dim3(kThreads);
  cfg.stream = static_cast<cudaStream_t>(stream);
  const int vr = vec(w_rec, n_rec, out_rec) ? 1 : 0, vp = w_proj && vec(w_proj, n_proj, out_proj) ? 1 : 0;
  return static_cast<int>(bf16 ? cudaLaunchKernelEx(&cfg, Widen16Kernel<true>, w_rec, n_rec, out_rec, vr, w_proj,
                                                    n_proj, out_proj, vp, zero_word)
                               : cudaLaunchKernelEx(&cfg, Widen16Kernel<false>, w_rec, n_rec, out_rec, vr, w_proj,
                                                    n_proj, out_proj, vp, zero_word));
}

}  // namespace cuda_impl
}  // namespace fused_rnn
