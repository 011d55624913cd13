// Mode 6, the int8 LSTM kernel on integer tensor cores (fused_rnn_cuda_i8mma.cuh), by register tiles per warp.
#include "fused_rnn_cuda_i8mma.cuh"

namespace fused_rnn {
namespace cuda_impl {
KernelFn GetKernelI8MmaLstm(int ta_idx, bool cluster) {
  static const KernelFn table[2][kI8MmaNumTa] = {
      {RnnInt8MmaKernel<2, false>, RnnInt8MmaKernel<4, false>, RnnInt8MmaKernel<8, false>,
       RnnInt8MmaKernel<16, false>, RnnInt8MmaKernel<32, false>},
      {RnnInt8MmaKernel<2, true>, RnnInt8MmaKernel<4, true>, RnnInt8MmaKernel<8, true>, RnnInt8MmaKernel<16, true>,
       RnnInt8MmaKernel<32, true>}};
  if (ta_idx < 0 || ta_idx >= kI8MmaNumTa) return nullptr;
  return table[cluster ? 1 : 0][ta_idx];
}
}  // namespace cuda_impl
}  // namespace fused_rnn
