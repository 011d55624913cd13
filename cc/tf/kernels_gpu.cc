// GPU kernels of the fused ops: validate on the host, allocate every buffer through TensorFlow, launch the CUDA
// core (cc/cuda) on TensorFlow's stream. Built only when CUDA is configured (tools/configure.py finds nvcc).
#if GOOGLE_CUDA

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <vector>

#include "cc/core/fused_rnn.h"
#include "cc/core/fused_rnn_cuda.h"
#include "cc/tf/rnn_args.h"
#include "cc/tf/status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tsl/platform/tensor_float_32_utils.h"
#include "xla/stream_executor/stream.h"
#include "xla/stream_executor/stream_executor.h"

namespace fused_rnn {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// Why a shape has no plan: a CUDA call that failed while planning (querying occupancy, raising the shared-memory
// cap) is the device's fault, not the caller's; anything else is a shape this GPU cannot run.
absl::Status PlanError(const char* why) {
  if (CudaMessageIsRuntimeFailure(why)) return absl::InternalError(absl::StrCat("planning the fused RNN: ", why));
  return Invalid("this shape cannot run on this GPU: ", why ? why : "");
}

// Device limits of each CUDA device, read once (cudaGetDeviceProperties is slow).
absl::Status LimitsFor(int ordinal, CudaDeviceLimits* limits) {
  static std::mutex& mu = *new std::mutex;  // leaked with the cache (no destruction at exit)
  static std::map<int, CudaDeviceLimits>* cache = new std::map<int, CudaDeviceLimits>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(ordinal);
  if (it == cache->end()) {
    CudaDeviceLimits fresh;
    if (const char* err = QueryCudaDeviceLimits(ordinal, &fresh)) {
      return absl::InternalError(absl::StrCat("reading the limits of CUDA device ", ordinal, ": ", err));
    }
    it = cache->emplace(ordinal, fresh).first;
  }
  *limits = it->second;
  return absl::OkStatus();
}

// A failed CUDA call as a status; the error is also taken off the runtime's per-thread last-error slot, where the
// core's later launch checks (cudaGetLastError) would otherwise report it as their own.
absl::Status CudaCallFailed(const char* what, cudaError_t e) {
  cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, " failed: ", cudaGetErrorString(e)));
}

// Copies host bytes (a HostMemory input) to the device on `stream`, staged through pageable heap memory. CUDA's API
// synchronisation rules for an asynchronous copy from pageable memory: it "might be synchronous with respect to
// host", or the driver stages it into pinned memory before returning; either way the source has been read when the
// call returns (checked on an H100, driver 580: the copy returned in 8-36 us behind a 0.5 s kernel and the device
// got the values the host buffer held at the call). So the transfer never reads the input after TensorFlow has
// released it; from a pinned source (where TF may place host-memory inputs) the copy would be read later. The
// kernels clamp lengths to [0, T] all the same.
absl::Status HostToDevice(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return absl::OkStatus();
  std::vector<char> staged(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
  const cudaError_t e =
      cudaMemcpyAsync(dst, staged.data(), bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream));
  return e == cudaSuccess ? absl::OkStatus() : CudaCallFailed("copying sequence_lengths to the GPU", e);
}

// The stream's CUDA handle; null would mean the legacy default stream to the core, never TensorFlow's stream.
absl::Status RawStream(stream_executor::Stream* stream, void** raw) {
  *raw = stream->platform_specific_handle().stream;
  if (*raw == nullptr) return absl::InternalError("the GPU stream has no CUDA stream handle");
  return absl::OkStatus();
}

// The forward op for each kind of recurrent weights (see RecurrentWeights). 16-bit tensors are read in place as
// their bit patterns. INT8: the scales stay in device memory, where a quantized model's variables live: as
// HostMemory inputs they would cost a device-to-host copy that drains the stream on every call. So on the GPU only
// their shapes are checked (the CPU kernel also rejects negative or non-finite values; tf_ops.quantize_rows never
// makes them).
template <RecurrentWeights kWeights>
class FusedRnnGpuOp : public OpKernel {
 public:
  FusedRnnGpuOp(OpKernelConstruction* ctx, CellType cell) : OpKernel(ctx) {
    attrs_.Read(ctx, cell, /*has_is_training=*/kWeights == RecurrentWeights::kFloat32);
  }

