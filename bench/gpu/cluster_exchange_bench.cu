// Cost of one step's h exchange between the blocks of a thread-block cluster (sm_90), measured alone: the question
// is whether splitting the small-hidden-size kernel's units over 2 or 4 SMs per direction can pay for itself.
//
// Each step every thread reads one h value of the previous step from its block's shared tile, and the writer lane
// of each unit publishes value + 1 as the unit's new h into every member's tile: a dependent chain through every
// block, as in the recurrence, with no arithmetic. Three ways to meet per step:
//   syncthreads  one block (C = 1): plain shared store, __syncthreads (what the small kernel does today);
//   barrier      st.shared::cluster into every member, then barrier.cluster.arrive.release / wait.acquire;
//   mbarrier     st.async into every member, each signalling that member's transaction barrier of the buffer
//                (double-buffered by step parity); readers wait on their own block's barrier only. No round trip.
// Prints cycles per step (block 0's clock64 over the loop) and checks the values (each ends at `steps`).
//   nvcc -std=c++17 -O3 -gencode arch=compute_90,code=sm_90 bench/gpu/cluster_exchange_bench.cu -o /tmp/cxb
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                        \
  do {                                                                                  \
    cudaError_t e = (x);                                                                \
    if (e != cudaSuccess) {                                                             \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

enum Mode { kSyncthreads = 0, kBarrier = 1, kMbarrier = 2 };

__device__ __forceinline__ unsigned SmemAddr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ unsigned ClusterRank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void ClusterSync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ unsigned MapRank(unsigned local, unsigned rank) {
  unsigned r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(local), "r"(rank));
  return r;
}
__device__ __forceinline__ void ArriveExpectTx(unsigned mbar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(mbar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void WaitParity(unsigned mbar, unsigned parity) {
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(mbar), "r"(parity)
        : "memory");
  }
}

template <int MODE>
__global__ void ExchangeKernel(int H, int steps, float* out, long long* cycles) {
  extern __shared__ __align__(16) float tile[];  // [2][H]
  __shared__ __align__(8) unsigned long long mbar[2];
  const int tid = threadIdx.x;
  unsigned nranks = 1, rank = 0;
  if (MODE != kSyncthreads) {
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(nranks));
    rank = ClusterRank();
  }
  const int U = (H + nranks - 1) / nranks;  // units per block
  const int unit_local = tid / 4;
  const int unit = rank * U + unit_local;
  const bool writer = (tid % 4) == 0 && unit_local < U && unit < H;
  const int read_idx = (unit + 1) % H;
  for (int i = tid; i < 2 * H; i += blockDim.x) tile[i] = 0.f;
  if (MODE == kMbarrier && tid == 0) {
    for (int b = 0; b < 2; ++b)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(SmemAddr(&mbar[b])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int b = 0; b < 2; ++b) ArriveExpectTx(SmemAddr(&mbar[b]), 4u * H);
  }
  __syncthreads();
  if (MODE != kSyncthreads) ClusterSync();
  long long t0 = clock64();
  for (int s = 0; s < steps; ++s) {
    const int cur = s & 1, nxt = cur ^ 1;
    if (MODE == kMbarrier && s > 0) {
      WaitParity(SmemAddr(&mbar[cur]), ((s - 1) >> 1) & 1);
      if (tid == 0 && s + 1 < steps) ArriveExpectTx(SmemAddr(&mbar[cur]), 4u * H);
    }
    const float v = tile[cur * H + read_idx] + 1.f;
    if (MODE == kSyncthreads) {
      if (writer) tile[nxt * H + unit] = v;
      __syncthreads();
    } else if (MODE == kBarrier) {
      if (writer) {
        const unsigned a = SmemAddr(&tile[nxt * H + unit]);
        for (unsigned r = 0; r < nranks; ++r)
          asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(MapRank(a, r)), "f"(v) : "memory");
      }
      ClusterSync();
    } else {
      if (writer) {
        const unsigned a = SmemAddr(&tile[nxt * H + unit]), m = SmemAddr(&mbar[nxt]);
        for (unsigned r = 0; r < nranks; ++r)
          asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                           MapRank(a, r)),
                       "r"(__float_as_uint(v)), "r"(MapRank(m, r))
                       : "memory");
      }
    }
  }
  if (MODE == kMbarrier) WaitParity(SmemAddr(&mbar[steps & 1]), ((steps - 1) >> 1) & 1);
  __syncthreads();
  long long t1 = clock64();
  if (MODE != kSyncthreads) ClusterSync();  // nobody leaves while a member may still write into it
  if (tid == 0 && blockIdx.x == 0) *cycles = t1 - t0;
  if (writer) out[blockIdx.x / nranks * H + unit] = tile[(steps & 1) * H + unit];
}

