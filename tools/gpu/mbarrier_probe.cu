// A stand-alone copy of the small kernel's cluster h exchange (fused_rnn_cuda_small.cuh, CL = 1), for the open
// synccheck report of session 32 ("Barrier error detected. Missing wait" at the prologue's arrive.expect_tx, only
// in large grids, only from some ranks). Nothing but the protocol: two transaction barriers per block (one per h
// buffer, one arrival each, armed for 4 H bytes), st.async of each unit's value into every member by the unit's
// KSL lanes, waits on the block's own barrier only, the final wait and cluster barrier. No weights, no cell.
//
// Each block records the SM it ran on (%smid) and its rank, so a report can be matched against which blocks shared
// an SM; the values are checked (h_s[k] must be the value unit k published at step s - 1), so a protocol fault would
// show as a wrong value as well as in a tool's report.
//   nvcc -std=c++17 -O3 -lineinfo -gencode arch=compute_90,code=sm_90 tools/gpu/mbarrier_probe.cu -o /tmp/mbp
//   /tmp/mbp CLUSTERS C H UPB THREADS SMEM_BYTES T SMID_CSV
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                          \
  do {                                                                                    \
    cudaError_t e = (x);                                                                  \
    if (e != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

constexpr int KSL = 8;  // lanes per unit, as the 8-lane plan of the report

__device__ __forceinline__ unsigned SmemAddr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void ClusterSync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ void ArriveExpectTx(unsigned mbar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(mbar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void WaitParity(unsigned mbar, unsigned parity) {
  unsigned done = 0;
  do {
    asm volatile(
        "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(mbar), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void StoreAsyncToRank(unsigned local_addr, unsigned mbar_local, unsigned rank, float v) {
  unsigned ra, rm;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(local_addr), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rm) : "r"(mbar_local), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(ra),
               "r"(__float_as_uint(v)), "r"(rm)
               : "memory");
}

// The value unit k publishes at step s (exact in float32 for the sizes used).
__device__ __forceinline__ float Value(int s, int k) { return static_cast<float>((s + 1) * 1024 + k); }

__global__ void ExchangeKernel(int H, int upb, int T, int* bad, int* smid_rank) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, nthreads = blockDim.x;
  unsigned rank, C, smid;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(C));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  if (tid == 0) {  // mapped host memory: readable even when a tool stops the kernel
    smid_rank[2 * blockIdx.x] = static_cast<int>(smid);
    smid_rank[2 * blockIdx.x + 1] = static_cast<int>(rank);
    __threadfence_system();
  }
  const int kpad = (H + 3) / 4 * 4;
  float* h_s = reinterpret_cast<float*>(smem);  // [2][kpad]
  const unsigned mbar0 = SmemAddr(smem + 2 * kpad * sizeof(float));
  const int u0 = rank * upb, ucount = min(upb, H - u0);
  const int col = tid / KSL, lanek = tid % KSL;
  const bool unit_ok = col < ucount;
  const int j = u0 + col;

  for (int i = tid; i < 2 * kpad; i += nthreads) h_s[i] = 0.f;
  if (tid == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mbar0) : "memory");
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mbar0 + 8u) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (tid == 0) {
    ArriveExpectTx(mbar0, 4u * H);
    ArriveExpectTx(mbar0 + 8u, 4u * H);
  }
  for (int k = tid; k < H; k += nthreads) h_s[k] = Value(-1, k);
  __syncthreads();
  ClusterSync();

  int cur = 0, wrong = 0;
#pragma unroll 1
  for (int s = 0; s < T; ++s) {
    if (s > 0) {
      WaitParity(mbar0 + 8u * cur, ((s - 1) >> 1) & 1);
      if (tid == 0 && s + 1 < T) ArriveExpectTx(mbar0 + 8u * cur, 4u * H);
    }
    // Every thread checks a few entries of h_{s-1} (the kernel's dot product reads all of them).
    for (int k = tid; k < H; k += nthreads) wrong += h_s[cur * kpad + k] != Value(s - 1, k);
    const float v = Value(s, j);
    __syncwarp();
    if (unit_ok) {
      const unsigned a = SmemAddr(h_s + (cur ^ 1) * kpad + j);
#pragma unroll 1
      for (unsigned r = lanek; r < C; r += KSL) StoreAsyncToRank(a, mbar0 + 8u * (cur ^ 1), r, v);
    }
    cur ^= 1;
  }
  if (T > 0) WaitParity(mbar0 + 8u * (T & 1), ((T - 1) >> 1) & 1);
  for (int k = tid; k < H; k += nthreads) wrong += h_s[cur * kpad + k] != Value(T - 1, k);
  ClusterSync();
  if (wrong) atomicAdd(bad, wrong);
}

int main(int argc, char** argv) {
  if (argc < 9) {
    std::printf("usage: %s CLUSTERS C H UPB THREADS SMEM_BYTES T SMID_CSV\n", argv[0]);
    return 2;
  }
  const int clusters = std::atoi(argv[1]), C = std::atoi(argv[2]), H = std::atoi(argv[3]), upb = std::atoi(argv[4]);
  const int threads = std::atoi(argv[5]), smem_req = std::atoi(argv[6]), T = std::atoi(argv[7]);
  const int kpad = (H + 3) / 4 * 4;
  const int smem = std::max(smem_req, 2 * kpad * 4 + 16);
  CHECK(cudaFuncSetAttribute(ExchangeKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  CHECK(cudaFuncSetAttribute(ExchangeKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int *bad, *smid_rank;
  const int blocks = clusters * C;
  CHECK(cudaMalloc(&bad, sizeof(int)));
  int* smid_rank_host;
  CHECK(cudaHostAlloc(&smid_rank_host, 2 * blocks * sizeof(int), cudaHostAllocMapped));
  for (int i = 0; i < 2 * blocks; ++i) smid_rank_host[i] = -1;
  CHECK(cudaHostGetDevicePointer(&smid_rank, smid_rank_host, 0));
  CHECK(cudaMemset(bad, 0, sizeof(int)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int max_clusters = 0, per_sm = 0;
  CHECK(cudaOccupancyMaxActiveClusters(&max_clusters, ExchangeKernel, &cfg));
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ExchangeKernel, threads, smem));
  CHECK(cudaLaunchKernelEx(&cfg, ExchangeKernel, H, upb, T, bad, smid_rank));
  const cudaError_t sync_err = cudaDeviceSynchronize();
  const int* sr = smid_rank_host;
  FILE* f = std::fopen(argv[8], "w");
  if (f) {
    std::fprintf(f, "block,cluster,rank,smid\n");
    for (int b = 0; b < blocks; ++b) std::fprintf(f, "%d,%d,%d,%d\n", b, b / C, sr[2 * b + 1], sr[2 * b]);
    std::fclose(f);
  }
  CHECK(sync_err);
  int h_bad = 0;
  CHECK(cudaMemcpy(&h_bad, bad, sizeof(int), cudaMemcpyDeviceToHost));
  std::printf("clusters=%d C=%d H=%d upb=%d threads=%d smem=%d T=%d: blocks/SM %d, max active clusters %d, wrong values %d\n",
              clusters, C, H, upb, threads, smem, T, per_sm, max_clusters, h_bad);
  return h_bad != 0;
}
