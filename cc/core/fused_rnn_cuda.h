// CUDA entry of the framework-free core: plain C++17 declarations, no CUDA or TensorFlow headers needed to include
// this file. Semantics (layouts, gate orders, ragged lengths, reverse direction, zeros past length, final states,
// training reserve) are exactly those of fused_rnn.h; every pointer in RnnForwardArgs is a DEVICE pointer here.
//
// The core never allocates device memory: the caller passes a workspace of CudaForwardWorkspaceBytes() bytes
// (any alignment of 256 bytes or more; contents need not be initialised) and the stream to run on. Everything the
// call enqueues goes on that stream and can be captured into a CUDA graph: at most one cudaMemsetAsync on the
// workspace and one kernel, except for TF32 through float16 (CudaTuning::tf32_exchange16): a memset, the kernel that
// copies U to float16, and two recurrence kernels of which one returns at entry; and for INT8 or 16-bit weights run
// as float32 (CudaTuning::as_float32): the kernel that converts them into the workspace before the recurrence kernel.
//
// Weights: the recurrent kernel [D, R, G*H] and the projection kernel [D, H, P] are read either as float32
// (args.recurrent_kernel / args.projection_kernel) or, for WeightType kFloat16 / kBFloat16, from the 16-bit copies
// passed separately in the same layouts (the float32 pointers in args are then ignored and may be null), or, for
// kInt8 (with shape.int8_weights set), from args.recurrent_kernel_q8 / projection_kernel_q8 with their per-row
// scales args.recurrent_scale [D, R] / projection_scale [D, H] (W[k][j] = q[k][j] / scale[k], the scheme of the CPU
// path; the int8 kernels multiply h[k] by 1 / scale[k] rather than dequantizing each weight, and where the float32
// kernel is faster the call dequantizes into the workspace first: CudaTuning::as_float32, which widens 16-bit
// weights the same way). Math is float32 with
// float32 accumulation in every case; x_proj, states, outputs and the reserve are float32.
#ifndef FUSED_RNN_CORE_FUSED_RNN_CUDA_H_
#define FUSED_RNN_CORE_FUSED_RNN_CUDA_H_

#include <cstddef>
#include <cstdint>

#include "fused_rnn.h"

namespace fused_rnn {

enum class WeightType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3 };

// What the planner needs to know about the device the call runs on. Fill it with QueryCudaDeviceLimits() (or by
// hand from cudaGetDeviceProperties). The plan, and so the workspace size, depends only on these fields.
struct CudaDeviceLimits {
  int sm_count = 0;
  int max_shared_bytes_per_block_optin = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int max_shared_bytes_per_sm = 0;           // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int max_threads_per_sm = 0;
  int max_regs_per_sm = 0;                   // 32-bit registers
  int l2_bytes = 0;
  int cc_major = 0, cc_minor = 0;
  int cooperative_launch = 0;                // cudaDevAttrCooperativeLaunch
};

// Fills *limits for `device`. Returns nullptr on success, else a static message.
const char* QueryCudaDeviceLimits(int device, CudaDeviceLimits* limits);

