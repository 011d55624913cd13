// Small-hidden-size kernel (mode 5) instantiations for one cell, every weight kind (fused_rnn_cuda_small.cuh).
#include "fused_rnn_cuda_small.cuh"

namespace fused_rnn {
namespace cuda_impl {
namespace {
FUSED_RNN_SMALL_TABLE(SmallLstmF32, 0, kWeightF32)
FUSED_RNN_SMALL_TABLE(SmallLstmF16, 0, kWeightF16)
FUSED_RNN_SMALL_TABLE(SmallLstmBF16, 0, kWeightBF16)
FUSED_RNN_SMALL_TABLE(SmallLstmI8, 0, kWeightI8)
}  // namespace
KernelFn GetKernelSmallLstm(int wk, int nr, int ksl, int cluster) {
  switch (wk) {
    case kWeightF32: return SmallLstmF32(nr, ksl, cluster);
    case kWeightF16: return SmallLstmF16(nr, ksl, cluster);
    case kWeightBF16: return SmallLstmBF16(nr, ksl, cluster);
    case kWeightI8: return SmallLstmI8(nr, ksl, cluster);
    default: return nullptr;
  }
}
}  // namespace cuda_impl
}  // namespace fused_rnn
