// Small-hidden-size kernel (mode 5) instantiations for one cell, every weight kind (fused_rnn_cuda_small.cuh).
#include "fused_rnn_cuda_small.cuh"

namespace fused_rnn {
namespace cuda_impl {
namespace {
FUSED_RNN_SMALL_TABLE(SmallGruF32, 1, kWeightF32)
FUSED_RNN_SMALL_TABLE(SmallGruF16, 1, kWeightF16)
FUSED_RNN_SMALL_TABLE(SmallGruBF16, 1, kWeightBF16)
FUSED_RNN_SMALL_TABLE(SmallGruI8, 1, kWeightI8)
}  // namespace
KernelFn GetKernelSmallGru(int wk, int nr, int ksl, int cluster) {
  switch (wk) {
    case kWeightF32: return SmallGruF32(nr, ksl, cluster);
    case kWeightF16: return SmallGruF16(nr, ksl, cluster);
    case kWeightBF16: return SmallGruBF16(nr, ksl, cluster);
    case kWeightI8: return SmallGruI8(nr, ksl, cluster);
    default: return nullptr;
  }
}
}  // namespace cuda_impl
}  // namespace fused_rnn
