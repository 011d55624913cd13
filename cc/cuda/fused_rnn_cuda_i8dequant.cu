// INT8 weights run as float32 (CudaTuning::int8_dequant): the int8 recurrent (and projection) kernel dequantized into
// the workspace once per call, W[k][j] = q[k][j] * (1 / scale[k]) (0 for a zero scale, as the int8 kernels take it),
// so that the float32 plan runs on the same weights where it is faster than any int8 plan. Where the float32 weights
// stay on chip anyway (every B=1 layer up to H=1024 on an H100), int8 only adds the decode to each product.
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

bool Vec4(const void* q, int cols, const void* out) {
  return cols % 4 == 0 && (reinterpret_cast<uintptr_t>(q) & 3) == 0 && (reinterpret_cast<uintptr_t>(out) & 15) == 0;
}

}  // namespace

int LaunchI8Dequant(const int8_t* q_rec, const float* s_rec, long long rows_rec, int cols_rec, float* out_rec,
                    const int8_t* q_proj, const float* s_proj, long long rows_proj, int cols_proj, float* out_proj,
                    int* zero_word, int sm_count, void* stream) {
  // Enough blocks to fill the GPU a few times over; each thread strides through both matrices.
  const long long elems = rows_rec * cols_rec + (q_proj ? rows_proj * cols_proj : 0);
  long long blocks = (elems / 4 + kThreads - 1) / kThreads;
  blocks = blocks < 1 ? 1 : (blocks > 8LL * sm_count ? 8LL * sm_count : blocks);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kThreads);
  cfg.stream = static_cast<cudaStream_t>(stream);
  // The launch's own status (cudaGetLastError would also return an earlier, unrelated error of this thread).
  return static_cast<int>(cudaLaunchKernelEx(&cfg, I8DequantKernel, q_rec, s_rec, rows_rec, cols_rec, out_rec,
                                             Vec4(q_rec, cols_rec, out_rec) ? 1 : 0, q_proj, s_proj, rows_proj,
                                             cols_proj, out_proj,
                                             q_proj && Vec4(q_proj, cols_proj, out_proj) ? 1 : 0, zero_word));
}

}  // namespace cuda_impl
}  // namespace fused_rnn