template <int MODE>
double Run(int H, int C, int threads, int steps, int clusters, bool* ok) {
  float* out;
  long long* cyc;
  CHECK(cudaMalloc(&out, sizeof(float) * H * clusters));
  CHECK(cudaMalloc(&cyc, sizeof(long long)));
  CHECK(cudaMemset(out, 0, sizeof(float) * H * clusters));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(C * clusters);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = sizeof(float) * 2 * H;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = MODE == kSyncthreads ? 0 : 1;
  if (C > 8) CHECK(cudaFuncSetAttribute(ExchangeKernel<MODE>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  std::vector<double> per_step;
  for (int rep = 0; rep < 7; ++rep) {
    CHECK(cudaLaunchKernelEx(&cfg, ExchangeKernel<MODE>, H, steps, out, cyc));
    CHECK(cudaDeviceSynchronize());
    long long c;
    CHECK(cudaMemcpy(&c, cyc, sizeof(c), cudaMemcpyDeviceToHost));
    if (rep > 0) per_step.push_back(double(c) / steps);
  }
  std::vector<float> host(H * clusters);
  CHECK(cudaMemcpy(host.data(), out, sizeof(float) * H * clusters, cudaMemcpyDeviceToHost));
  *ok = true;
  for (float v : host)
    if (v != float(steps)) *ok = false;
  CHECK(cudaFree(out));
  CHECK(cudaFree(cyc));
  std::sort(per_step.begin(), per_step.end());
  return per_step[per_step.size() / 2];
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const int steps = 2000;
  std::printf("| exchange | H | cluster | threads/block | clusters | cycles/step | values ok |\n"
              "|---|---:|---:|---:|---:|---:|---|\n");
  struct Case {
    int mode, H, C, threads, clusters;
  };
  // H = 100: the small kernel's shapes; H = 512 over 8 or 16 members (16: a non-portable cluster size): what an
  // LSTM H=512 B=1 plan with every weight on chip would pay per step.
  const Case cases[] = {{kSyncthreads, 100, 1, 416, 2}, {kSyncthreads, 100, 1, 224, 2}, {kBarrier, 100, 2, 224, 2},
                        {kBarrier, 100, 4, 128, 2},     {kMbarrier, 100, 1, 416, 2},    {kMbarrier, 100, 2, 224, 2},
                        {kMbarrier, 100, 4, 128, 2},    {kMbarrier, 100, 2, 224, 64},   {kBarrier, 100, 2, 224, 64},
                        {kMbarrier, 100, 8, 64, 2},     {kMbarrier, 512, 8, 256, 1},    {kMbarrier, 512, 16, 128, 1},
                        {kMbarrier, 512, 16, 128, 2},   {kBarrier, 512, 16, 128, 1}};
  const char* names[] = {"syncthreads", "barrier.cluster", "st.async+mbarrier"};
  for (const Case& c : cases) {
    bool ok = false;
    double cyc = 0;
    if (c.mode == kSyncthreads) cyc = Run<kSyncthreads>(c.H, c.C, c.threads, steps, c.clusters, &ok);
    if (c.mode == kBarrier) cyc = Run<kBarrier>(c.H, c.C, c.threads, steps, c.clusters, &ok);
    if (c.mode == kMbarrier) cyc = Run<kMbarrier>(c.H, c.C, c.threads, steps, c.clusters, &ok);
    std::printf("| %s | %d | %d | %d | %d | %.0f | %s |\n", names[c.mode], c.H, c.C, c.threads, c.clusters, cyc,
                ok ? "yes" : "NO");
  }
  // How many clusters of 16 (non-portable) fit at once with a block of 256 threads and ~200 KB of shared memory
  // (an H=512 member holding its weights in registers and shared memory).
  for (int smem_kb : {0, 100, 200}) {
    CHECK(cudaFuncSetAttribute(ExchangeKernel<kMbarrier>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    CHECK(cudaFuncSetAttribute(ExchangeKernel<kMbarrier>, cudaFuncAttributeMaxDynamicSharedMemorySize, 220 << 10));
    for (int cs : {8, 16}) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(cs);
      cfg.blockDim = dim3(256);
      cfg.dynamicSmemBytes = size_t(smem_kb) << 10;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = cs;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      int n = -1;
      cudaError_t e = cudaOccupancyMaxActiveClusters(&n, ExchangeKernel<kMbarrier>, &cfg);
      std::printf("max active clusters of %d, 256 threads, %d KB shared: %d (%s)\n", cs, smem_kb, n,
                  cudaGetErrorString(e));
    }
  }
  return 0;
}
