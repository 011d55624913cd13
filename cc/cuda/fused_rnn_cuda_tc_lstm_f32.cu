// Tensor-core kernel instantiations for one (cell, weight type): split per file so the builds run in parallel.
#include "fused_rnn_cuda_tc.cuh"

namespace fused_rnn {
namespace cuda_impl {
FUSED_RNN_TC_F32_KERNEL_TABLE(GetKernelTcLstmF32, 0)
}  // namespace cuda_impl
}  // namespace fused_rnn
