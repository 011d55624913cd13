// The step kernels compiled for avx512 (see BUILD for the flags of this file).
#include "cc/core/simd_avx512.h"
#define FUSED_RNN_ISA_NS avx512
#include "cc/core/cpu_kernels_impl.h"
#include "cc/core/cpu_backward_impl.h"

namespace fused_rnn {
namespace cpu {
const StepKernels kAvx512Kernels = {avx512::Isa::kName, &avx512::LstmGates, &avx512::LstmProjection, &avx512::GruGates,
    &avx512::BwdGates, &avx512::BwdCarry, &avx512::BwdPrep, &avx512::WeightGrad, avx512::kWgStripe, &avx512::TransposeRows,
    &avx512::Activations, /*int8_vnni=*/false, nullptr};
}  // namespace cpu
}  // namespace fused_rnn