  void Compute(OpKernelContext* ctx) override {
    RnnInputs in;
    RnnShape s;
    RnnOutputs out;
    const int32_t* lengths_host = nullptr;  // sequence_lengths is in host memory (see the registration)
    bool training = false;
    // The scales stay in device memory: only their shapes are checked (see above).
    OP_REQUIRES_OK(ctx, PrepareForward(ctx, attrs_, kWeights, /*check_scale_values=*/false, &in, &s, &out,
                                       &lengths_host, &training));
    const WeightType weight_type = kWeights == RecurrentWeights::kInt8    ? WeightType::kInt8
                                   : kWeights == RecurrentWeights::kFloat32 ? WeightType::kFloat32
                                   : s.weight16 == Weight16::kFloat16     ? WeightType::kFloat16
                                                                          : WeightType::kBFloat16;
    const int64_t B = s.batch;
    if (B == 0) return;

    stream_executor::Stream* stream = ctx->op_device_context()->stream();
    OP_REQUIRES(ctx, stream != nullptr, absl::InternalError("no GPU stream for the fused RNN op"));
    CudaDeviceLimits limits;
    OP_REQUIRES_OK(ctx, LimitsFor(stream->parent()->device_ordinal(), &limits));
    // TensorFlow's TF32 policy (tf.config.experimental.enable_tensor_float_32_execution; on by default), as its own
    // MatMul and cuDNN kernels follow it: float32 weights may then take TF32 products on tensor cores.
    CudaTuning policy;
    policy.allow_tf32 = tsl::tensor_float_32_execution_enabled() ? 1 : 0;
    const size_t core_bytes = CudaForwardWorkspaceBytes(s, weight_type, limits, &policy);
    char plan[256] = {0};
    if (core_bytes == 0) {
      const char* why = CudaDescribePlan(s, weight_type, limits, &policy, plan, sizeof(plan));
      OP_REQUIRES(ctx, why == nullptr, PlanError(why));
    }
    // Workspace: the core's bytes, then the lengths (256-byte aligned).
    const size_t lengths_offset = (core_bytes + 255) & ~size_t{255};
    Tensor workspace;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT8,
                                           TensorShape({static_cast<int64_t>(lengths_offset + 4 * B)}), &workspace));
    char* ws = reinterpret_cast<char*>(workspace.flat<int8_t>().data());
    void* raw_stream = nullptr;
    OP_REQUIRES_OK(ctx, RawStream(stream, &raw_stream));
    int32_t* lengths_device = reinterpret_cast<int32_t*>(ws + lengths_offset);
    OP_REQUIRES_OK(ctx, HostToDevice(lengths_device, lengths_host, sizeof(int32_t) * B, raw_stream));

    if (training && AnyShorterThanMaxTime(s, lengths_host)) {
      // The core writes the reserve only where t < length; the rest must not be the allocator's old contents.
      const cudaError_t e = cudaMemsetAsync(out.reserve->flat<float>().data(), 0,
                                            sizeof(float) * out.reserve->NumElements(),
                                            static_cast<cudaStream_t>(raw_stream));
      OP_REQUIRES(ctx, e == cudaSuccess, CudaCallFailed("clearing the reserve", e));
    }
    const RnnForwardArgs args = MakeForwardArgs(s, in, out, lengths_device, training);
    const char* err = CudaForward(s, args, weight_type, args.recurrent_kernel_16, args.projection_kernel_16,
                                  core_bytes ? ws : nullptr, core_bytes, raw_stream, limits, &policy);
    // As the backward: a CUDA failure is the device's; anything else the core refuses is the caller's.
    OP_REQUIRES(ctx, err == nullptr,
                err != nullptr && CudaMessageIsRuntimeFailure(err)
                    ? absl::InternalError(absl::StrCat("fused RNN CUDA launch: ", err))
                    : Invalid("fused RNN CUDA launch: ", err ? err : ""));
  }

 private:
  RnnAttrs attrs_;
};