// Optional overrides of the planner, for tests and benchmarks (null = automatic). A forced choice that cannot run
// makes CudaForward return an error rather than silently pick something else.
struct CudaTuning {
  int mode = -1;             // -1 auto; 0 one block per (direction, row group), no grid sync; 1 multi-block with
                             // tagged exchange (flag in data); 2 multi-block with a counter barrier; 3 (sm_90) a
                             // thread-block cluster of 2..8 blocks per (direction, row group), exchange through
                             // distributed shared memory + the cluster barrier; 4 (sm_80+, 16-bit or float32
                             // weights, no projection) tensor cores: mma.sync with U resident as fragments, h_{t-1}
                             // rounded to the weight type for the product (float32 accumulation and cell math;
                             // float32 weights: 3xTF32 products, float32 accuracy, auto from batch 16; or TF32
                             // products with allow_tf32, auto from batch 8); 5 the
                             // small-hidden-size kernel: one block per (direction, batch row) with the whole
                             // recurrent kernel on chip (no projection; 4 or 8 lanes per unit; H up to ~100 float32, ~140
                             // 16-bit), one __syncthreads per step, blocks independent; on sm_90 also with the units
                             // split over a thread-block cluster of 2-8 blocks per row (h to every member by st.async
                             // and transaction barriers; H up to 256), see units_per_block; 6 (sm_80+, int8 LSTM,
                             // batch <= 2, a projection clip with a projection) integer tensor cores: mma.sync
                             // s8 x u8 with h as byte planes of a 31-bit fixed point (auto with a projection)
  int units_per_block = 0;   // modes 1-3: hidden units owned by one block (0 = auto); mode 5 (sm_90): a cluster of
                             // ceil(H / units_per_block) <= 8 blocks shares the units (>= H: one block)
  int rows_per_block = 0;    // modes 0 and 3: batch rows per block (0 = auto)
  int max_reg_chunks = -1;   // cap on weight chunks held in registers (-1 = auto; 0 = stream everything; mode 5
                             // keeps at most 2 chunks out of registers)
  int stream_location = -1;  // -1 auto; 0 streamed weights in shared memory; 1 in the workspace (L2/HBM)
  int lanes_per_unit = 0;    // k-split lanes per unit in a warp, power of 2 <= 32 (0 = auto; mode 5: 4 or 8)
  int stage_weights = -1;    // modes 0-3: -1 auto (the prologue copies the weights through shared memory when an
                             // area fits), 0 each thread loads its own weights from global memory, n > 0 (tests)
                             // as auto with the area capped at n chunks, so that the copy takes several passes;
                             // mode 5 stages only when n > 0 (unstaged was faster wherever it was timed)
  int proj_reduce = -1;      // mode 1 with an even projection width: -1 auto, 0 phase B fetches all of m, 1 phase B
                             // as a reduce-scatter of the blocks' partial sums (see KernelParams::proj_rs)
  // Precision policy, not a tuning: 1 lets float32 weights run their tensor-core plans (mode 4) with TF32 products
  // (U and h_{t-1} rounded to 10 mantissa bits for the product, float32 accumulation, cell math and state), as
  // cuDNN's CUDNN_DEFAULT_MATH does for float32 on sm_80+; 0 (the default) keeps float32 products exact to ~1e-7
  // (3xTF32). TensorFlow's kernels pass tensor_float_32_execution_enabled() (TensorFlow's default: on).
  int allow_tf32 = 0;
  // With allow_tf32, float32 weights and a tensor-core plan: -1 auto (by the planner's cost), 0 never, 1 always
  // where it applies: run the float16 tensor-core kernel on a copy of U made per call (each column scaled by a power
  // of two, so the 10-bit mantissa of TF32 is kept and nothing overflows) with h exchanged as float16 (half the
  // bytes of the float32 exchange; |h| <= 1 for every h the recurrence makes, and an h below 2^-14 becomes a float16
  // subnormal, absolute error at most 2^-25, far under TF32's rounding of the larger ones). An initial state with a
  // finite value beyond float16's range (|h0| > 65504) is detected on the device, and the float32-exchange TF32
  // kernel, launched too, runs instead. Workspace: the larger of the two plans' own, plus 256 bytes, D * G * H * 4
  // (column scales) and D * R * G * H * 2 (the copy); CudaForwardWorkspaceBytes says it all.
  int tf32_exchange16 = -1;
  int64_t* debug_clock = nullptr;  // test-only: device buffer of 166 int64 phase timestamps (see the .cu)
  int test_raise_watchdog = 0;     // test-only: 1 raises the watchdog word before the launch, as a timed-out wait
                                   // would, so the harness can check that the outputs come back poisoned (NaN)
  int test_tf32h_skip = 0;         // test-only, TF32 through float16 (measuring what each launch costs): bit 0 skips
                                   // the copy of U (the last call's copy is used), bit 1 the fallback's launch
  // INT8 and 16-bit weights (kInt8, kFloat16, kBFloat16): -1 auto, 0 never, 1 always (except where mode 6 runs):
  // convert the narrow kernels into the workspace once per call (int8: W = q * (1 / scale); 16-bit: widened exactly)
  // and run the float32 plan of the same shape on them, with exact float32 products (allow_tf32 is not applied: the
  // narrow kinds' general kernels compute in float32 on their decoded weights; their tensor-core plans round h to 16
  // bits, which the float32 plan does not). Auto takes it when the planner's cost of the float32 plan plus the
  // conversion is below the best plan of the weights' own kind, and only when mode is auto: where float32 weights stay
  // on chip anyway, narrow weights only add their decode to every product. Workspace: the float32 plan's (at least
  // 256 bytes), then D * R * G * H * 4 and D * H * P * 4 bytes, each rounded up to 256 (CudaForwardWorkspaceBytes).
  int as_float32 = -1;
};

