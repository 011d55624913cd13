// The step kernels compiled for portable (see BUILD for the flags of this file).
#include "cc/core/simd_portable.h"
#define FUSED_RNN_ISA_NS portable
#include "cc/core/cpu_kernels_impl.h"
#include "cc/core/cpu_backward_impl.h"

namespace fused_rnn {
namespace cpu {
const StepKernels kPortableKernels = {portable::Isa::kName, &portable::LstmGates, &portable::LstmProjection, &portable::GruGates,
    &portable::BwdGates, &portable::BwdCarry, &portable::BwdPrep, &portable::WeightGrad, portable::kWgStripe, &portable::TransposeRows,
    &portable::Activations, /*int8_vnni=*/false, nullptr};
}  // namespace cpu
}  // namespace fused_rnn
