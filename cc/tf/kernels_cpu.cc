// CPU kernels of the fused ops: validate, allocate through TensorFlow, run the core on TF's intra-op pool.
#include <algorithm>
#include <functional>
#include <utility>

#include "cc/core/fused_rnn.h"
#include "cc/tf/rnn_args.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "tensorflow/core/util/work_sharder.h"

namespace fused_rnn {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// TF's intra-op pool as the core's ParallelRunner. The op's own (inter-op) thread takes part too, so it asks for
// one helper fewer than the pool has threads: that keeps one busy thread per core.
class TfPoolRunner : public ParallelRunner {
 public:
  explicit TfPoolRunner(tensorflow::thread::ThreadPool* pool) : pool_(pool) {}
  int NumHelperThreads() const override { return pool_ ? std::max(0, pool_->NumThreads() - 1) : 0; }
  void Schedule(std::function<void()> fn) override { pool_->Schedule(std::move(fn)); }

 private:
  tensorflow::thread::ThreadPool* pool_;
};

// Runs `fn(runner)` with TF's intra-op pool as the core's helpers.
template <typename Fn>
void OnTfPool(OpKernelContext* ctx, Fn fn) {
  const tensorflow::DeviceBase::CpuWorkerThreads* workers = ctx->device()->tensorflow_cpu_worker_threads();
  TfPoolRunner runner(workers ? workers->workers : nullptr);
  fn(&runner);
}

// The forward op for each kind of recurrent weights: float32 (inference or training), or, inference only, INT8
// with per-row scales or float16/bfloat16. The same validation for all, then the narrow weights' own check.
template <RecurrentWeights kWeights>
class FusedRnnCpuOp : public OpKernel {
 public:
  FusedRnnCpuOp(OpKernelConstruction* ctx, CellType cell) : OpKernel(ctx) {
    attrs_.Read(ctx, cell, /*has_is_training=*/kWeights == RecurrentWeights::kFloat32);
  }

  void Compute(OpKernelContext* ctx) override {
    RnnInputs in;
    RnnShape s;
    RnnOutputs out;
    const int32_t* lengths = nullptr;
    bool training = false;
    OP_REQUIRES_OK(ctx, PrepareForward(ctx, attrs_, kWeights, /*check_scale_values=*/true, &in, &s, &out, &lengths,
                                       &training));
    if (s.batch == 0) return;

    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({CpuForwardScratchFloats(s)}), &scratch));
    const RnnForwardArgs args = MakeForwardArgs(s, in, out, lengths, training);
    OnTfPool(ctx, [&](ParallelRunner* runner) { CpuForward(s, args, scratch.flat<float>().data(), runner); });
    if (training) ZeroReservePastLengths(s, lengths, out.reserve->flat<float>().data());
  }

 private:
  RnnAttrs attrs_;
};

template <RecurrentWeights kWeights, CellType kCell>
class FusedCpuOp : public FusedRnnCpuOp<kWeights> {
 public:
  explicit FusedCpuOp(OpKernelConstruction* ctx) : FusedRnnCpuOp<kWeights>(ctx, kCell) {}
};
using FusedLstmCpuOp = FusedCpuOp<RecurrentWeights::kFloat32, CellType::kLstm>;
using FusedGruCpuOp = FusedCpuOp<RecurrentWeights::kFloat32, CellType::kGru>;
using FusedLstmInt8CpuOp = FusedCpuOp<RecurrentWeights::kInt8, CellType::kLstm>;
using FusedGruInt8CpuOp = FusedCpuOp<RecurrentWeights::kInt8, CellType::kGru>;
using FusedLstm16CpuOp = FusedCpuOp<RecurrentWeights::k16Bit, CellType::kLstm>;
using FusedGru16CpuOp = FusedCpuOp<RecurrentWeights::k16Bit, CellType::kGru>;

class FusedRnnGradCpuOp : public OpKernel {
 public:
  FusedRnnGradCpuOp(OpKernelConstruction* ctx, CellType cell) : OpKernel(ctx) {
    attrs_.Read(ctx, cell, /*has_is_training=*/false);
  }

  void Compute(OpKernelContext* ctx) override {
    RnnInputs in;
    RnnShape s;
    OP_REQUIRES_OK(ctx, ValidateRnnInputs(ctx, attrs_, &in, &s));
    const int32_t* lengths = in.sequence_lengths->flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckLengths(lengths, s.batch, s.max_time));
    RnnGradTensors g;
    OP_REQUIRES_OK(ctx, ValidateRnnGradInputs(ctx, s, &g));
    OP_REQUIRES_OK(ctx, AllocateRnnGrads(ctx, s, in, &g));

    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({CpuBackwardScratchFloats(s)}), &scratch));
    const RnnBackwardArgs args = MakeBackwardArgs(s, in, g, lengths);
    OnTfPool(ctx, [&](ParallelRunner* runner) { CpuBackward(s, args, scratch.flat<float>().data(), runner); });
  }

 private:
  RnnAttrs attrs_;
};

class FusedLstmGradCpuOp : public FusedRnnGradCpuOp {
 public:
  explicit FusedLstmGradCpuOp(OpKernelConstruction* ctx) : FusedRnnGradCpuOp(ctx, CellType::kLstm) {}
};
class FusedGruGradCpuOp : public FusedRnnGradCpuOp {
 public:
  explicit FusedGruGradCpuOp(OpKernelConstruction* ctx) : FusedRnnGradCpuOp(ctx, CellType::kGru) {}
};

class CpuIsaOp : public OpKernel {
 public:
  explicit CpuIsaOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = CpuIsaName();
  }
};

REGISTER_KERNEL_BUILDER(Name("FusedRnnCpuIsa").Device(tensorflow::DEVICE_CPU), CpuIsaOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequence").Device(tensorflow::DEVICE_CPU), FusedLstmCpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequence").Device(tensorflow::DEVICE_CPU), FusedGruCpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequenceInt8").Device(tensorflow::DEVICE_CPU), FusedLstmInt8CpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequenceInt8").Device(tensorflow::DEVICE_CPU), FusedGruInt8CpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequence16").Device(tensorflow::DEVICE_CPU), FusedLstm16CpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequence16").Device(tensorflow::DEVICE_CPU), FusedGru16CpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequenceGrad").Device(tensorflow::DEVICE_CPU), FusedLstmGradCpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequenceGrad").Device(tensorflow::DEVICE_CPU), FusedGruGradCpuOp);

}  // namespace
}  // namespace fused_rnn
