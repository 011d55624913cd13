"""Throughput of dp4a (IDP4A) against the float path's decode + FMA on this GPU: cycles per warp instruction per
SM sub-partition, 16 warps per SM (4 per scheduler), 8 independent chains per thread."""
import cupy as cp
import numpy as np

src = r'''
extern "C" __global__ void k_dp4a(const unsigned* in, int* out, int iters, long long* cyc) {
  unsigned a = in[threadIdx.x & 31], b = in[(threadIdx.x + 7) & 31];
  int acc[8] = {0,0,0,0,0,0,0,0};
  __syncthreads();
  long long t0 = clock64();
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) asm volatile("dp4a.u32.s32 %0, %1, %2, %0;" : "+r"(acc[j]) : "r"(a), "r"(b + j));
  }
  __syncthreads();
  long long t1 = clock64();
  int s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}
extern "C" __global__ void k_ffma(const unsigned* in, int* out, int iters, long long* cyc) {
  float a = __uint_as_float(in[threadIdx.x & 31] & 0x3f7fffff), b = 1.0001f;
  float acc[8] = {0,0,0,0,0,0,0,0};
  __syncthreads();
  long long t0 = clock64();
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) asm volatile("fma.rn.f32 %0, %1, %2, %0;" : "+f"(acc[j]) : "f"(a), "f"(b));
  }
  __syncthreads();
  long long t1 = clock64();
  float s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = (int)s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}
extern "C" __global__ void k_prmt(const unsigned* in, int* out, int iters, long long* cyc) {
  unsigned a = in[threadIdx.x & 31];
  unsigned acc[8] = {1,2,3,4,5,6,7,8};
  __syncthreads();
  long long t0 = clock64();
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) asm volatile("prmt.b32 %0, %0, %1, 0x7440;" : "+r"(acc[j]) : "r"(a));
  }
  __syncthreads();
  long long t1 = clock64();
  unsigned s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = (int)s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}
'''
mod = cp.RawModule(code=src, options=("-arch=sm_90",))
inp = cp.asarray(np.random.default_rng(0).integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32))
for threads in (128, 512):
    for name in ("k_dp4a", "k_ffma", "k_prmt"):
        f = mod.get_function(name)
        out = cp.zeros(132 * threads, cp.int32)
        cyc = cp.zeros(132, cp.int64)
        iters = 4096
        f((132,), (threads,), (inp, out, np.int32(iters), cyc))
        f((132,), (threads,), (inp, out, np.int32(iters), cyc))
        cp.cuda.Device().synchronize()
        c = float(cp.median(cyc.astype(cp.float64)))
        warps_per_sched = threads / 32 / 4
        per_instr = c / (iters * 8 * warps_per_sched)
        print(f"{name:7s} threads/block {threads:4d}: {c / (iters * 8):7.2f} cycles per instruction per thread-chain step; "
              f"{per_instr:5.2f} cycles per warp instruction per scheduler")
