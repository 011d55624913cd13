// extern "C" face of the CUDA core for the ctypes test/benchmark driver (tools/gpu/driver.py). Test-only.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "../../cc/core/fused_rnn_cuda.h"

namespace {

using fused_rnn::CudaDeviceLimits;
using fused_rnn::CudaTuning;
using fused_rnn::RnnShape;

// shape: cell, direction, max_time, batch, num_units, num_proj, time_major; clips: cell_clip, proj_clip.
RnnShape MakeShape(const int64_t* shape, const float* clips) {
  RnnShape s;
  s.cell = static_cast<fused_rnn::CellType>(shape[0]);
  s.direction = static_cast<fused_rnn::Direction>(shape[1]);
  s.max_time = shape[2];
  s.batch = shape[3];
  s.num_units = shape[4];
  s.num_proj = shape[5];
  s.time_major = shape[6] != 0;
  s.cell_clip = clips[0];
  s.proj_clip = clips[1];
  return s;
}

// tuning (nullable): mode, units_per_block, rows_per_block, max_reg_chunks, stream_location, lanes_per_unit,
// stage_weights, proj_reduce, allow_tf32, tf32_exchange16, as_float32.
int64_t* g_debug_clock = nullptr;  // test-only phase timestamps for the next calls (frg_set_debug_clock)
int g_test_raise_watchdog = 0;     // test-only: the next calls start with the watchdog raised (frg_set_test_watchdog)
int g_test_tf32h_skip = 0;         // test-only: CudaTuning::test_tf32h_skip (frg_set_test_tf32h_skip)
int g_backward_persistent = -1;  // the backward's plan (frg_set_backward_persistent)
int g_backward_reg_rows = -1;    // the persistent backward's register rows (frg_set_backward_reg_rows)

CudaTuning MakeTuning(const int* t) {
  CudaTuning tun;
  tun.debug_clock = g_debug_clock;
  tun.test_raise_watchdog = g_test_raise_watchdog;
  tun.test_tf32h_skip = g_test_tf32h_skip;
  if (t) {
    tun.mode = t[0];
    tun.units_per_block = t[1];
    tun.rows_per_block = t[2];
    tun.max_reg_chunks = t[3];
    tun.stream_location = t[4];
    tun.lanes_per_unit = t[5];
    tun.stage_weights = t[6];
    tun.proj_reduce = t[7];
    tun.allow_tf32 = t[8];
    tun.tf32_exchange16 = t[9];
    tun.as_float32 = t[10];
  }
  return tun;
}

CudaDeviceLimits MakeLimits(const int* l) {
  CudaDeviceLimits lim;
  lim.sm_count = l[0];
  lim.max_shared_bytes_per_block_optin = l[1];
  lim.max_shared_bytes_per_sm = l[2];
  lim.max_threads_per_sm = l[3];
  lim.max_regs_per_sm = l[4];
  lim.l2_bytes = l[5];
  lim.cc_major = l[6];
  lim.cc_minor = l[7];
  lim.cooperative_launch = l[8];
  return lim;
}

}  // namespace

