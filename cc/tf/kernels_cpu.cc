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

class FusedRnnCpuOp : public OpKernel {
 public:
  FusedRnnCpuOp(OpKernelConstruction* ctx, CellType cell) : OpKernel(ctx) { attrs_.Read(ctx, cell); }

  void Compute(OpKernelContext* ctx) override {
    RnnInputs in;
    RnnShape s;
    OP_REQUIRES_OK(ctx, ValidateRnnInputs(ctx, attrs_, &in, &s));
    const int32_t* lengths = in.sequence_lengths->flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckLengths(lengths, s.batch, s.max_time));
    const int64_t B = s.batch;

    RnnOutputs out;
    OP_REQUIRES_OK(ctx, AllocateRnnOutputs(ctx, s, attrs_.is_training, &out));
    if (B == 0) return;

    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({CpuForwardScratchFloats(s)}), &scratch));

    const RnnForwardArgs args = MakeForwardArgs(s, in, out, lengths, attrs_.is_training);

    const tensorflow::DeviceBase::CpuWorkerThreads* workers = ctx->device()->tensorflow_cpu_worker_threads();
    TfPoolRunner runner(workers ? workers->workers : nullptr);
    CpuForward(s, args, scratch.flat<float>().data(), &runner);
    if (attrs_.is_training) ZeroReservePastLengths(s, lengths, out.reserve->flat<float>().data());
  }

 private:
  RnnAttrs attrs_;
};

class FusedLstmCpuOp : public FusedRnnCpuOp {
 public:
  explicit FusedLstmCpuOp(OpKernelConstruction* ctx) : FusedRnnCpuOp(ctx, CellType::kLstm) {}
};
class FusedGruCpuOp : public FusedRnnCpuOp {
 public:
  explicit FusedGruCpuOp(OpKernelConstruction* ctx) : FusedRnnCpuOp(ctx, CellType::kGru) {}
};

// Narrow recurrent weights, inference only: INT8 with per-row scales, or float16/bfloat16. The same validation as
// the float op, then the weights' own check, then the core's narrow panels.
enum class Narrow { kInt8, k16Bit };

template <Narrow kNarrow>
class FusedRnnNarrowCpuOp : public OpKernel {
 public:
  FusedRnnNarrowCpuOp(OpKernelConstruction* ctx, CellType cell) : OpKernel(ctx) {
    attrs_.Read(ctx, cell, /*has_is_training=*/false);
  }

  void Compute(OpKernelContext* ctx) override {
    RnnInputs in;
    RnnShape s;
    OP_REQUIRES_OK(ctx, ValidateRnnInputs(ctx, attrs_, &in, &s));
    if (kNarrow == Narrow::kInt8) {
      OP_REQUIRES_OK(ctx, ValidateInt8Scales(ctx, &in, &s));
    } else {
      OP_REQUIRES_OK(ctx, Validate16BitWeights(in, &s));
    }
    const int32_t* lengths = in.sequence_lengths->flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckLengths(lengths, s.batch, s.max_time));
    RnnOutputs out;
    OP_REQUIRES_OK(ctx, AllocateRnnOutputs(ctx, s, /*is_training=*/false, &out, /*has_reserve_output=*/false));
    if (s.batch == 0) return;
    Tensor scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({CpuForwardScratchFloats(s)}), &scratch));
    const tensorflow::DeviceBase::CpuWorkerThreads* workers = ctx->device()->tensorflow_cpu_worker_threads();
    TfPoolRunner runner(workers ? workers->workers : nullptr);
    CpuForward(s, MakeForwardArgs(s, in, out, lengths, false), scratch.flat<float>().data(), &runner);
  }

 private:
  RnnAttrs attrs_;
};

template <Narrow kNarrow, CellType kCell>
class FusedNarrowCpuOp : public FusedRnnNarrowCpuOp<kNarrow> {
 public:
  explicit FusedNarrowCpuOp(OpKernelConstruction* ctx) : FusedRnnNarrowCpuOp<kNarrow>(ctx, kCell) {}
};
using FusedLstmInt8CpuOp = FusedNarrowCpuOp<Narrow::kInt8, CellType::kLstm>;
using FusedGruInt8CpuOp = FusedNarrowCpuOp<Narrow::kInt8, CellType::kGru>;
using FusedLstm16CpuOp = FusedNarrowCpuOp<Narrow::k16Bit, CellType::kLstm>;
using FusedGru16CpuOp = FusedNarrowCpuOp<Narrow::k16Bit, CellType::kGru>;

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
    const tensorflow::DeviceBase::CpuWorkerThreads* workers = ctx->device()->tensorflow_cpu_worker_threads();
    TfPoolRunner runner(workers ? workers->workers : nullptr);
    CpuBackward(s, MakeBackwardArgs(s, in, g, lengths), scratch.flat<float>().data(), &runner);
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
