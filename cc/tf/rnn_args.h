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

// The attributes of either op.
struct RnnAttrs {
  CellType cell = CellType::kLstm;
  Direction direction = Direction::kForward;
  bool time_major = false;
  bool is_training = false;
  int num_proj = 0;
  float cell_clip = 0.f, proj_clip = 0.f;

  void Read(tensorflow::OpKernelConstruction* ctx, CellType cell_type);
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
};

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
                                RnnOutputs* out);

// The core's arguments for these tensors (host or device pointers alike); `lengths` is where the kernel put them.
RnnForwardArgs MakeForwardArgs(const RnnShape& shape, const RnnInputs& in, const RnnOutputs& out,
                               const int32_t* lengths, bool is_training);

}  // namespace fused_rnn

#endif  // FUSED_RNN_TF_RNN_ARGS_H_
