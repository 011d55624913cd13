// The step kernels compiled for avx2 (see BUILD for the flags of this file).
#include "cc/core/simd_avx2.h"
#define FUSED_RNN_ISA_NS avx2
#include "cc/core/cpu_kernels_impl.h"
#include "cc/core/cpu_backward_impl.h"

namespace fused_rnn {
namespace cpu {
const StepKernels kAvx2Kernels = {avx2::Isa::kName, &avx2::LstmGates, &avx2::LstmProjection, &avx2::GruGates,
    &avx2::BwdGates, &avx2::BwdCarry, &avx2::BwdPrep, &avx2::WeightGrad, avx2::kWgStripe, &avx2::TransposeRows,
    &avx2::Activations, /*int8_vnni=*/false, nullptr};
}  // namespace cpu
}  // namespace fused_rnn
