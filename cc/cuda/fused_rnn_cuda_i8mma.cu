// Mode 6, the int8 LSTM kernel on integer tensor cores (fused_rnn_cuda_i8mma.cuh), by register tiles per warp.
#include "fused_rnn_cuda_i8mma.cuh"

namespace fused_rnn {
namespace cuda_impl {
KernelFn GetKernelI8MmaLstm(int ta_idx) {
  static const KernelFn table[kI8MmaNumTa] = {RnnInt8MmaKernel<2>, RnnInt8MmaKernel<4>, RnnInt8MmaKernel<8>,
                                              RnnInt8MmaKernel<16>, RnnInt8MmaKernel<32>};
  if (ta_idx < 0 || ta_idx >= kI8MmaNumTa) return nullptr;
  return table[ta_idx];
}
}  // namespace cuda_impl
}  // namespace fused_rnn
