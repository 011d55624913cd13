// Validation of the fused ops' inputs, shared by the CPU and GPU kernels: every check names the argument, so bad
// input is an InvalidArgument error, never a crash. Fills the core's RnnShape.
#ifndef FUSED_RNN_TF_RNN_ARGS_H_
#define FUSED_RNN_TF_RNN_ARGS_H_

#include <string>

#include "cc/core/fused_rnn.h"
#include "cc/tf/status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace fused_rnn {

// Which forward op a kernel serves: float32 recurrent weights (inference or training), or, inference only, INT8
// weights with per-row scales, or float16/bfloat16 weights.
enum class RecurrentWeights { kFloat32, kInt8, k16Bit };

// The attributes of either op.
struct RnnAttrs {
  CellType cell = CellType::kLstm;
  Direction direction = Direction::kForward;
  bool time_major = false;
  bool is_training = false;
  int num_proj = 0;
  float cell_clip = 0.f, proj_clip = 0.f;

  // Gradient ops have no is_training attribute.
  void Read(tensorflow::OpKernelConstruction* ctx, CellType cell_type, bool has_is_training = true);
};

// Input indices of each op (see ops.cc).
struct RnnInputs {
  const tensorflow::Tensor* x_proj;
  const tensorflow::Tensor* recurrent_kernel;
  const tensorflow::Tensor* projection_kernel;  // LSTM only
  const tensorflow::Tensor* recurrent_bias;     // GRU only
  const tensorflow::Tensor* sequence_lengths;
  const tensorflow::Tensor* initial_h;
  const tensorflow::Tensor* initial_c;  // LSTM only
  const tensorflow::Tensor* recurrent_scale = nullptr;   // INT8 ops only
  const tensorflow::Tensor* projection_scale = nullptr;  // INT8 LSTM only
};

// INT8 ops: reads and checks the scales (shapes; values too with check_values, which needs them in host memory),
// sets shape->int8_weights. Call after ValidateRnnInputs.
absl::Status ValidateInt8Scales(tensorflow::OpKernelContext* ctx, RnnInputs* in, RnnShape* shape,
                                bool check_values = true);

// 16-bit weight ops: sets shape->weight16 from the kernels' dtype (half or bfloat16; the projection kernel of the
// LSTM must match). Call after ValidateRnnInputs.
absl::Status Validate16BitWeights(const RnnInputs& in, RnnShape* shape);

// Reads the inputs of the op in `ctx`, checks every shape, fills `shape`. Lengths are checked on the host by
// CheckLengths (the GPU kernel copies them first).
absl::Status ValidateRnnInputs(tensorflow::OpKernelContext* ctx, const RnnAttrs& attrs, RnnInputs* in,
                                     RnnShape* shape);
absl::Status CheckLengths(const int32_t* lengths, int64_t batch, int64_t max_time);

// The op's outputs, allocated through TF (final_c only for the LSTM; reserve empty unless training).
struct RnnOutputs {
  tensorflow::Tensor* output = nullptr;
  tensorflow::Tensor* final_h = nullptr;
  tensorflow::Tensor* final_c = nullptr;
  tensorflow::Tensor* reserve = nullptr;
};
absl::Status AllocateRnnOutputs(tensorflow::OpKernelContext* ctx, const RnnShape& shape, bool is_training,
                                RnnOutputs* out, bool has_reserve_output = true);

// The gradient ops' extra inputs and outputs. ValidateRnnGradInputs checks them against `shape` (call it after
// ValidateRnnInputs and CheckLengths); AllocateRnnGrads allocates the gradients through TF.
struct RnnGradTensors {
  const tensorflow::Tensor* output = nullptr;
  const tensorflow::Tensor* reserve = nullptr;
  const tensorflow::Tensor* d_output = nullptr;
  const tensorflow::Tensor* d_final_h = nullptr;
  const tensorflow::Tensor* d_final_c = nullptr;  // LSTM only
  tensorflow::Tensor* d_x_proj = nullptr;
  tensorflow::Tensor* d_recurrent_kernel = nullptr;
  tensorflow::Tensor* d_recurrent_bias = nullptr;     // GRU
  tensorflow::Tensor* d_projection_kernel = nullptr;  // LSTM
  tensorflow::Tensor* d_initial_h = nullptr;
  tensorflow::Tensor* d_initial_c = nullptr;  // LSTM
};
absl::Status ValidateRnnGradInputs(tensorflow::OpKernelContext* ctx, const RnnShape& shape, RnnGradTensors* g);
absl::Status AllocateRnnGrads(tensorflow::OpKernelContext* ctx, const RnnShape& shape, const RnnInputs& in,
                              RnnGradTensors* g);
RnnBackwardArgs MakeBackwardArgs(const RnnShape& shape, const RnnInputs& in, const RnnGradTensors& g,
                                 const int32_t* lengths);

// The core's arguments for these tensors (host or device pointers alike); `lengths` is where the kernel put them.
// The core writes the training reserve only at valid positions (t < length); the TF output must not expose the
// allocator's old contents elsewhere, so the kernels zero those positions. Host memory (the CPU kernel).
void ZeroReservePastLengths(const RnnShape& shape, const int32_t* lengths, float* reserve);
// True when some sequence is shorter than the time dimension (the GPU kernel then clears the reserve first).
bool AnyShorterThanMaxTime(const RnnShape& shape, const int32_t* lengths);

RnnForwardArgs MakeForwardArgs(const RnnShape& shape, const RnnInputs& in, const RnnOutputs& out,
                               const int32_t* lengths, bool is_training);

// The forward kernels' common start, CPU and GPU alike: validates the inputs (and the narrow weights' own inputs:
// INT8 scales, with their values when `check_scale_values`, which needs them in host memory; 16-bit dtypes),
// checks the lengths (host memory), allocates the outputs. *training: whether this call keeps a reserve (float32
// weights with is_training). Sets *lengths to the host lengths.
absl::Status PrepareForward(tensorflow::OpKernelContext* ctx, const RnnAttrs& attrs, RecurrentWeights weights,
                            bool check_scale_values, RnnInputs* in, RnnShape* shape, RnnOutputs* out,
                            const int32_t** lengths, bool* training);

}  // namespace fused_rnn

#endif  // FUSED_RNN_TF_RNN_ARGS_H_
