// The step kernels compiled for AVX-512 with VNNI (see BUILD for the flags of this file): the same kernels as
// cpu_kernels_avx512.cc, plus the exact-integer INT8 product (cpu_kernels_impl.h, "INT8 with VNNI").
#define FUSED_RNN_AVX512_NS avx512vnni
#define FUSED_RNN_AVX512_NAME "avx512vnni"
#define FUSED_RNN_VNNI 1
#include "cc/core/simd_avx512.h"
#define FUSED_RNN_ISA_NS avx512vnni
#include "cc/core/cpu_kernels_impl.h"
#include "cc/core/cpu_backward_impl.h"

namespace fused_rnn {
namespace cpu {
const StepKernels kAvx512VnniKernels = {avx512vnni::Isa::kName, &avx512vnni::LstmGates, &avx512vnni::LstmProjection,
    &avx512vnni::GruGates, &avx512vnni::BwdGates, &avx512vnni::BwdCarry, &avx512vnni::BwdPrep, &avx512vnni::WeightGrad,
    avx512vnni::kWgStripe, &avx512vnni::TransposeRows, &avx512vnni::Activations, /*int8_vnni=*/true,
    &avx512vnni::PackVnniPanel};
}  // namespace cpu
}  // namespace fused_rnn
