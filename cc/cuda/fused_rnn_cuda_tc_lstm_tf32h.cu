// Tensor-core kernel instantiations for TF32 through float16 (lstm): the float16 kernel on the column-scaled copy of
// float32 U (fused_rnn_cuda_tc_f16copy.cu), the scales undone in the cell update. Its own file, like the others, so
// the builds run in parallel.
#include "fused_rnn_cuda_tc.cuh"

namespace fused_rnn {
namespace cuda_impl {
FUSED_RNN_TC_KERNEL_TABLE(GetKernelTcLstmF16Scaled, 0, kWeightF16, true)
}  // namespace cuda_impl
}  // namespace fused_rnn
