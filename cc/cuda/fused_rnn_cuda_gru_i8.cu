// Kernel instantiations for one (cell, weight type): split per file so the builds run in parallel.
#include "fused_rnn_cuda_kernel.cuh"

namespace fused_rnn {
namespace cuda_impl {
FUSED_RNN_KERNEL_TABLE(GetKernelGruI8, 1, kWeightI8)
}  // namespace cuda_impl
}  // namespace fused_rnn
