// The small kernel's wide cluster variant (mode 5, float32 weights, 8 lanes per unit, up to kSmallWideTail chunks
// in shared memory), for both cells (fused_rnn_cuda_small.cuh). Its own file so that it compiles in parallel with
// the other small kernels.
#include "fused_rnn_cuda_small.cuh"

namespace fused_rnn {
namespace cuda_impl {
namespace {
FUSED_RNN_SMALL_WIDE_TABLE(SmallWideLstmF32, 0, kWeightF32)
FUSED_RNN_SMALL_WIDE_TABLE(SmallWideGruF32, 1, kWeightF32)
}  // namespace
KernelFn GetKernelSmallWideLstm(int wk, int nr) { return wk == kWeightF32 ? SmallWideLstmF32(nr) : nullptr; }
KernelFn GetKernelSmallWideGru(int wk, int nr) { return wk == kWeightF32 ? SmallWideGruF32(nr) : nullptr; }
}  // namespace cuda_impl
}  // namespace fused_rnn
