// Tensor-core kernel instantiations for one (cell, weight type): split per file so the builds run in parallel.
#include "fused_rnn_cuda_tc.cuh"

namespace fused_rnn {
namespace cuda_impl {
FUSED_RNN_TC_KERNEL_TABLE(GetKernelTcGruBF16, 1, kWeightBF16, false)
}  // namespace cuda_impl
}  // namespace fused_rnn