extern "C" {

// limits_out: 9 ints in the order of MakeLimits.
const char* frg_query_limits(int device, int* limits_out) {
  CudaDeviceLimits lim;
  if (const char* err = fused_rnn::QueryCudaDeviceLimits(device, &lim)) return err;
  const int v[9] = {lim.sm_count, lim.max_shared_bytes_per_block_optin, lim.max_shared_bytes_per_sm,
                    lim.max_threads_per_sm, lim.max_regs_per_sm, lim.l2_bytes, lim.cc_major, lim.cc_minor,
                    lim.cooperative_launch};
  std::memcpy(limits_out, v, sizeof(v));
  return nullptr;
}

int64_t frg_workspace_bytes(const int64_t* shape, const float* clips, int weight_type, const int* limits,
                            const int* tuning) {
  const CudaTuning tun = MakeTuning(tuning);
  RnnShape s = MakeShape(shape, clips);
  s.int8_weights = weight_type == static_cast<int>(fused_rnn::WeightType::kInt8);  // as frg_forward's shape
  return static_cast<int64_t>(fused_rnn::CudaForwardWorkspaceBytes(
      s, static_cast<fused_rnn::WeightType>(weight_type), MakeLimits(limits), &tun));
}

const char* frg_describe(const int64_t* shape, const float* clips, int weight_type, const int* limits,
                         const int* tuning, char* buf, int64_t buf_len) {
  const CudaTuning tun = MakeTuning(tuning);
  RnnShape s = MakeShape(shape, clips);
  s.int8_weights = weight_type == static_cast<int>(fused_rnn::WeightType::kInt8);  // as frg_forward's shape
  return fused_rnn::CudaDescribePlan(s, static_cast<fused_rnn::WeightType>(weight_type), MakeLimits(limits), &tun,
                                     buf, static_cast<size_t>(buf_len));
}

// ptrs (device addresses, 0 = null): x_proj, recurrent_kernel, recurrent_bias, projection_kernel, sequence_lengths,
// initial_h, initial_c, output, final_h, final_c, reserve, recurrent_kernel_16bit, projection_kernel_16bit; for
// weight_type 3 (int8) slots 11 and 12 hold the int8 kernels and two more follow: recurrent_scale,
// projection_scale.
const char* frg_forward(const int64_t* shape, const float* clips, int weight_type, const uint64_t* ptrs,
                        uint64_t workspace, int64_t workspace_bytes, uint64_t stream, const int* limits,
                        const int* tuning) {
  fused_rnn::RnnForwardArgs a;
  a.x_proj = reinterpret_cast<const float*>(ptrs[0]);
  a.recurrent_kernel = reinterpret_cast<const float*>(ptrs[1]);
  a.recurrent_bias = reinterpret_cast<const float*>(ptrs[2]);
  a.projection_kernel = reinterpret_cast<const float*>(ptrs[3]);
  a.sequence_lengths = reinterpret_cast<const int32_t*>(ptrs[4]);
  a.initial_h = reinterpret_cast<const float*>(ptrs[5]);
  a.initial_c = reinterpret_cast<const float*>(ptrs[6]);
  a.output = reinterpret_cast<float*>(ptrs[7]);
  a.final_h = reinterpret_cast<float*>(ptrs[8]);
  a.final_c = reinterpret_cast<float*>(ptrs[9]);
  a.reserve = reinterpret_cast<float*>(ptrs[10]);
  RnnShape s = MakeShape(shape, clips);
  if (weight_type == static_cast<int>(fused_rnn::WeightType::kInt8)) {
    s.int8_weights = true;
    a.recurrent_kernel_q8 = reinterpret_cast<const int8_t*>(ptrs[11]);
    a.projection_kernel_q8 = reinterpret_cast<const int8_t*>(ptrs[12]);
    a.recurrent_scale = reinterpret_cast<const float*>(ptrs[13]);
    a.projection_scale = reinterpret_cast<const float*>(ptrs[14]);
  }
  const CudaTuning tun = MakeTuning(tuning);
  return fused_rnn::CudaForward(s, a, static_cast<fused_rnn::WeightType>(weight_type),
                                reinterpret_cast<const void*>(ptrs[11]), reinterpret_cast<const void*>(ptrs[12]),
                                reinterpret_cast<void*>(workspace), static_cast<size_t>(workspace_bytes),
                                reinterpret_cast<void*>(stream), MakeLimits(limits), &tun);
}

int64_t frg_backward_workspace_bytes(const int64_t* shape, const float* clips) {
  return static_cast<int64_t>(fused_rnn::CudaBackwardWorkspaceBytes(MakeShape(shape, clips)));
}

// ptrs (device addresses, 0 = null): recurrent_kernel, projection_kernel, sequence_lengths, initial_h, initial_c,
// output, reserve, d_output, d_final_h, d_final_c, d_x_proj, d_recurrent_kernel, d_recurrent_bias,
// d_projection_kernel, d_initial_h, d_initial_c.
const char* frg_backward(const int64_t* shape, const float* clips, const uint64_t* ptrs, uint64_t workspace,
                         int64_t workspace_bytes, uint64_t stream) {
  fused_rnn::RnnBackwardArgs a;
  auto f = [&](int i) { return reinterpret_cast<float*>(ptrs[i]); };
  a.recurrent_kernel = f(0);
  a.projection_kernel = f(1);
  a.sequence_lengths = reinterpret_cast<const int32_t*>(ptrs[2]);
  a.initial_h = f(3);
  a.initial_c = f(4);
  a.output = f(5);
  a.reserve = f(6);
  a.d_output = f(7);
  a.d_final_h = f(8);
  a.d_final_c = f(9);
  a.d_x_proj = f(10);
  a.d_recurrent_kernel = f(11);
  a.d_recurrent_bias = f(12);
  a.d_projection_kernel = f(13);
  a.d_initial_h = f(14);
  a.d_initial_c = f(15);
  fused_rnn::CudaBackwardTuning tuning;
  tuning.persistent = g_backward_persistent;
  tuning.small_reg_rows = g_backward_reg_rows;
  return fused_rnn::CudaBackward(MakeShape(shape, clips), a, reinterpret_cast<void*>(workspace),
                                 static_cast<size_t>(workspace_bytes), reinterpret_cast<void*>(stream), &tuning);
}

// The backward's plan for the next frg_backward calls: -1 automatic, 0 per-step kernels, 1 the persistent kernel.
void frg_set_backward_persistent(int persistent) { g_backward_persistent = persistent; }
// The persistent backward's U rows per thread held in registers for the next calls: -1 automatic, 0, 8, 16, 32.
void frg_set_backward_reg_rows(int rows) { g_backward_reg_rows = rows; }

void frg_set_debug_clock(uint64_t device_ptr) { g_debug_clock = reinterpret_cast<int64_t*>(device_ptr); }

void frg_set_test_watchdog(int raise) { g_test_raise_watchdog = raise; }

void frg_set_test_tf32h_skip(int bits) { g_test_tf32h_skip = bits; }

// 1 when a message of the core reports a failed CUDA call (the TF kernel's Internal error), 0 when it says the
// shape cannot run on this device (its InvalidArgument).
int frg_message_is_runtime_failure(const char* message) {
  return fused_rnn::CudaMessageIsRuntimeFailure(message) ? 1 : 0;
}

int frg_watchdog(uint64_t workspace, int64_t workspace_bytes) {
  return fused_rnn::CudaWatchdogFired(reinterpret_cast<const void*>(workspace), static_cast<size_t>(workspace_bytes));
}

// Plain device memory for the torch-free harness mode (driver.py --sanitize-cases / --coresidency-check): the same
// CUDA runtime instance as the core, so compute-sanitizer sees one runtime, no framework allocator and no cuDNN.
// Each returns the cudaError_t code (0 = success); frg_error_string names one.
int frg_malloc(uint64_t* ptr, int64_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes));
  *ptr = reinterpret_cast<uint64_t>(p);
  return static_cast<int>(e);
}
int frg_free(uint64_t ptr) { return static_cast<int>(cudaFree(reinterpret_cast<void*>(ptr))); }
int frg_memcpy_h2d(uint64_t dst, const void* src, int64_t bytes) {
  return static_cast<int>(cudaMemcpy(reinterpret_cast<void*>(dst), src, static_cast<size_t>(bytes),
                                     cudaMemcpyHostToDevice));
}
int frg_memcpy_d2h(void* dst, uint64_t src, int64_t bytes) {
  return static_cast<int>(cudaMemcpy(dst, reinterpret_cast<const void*>(src), static_cast<size_t>(bytes),
                                     cudaMemcpyDeviceToHost));
}
int frg_memset(uint64_t ptr, int value, int64_t bytes) {
  return static_cast<int>(cudaMemset(reinterpret_cast<void*>(ptr), value, static_cast<size_t>(bytes)));
}
int frg_synchronize() { return static_cast<int>(cudaDeviceSynchronize()); }
int frg_last_error() { return static_cast<int>(cudaGetLastError()); }
int frg_device_reset() { return static_cast<int>(cudaDeviceReset()); }
const char* frg_error_string(int e) { return cudaGetErrorString(static_cast<cudaError_t>(e)); }
int frg_device_name(int device, char* buf, int buf_len) {
  cudaDeviceProp prop;
  const cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e == cudaSuccess) std::snprintf(buf, static_cast<size_t>(buf_len), "%s", prop.name);
  return static_cast<int>(e);
}
int frg_runtime_versions(int* runtime, int* driver) {
  cudaError_t e = cudaRuntimeGetVersion(runtime);
  if (e == cudaSuccess) e = cudaDriverGetVersion(driver);
  return static_cast<int>(e);
}

}  // extern "C"