// Bytes of workspace CudaForward needs for this shape (0 is possible: then workspace may be null).
// Returns 0 also when the shape cannot run; CudaForward / CudaDescribePlan then report why.
// The training reserve (args.reserve != null) is written by every plan; it needs no extra workspace.
size_t CudaForwardWorkspaceBytes(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                                 const CudaTuning* tuning = nullptr);

// Enqueues the whole forward recurrence on `stream` (a cudaStream_t; null = legacy default stream).
// Returns nullptr on success or a message saying what is wrong (the message is static or thread-local: valid until
// this thread's next call). Never blocks on the device and never aborts: a multi-block plan whose blocks cannot
// all be resident is refused here (cooperative launch), and device-side waits are bounded by a watchdog that, if it
// ever fires, sets the int at workspace offset 0 to 1 (see CudaWatchdogFired) instead of hanging, and then every
// output (sequence output, final states, reserve) is overwritten with NaN on the device, so a caller that never
// reads the word still cannot take the result for a valid one.
const char* CudaForward(const RnnShape& shape, const RnnForwardArgs& device_args, WeightType weight_type,
                        const void* recurrent_kernel_16bit, const void* projection_kernel_16bit, void* workspace,
                        size_t workspace_bytes, void* stream, const CudaDeviceLimits& limits,
                        const CudaTuning* tuning = nullptr);

// Writes a one-line description of the plan (mode, grid, threads, register/shared/global weight split) into
// buf. Returns nullptr on success or the reason the shape cannot run.
const char* CudaDescribePlan(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                             const CudaTuning* tuning, char* buf, size_t buf_len);

// True when `message` (from CudaForward, CudaDescribePlan or CudaBackward) reports a failed CUDA runtime call (a
// device or driver fault: the caller's "internal" error), false when it says the shape cannot run on this device
// (the caller's "invalid argument").
// Such messages, and only they, start with kCudaRuntimeFailurePrefix.
constexpr char kCudaRuntimeFailurePrefix[] = "fused_rnn CUDA runtime: ";
bool CudaMessageIsRuntimeFailure(const char* message);

// Host-side helper for tests: synchronously reads the watchdog word of a workspace after the stream finished.
// Returns 1 if a device-side wait timed out (outputs invalid), 0 if not, -1 on a CUDA error.
int CudaWatchdogFired(const void* workspace, size_t workspace_bytes);


// ---- backward (training) ------------------------------------------------------------------------------------
// Backpropagation through time for a forward that ran with a reserve (float32 weights; INT8 and 16-bit weights
// are inference-only). Every pointer in RnnBackwardArgs is a DEVICE pointer; semantics are those of CpuBackward
// (fused_rnn.h). d_final_h / d_final_c may be null (zero), as may initial_h / initial_c (zero initial state) and
// sequence_lengths (all max_time). Enqueues one persistent kernel for the steps when the hidden size is small (no
// projection), else a few kernels per timestep; then the weight-gradient products and a cudaMemcpyAsync or
// cudaMemsetAsync or two, all on `stream` (capturable into a CUDA graph); deterministic (no atomics). Workspace: at
// least CudaBackwardWorkspaceBytes(shape) bytes, 256-byte aligned (may be null when that is 0).
size_t CudaBackwardWorkspaceBytes(const RnnShape& shape);
// Optional override of the backward's plan, for tests and benchmarks (null = automatic).
struct CudaBackwardTuning {
  int persistent = -1;  // -1 auto; 0 the per-step kernels; 1 the persistent small-H kernel (one block per
                        // direction and row, U in shared memory; an error when the shape cannot run it)
  int small_reg_rows = -1;  // the persistent kernel: k-rows of each thread's slice of U held in registers
                            // (-1 auto; 0, 8, 16 or 32; others are an error)
};
const char* CudaBackward(const RnnShape& shape, const RnnBackwardArgs& device_args, void* workspace,
                         size_t workspace_bytes, void* stream, const CudaBackwardTuning* tuning = nullptr);

}  // namespace fused_rnn

#endif  // FUSED_RNN_CORE_FUSED_RNN_CUDA_H_