template <RecurrentWeights kWeights, CellType kCell>
class FusedGpuOp : public FusedRnnGpuOp<kWeights> {
 public:
  explicit FusedGpuOp(OpKernelConstruction* ctx) : FusedRnnGpuOp<kWeights>(ctx, kCell) {}
};
using FusedLstmGpuOp = FusedGpuOp<RecurrentWeights::kFloat32, CellType::kLstm>;
using FusedGruGpuOp = FusedGpuOp<RecurrentWeights::kFloat32, CellType::kGru>;
using FusedLstm16GpuOp = FusedGpuOp<RecurrentWeights::k16Bit, CellType::kLstm>;
using FusedGru16GpuOp = FusedGpuOp<RecurrentWeights::k16Bit, CellType::kGru>;
using FusedLstmInt8GpuOp = FusedGpuOp<RecurrentWeights::kInt8, CellType::kLstm>;
using FusedGruInt8GpuOp = FusedGpuOp<RecurrentWeights::kInt8, CellType::kGru>;

// The backward (BPTT) on the GPU: the same validation as the CPU gradient kernel, every buffer from TF's
// allocator, the core's kernels on TF's stream.
class FusedRnnGradGpuOp : public OpKernel {
 public:
  FusedRnnGradGpuOp(OpKernelConstruction* ctx, CellType cell) : OpKernel(ctx) {
    attrs_.Read(ctx, cell, /*has_is_training=*/false);
  }

  void Compute(OpKernelContext* ctx) override {
    RnnInputs in;
    RnnShape s;
    OP_REQUIRES_OK(ctx, ValidateRnnInputs(ctx, attrs_, &in, &s));
    const int32_t* lengths_host = in.sequence_lengths->flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckLengths(lengths_host, s.batch, s.max_time));
    RnnGradTensors g;
    OP_REQUIRES_OK(ctx, ValidateRnnGradInputs(ctx, s, &g));
    OP_REQUIRES_OK(ctx, AllocateRnnGrads(ctx, s, in, &g));
    const int64_t B = s.batch;

    stream_executor::Stream* stream = ctx->op_device_context()->stream();
    OP_REQUIRES(ctx, stream != nullptr, absl::InternalError("no GPU stream for the fused RNN gradient op"));
    const size_t core_bytes = CudaBackwardWorkspaceBytes(s);
    const size_t lengths_offset = (core_bytes + 255) & ~size_t{255};
    Tensor workspace;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT8,
                                           TensorShape({static_cast<int64_t>(lengths_offset + 4 * B + 256)}),
                                           &workspace));
    char* ws = reinterpret_cast<char*>(workspace.flat<int8_t>().data());
    void* raw_stream = nullptr;
    OP_REQUIRES_OK(ctx, RawStream(stream, &raw_stream));
    int32_t* lengths_device = reinterpret_cast<int32_t*>(ws + lengths_offset);
    OP_REQUIRES_OK(ctx, HostToDevice(lengths_device, lengths_host, sizeof(int32_t) * B, raw_stream));
    const RnnBackwardArgs args = MakeBackwardArgs(s, in, g, lengths_device);
    const char* err = CudaBackward(s, args, core_bytes ? ws : nullptr, core_bytes, raw_stream);
    // A CUDA failure is the device's; anything else the core refuses (sizes out of its range) is the caller's.
    OP_REQUIRES(ctx, err == nullptr,
                err != nullptr && CudaMessageIsRuntimeFailure(err)
                    ? absl::InternalError(absl::StrCat("fused RNN CUDA backward: ", err))
                    : Invalid("fused RNN CUDA backward: ", err ? err : ""));
  }

 private:
  RnnAttrs attrs_;
};

class FusedLstmGradGpuOp : public FusedRnnGradGpuOp {
 public:
  explicit FusedLstmGradGpuOp(OpKernelConstruction* ctx) : FusedRnnGradGpuOp(ctx, CellType::kLstm) {}
};
class FusedGruGradGpuOp : public FusedRnnGradGpuOp {
 public:
  explicit FusedGruGradGpuOp(OpKernelConstruction* ctx) : FusedRnnGradGpuOp(ctx, CellType::kGru) {}
};

REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequence").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedLstmGpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequence").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedGruGpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequenceInt8").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedLstmInt8GpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequenceInt8").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedGruInt8GpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequence16").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedLstm16GpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequence16").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedGru16GpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedLSTMSequenceGrad").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedLstmGradGpuOp);
REGISTER_KERNEL_BUILDER(Name("FusedGRUSequenceGrad").Device(tensorflow::DEVICE_GPU).HostMemory("sequence_lengths"),
                        FusedGruGradGpuOp);

}  // namespace
}  // namespace fused_rnn

#endif  // GOOGLE_CUDA
