"""What the ELMo layer's weight prologue could cost: the same bytes read in isolation with different access patterns,
on this GPU, cold (L2 flushed before each launch) and warm. One block per SM (132 x 256 threads), like the persistent
kernel: blocks 0-65 read direction 0's slice, 66-131 direction 1's.

  U: [2][512][4 x 4096] 16-bit (phase A: each block 4 gate segments of 63 columns per row)
  P: [2][4096][512] 16-bit (the projection: each block an 8-column stripe of every row)

Patterns: `2B` one 2-byte load per element with the kernel's thread mapping (today's direct prologue), `16B` one
16-byte load per aligned window of 8 elements (the same sectors, 8x fewer loads), `contig` the same number of bytes
per block from one contiguous range (the DRAM/L2 floor for that many bytes, at 256 or 1024 threads, or copied by
cp.async into a shared stage). "Cold" reads a 256 MB buffer first (evicting L2 without dirty lines)."""
import json
import os
import sys

import cupy as cp
import numpy as np

src = r'''
#include <cuda_fp16.h>
#define BLOCKS_PER_DIR 66
extern "C" __global__ void proj_2b(const unsigned short* P, unsigned* out) {
  const int d = blockIdx.x / BLOCKS_PER_DIR, ub = blockIdx.x % BLOCKS_PER_DIR, c0 = ub * 8;
  const unsigned short* p = P + (long long)d * 4096 * 512;
  unsigned s = 0;
#pragma unroll 16
  for (int i = threadIdx.x; i < 4096 * 8; i += blockDim.x) {
    const int r = i >> 3, c = i & 7;
    if (c0 + c < 512) s += __ldg(p + (long long)r * 512 + c0 + c);
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
extern "C" __global__ void proj_16b(const unsigned short* P, unsigned* out) {
  const int d = blockIdx.x / BLOCKS_PER_DIR, ub = blockIdx.x % BLOCKS_PER_DIR, c0 = ub * 8;
  const unsigned short* p = P + (long long)d * 4096 * 512;
  unsigned s = 0;
  if (c0 < 512) {
#pragma unroll 16
    for (int r = threadIdx.x; r < 4096; r += blockDim.x) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p + (long long)r * 512 + c0));
      s += v.x ^ v.y ^ v.z ^ v.w;
    }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
// Today's phase-A mapping: thread = (column tid / 4, k-lane tid % 4), chunk j, element e: row 4 (kl + 4 j) + e.
extern "C" __global__ void a_2b(const unsigned short* U, unsigned* out) {
  const int d = blockIdx.x / BLOCKS_PER_DIR, ub = blockIdx.x % BLOCKS_PER_DIR, u0 = ub * 63;
  const unsigned short* u = U + (long long)d * 512 * 16384;
  const int col = threadIdx.x >> 2, kl = threadIdx.x & 3;
  const bool ok = col < 63 && u0 + col < 4096;
  const int cs = ok ? col : 0;
  unsigned s = 0;
#pragma unroll 2
  for (int j = 0; j < 32; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        const unsigned v = __ldg(u + (long long)(4 * (kl + 4 * j) + e) * 16384 + g * 4096 + u0 + cs);
        s += ok ? v : 0u;
      }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
// The same slice as aligned 16-byte windows: (row, gate, window) items.
extern "C" __global__ void a_16b(const unsigned short* U, unsigned* out) {
  const int d = blockIdx.x / BLOCKS_PER_DIR, ub = blockIdx.x % BLOCKS_PER_DIR, u0 = ub * 63;
  const unsigned short* u = U + (long long)d * 512 * 16384;
  const int first = u0 & ~7, last = min(u0 + 63, 4096);
  const int nwin = (last - first + 7) >> 3;
  unsigned s = 0;
#pragma unroll 8
  for (int i = threadIdx.x; i < 512 * 4 * nwin; i += blockDim.x) {
    const int kg = i / nwin, w = i - kg * nwin;
    const int k = kg >> 2, g = kg & 3;
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(u + (long long)k * 16384 + g * 4096 + first + 8 * w));
    s += v.x ^ v.y ^ v.z ^ v.w;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
// bytes_per_block contiguous bytes per block, 16-byte loads.
extern "C" __global__ void contig_16b(const uint4* X, long long vecs_per_block, unsigned* out) {
  const uint4* x = X + blockIdx.x * vecs_per_block;
  unsigned s = 0;
#pragma unroll 8
  for (long long i = threadIdx.x; i < vecs_per_block; i += blockDim.x) {
    const uint4 v = __ldg(x + i);
    s += v.x ^ v.y ^ v.z ^ v.w;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
// The same contiguous bytes through cp.async (16-byte LDGSTS, no registers held) into a 128 KiB shared stage in
// passes, 32 copies in flight per thread: what a staged prologue could reach.
extern "C" __global__ void contig_cpasync(const uint4* X, long long vecs_per_block, unsigned* out) {
  extern __shared__ __align__(16) uint4 stage[];
  const uint4* x = X + blockIdx.x * vecs_per_block;
  const int per_pass = 8192;  // 128 KiB
  unsigned s = 0;
  for (long long p0 = 0; p0 < vecs_per_block; p0 += per_pass) {
    for (int i = threadIdx.x; i < per_pass && p0 + i < vecs_per_block; i += blockDim.x) {
      const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(stage + i));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(x + p0 + i) : "memory");
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();
    s += stage[threadIdx.x].x;
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
// Evicts L2 by reading (a written flush leaves dirty lines whose write-back competes with the timed reads).
extern "C" __global__ void flush_read(const uint4* X, long long n, unsigned* out) {
  unsigned s = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    s += X[i].x;
  if (s == 0x12345678u) out[0] = s;
}
'''


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
    mod = cp.RawModule(code=src, options=("-arch=sm_90",))
    rng = np.random.default_rng(0)
    U = cp.asarray(rng.integers(0, 65535, size=(2, 512, 16384), dtype=np.uint16))
    P = cp.asarray(rng.integers(0, 65535, size=(2, 4096, 512), dtype=np.uint16))
    flush = cp.ones(256 << 20, dtype=cp.uint8)
    out = cp.zeros(132 * 256, dtype=cp.uint32)
    bytes_a = U.nbytes // 132  # per block, useful
    bytes_p = P.nbytes // 132
    X = cp.asarray(rng.integers(0, 2**31, size=(U.nbytes + P.nbytes) // 4, dtype=np.uint32))
    cases = [
        ("phase A, 2-byte loads (today)", "a_2b", (U, out), U.nbytes),
        ("phase A, 16-byte windows", "a_16b", (U, out), U.nbytes),
        ("phase A bytes, contiguous", "contig_16b", (X, np.int64(bytes_a // 16), out), U.nbytes),
        ("projection, 2-byte loads", "proj_2b", (P, out), P.nbytes),
        ("projection, 16-byte rows", "proj_16b", (P, out), P.nbytes),
        ("projection bytes, contiguous", "contig_16b", (X, np.int64(bytes_p // 16), out), P.nbytes),
        ("both (40 MB), contiguous", "contig_16b", (X, np.int64((U.nbytes + P.nbytes) // 132 // 16), out),
         U.nbytes + P.nbytes),
        ("both (40 MB), contiguous, 1024 thr", "contig_16b", (X, np.int64((U.nbytes + P.nbytes) // 132 // 16), out),
         U.nbytes + P.nbytes, 1024),
        ("both (40 MB), cp.async stage", "contig_cpasync",
         (X, np.int64((U.nbytes + P.nbytes) // 132 // 16), out), U.nbytes + P.nbytes, 256, 128 * 1024),
    ]
    fr = mod.get_function("flush_read")
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    rows = []
    for case in cases:
        label, name, args, nbytes = case[:4]
        threads = case[4] if len(case) > 4 else 256
        smem = case[5] if len(case) > 5 else 0
        f = mod.get_function(name)
        if smem:
            f.max_dynamic_shared_size_bytes = smem
        res = {}
        for cold in (True, False):
            ts = []
            for _ in range(12):
                if cold:
                    fr((528,), (512,), (flush, np.int64(flush.nbytes // 16), out))
                else:
                    f((132,), (threads,), args, shared_mem=smem)
                start.record()
                f((132,), (threads,), args, shared_mem=smem)
                stop.record()
                stop.synchronize()
                ts.append(cp.cuda.get_elapsed_time(start, stop) * 1e3)
            res["cold" if cold else "warm"] = float(np.median(ts[2:]))
        rows.append(dict(case=label, kernel=name, mbytes=nbytes / 1e6, cold_us=res["cold"], warm_us=res["warm"],
                         cold_tbps=nbytes / res["cold"] / 1e6, warm_tbps=nbytes / res["warm"] / 1e6))
        print(f"{label:34s} {nbytes/1e6:6.1f} MB  cold {res['cold']:7.1f} us ({rows[-1]['cold_tbps']:.2f} TB/s)  "
              f"warm {res['warm']:7.1f} us ({rows[-1]['warm_tbps']:.2f} TB/s)", flush=True)
    with open(os.path.join(out_dir, "prologue_floor.json"), "w") as fj:
        json.dump(dict(device=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), rows=rows), fj, indent=1)


if __name__ == "__main__":
    main()
