// Host side of the CUDA core: the planner (which decomposition, how many threads, where each weight chunk lives),
// the workspace layout and the launch. See cc/core/fused_rnn_cuda.h for the contract.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>
#include <tuple>

#include "../core/fused_rnn_cuda.h"
#include "fused_rnn_cuda_params.h"

namespace fused_rnn {
namespace {

using cuda_impl::DotMap;
using cuda_impl::KernelFn;
using cuda_impl::KernelParams;

thread_local char g_message[512];

const char* Fmt(const char* fmt, const char* a = "", long long x = 0) {
  std::snprintf(g_message, sizeof(g_message), fmt, a, x);
  return g_message;
}
const char* CudaMessage(const char* what, cudaError_t e) {
  std::snprintf(g_message, sizeof(g_message), "%s%s failed: %s", kCudaRuntimeFailurePrefix, what, cudaGetErrorString(e));
  // The failed call also left its error in this thread's last-error slot; it is reported through the message, so
  // reset the slot (a no-op for sticky errors). Otherwise a refused launch (e.g. a cooperative grid that cannot be
  // resident) would surface again at the caller's next, unrelated cudaGetLastError().
  cudaGetLastError();
  return g_message;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
size_t Align(size_t v, size_t a) { return (v + a - 1) / a * a; }

KernelFn GetKernel(CellType cell, int wk, int rc, int kc_idx, int proj_rs) {
  using namespace cuda_impl;
  if (cell == CellType::kLstm) {
    if (wk == kWeightF32) return GetKernelLstmF32(rc, kc_idx, proj_rs);
    if (wk == kWeightF16) return GetKernelLstmF16(rc, kc_idx, proj_rs);
    if (wk == kWeightI8) return GetKernelLstmI8(rc, kc_idx, proj_rs);
    return GetKernelLstmBF16(rc, kc_idx, proj_rs);
  }
  if (wk == kWeightF32) return GetKernelGruF32(rc, kc_idx, proj_rs);
  if (wk == kWeightF16) return GetKernelGruF16(rc, kc_idx, proj_rs);
  if (wk == kWeightI8) return GetKernelGruI8(rc, kc_idx, proj_rs);
  return GetKernelGruBF16(rc, kc_idx, proj_rs);
}

// Per-kernel facts the planner needs (register cap, occupancy at a given block size / shared memory). Cached:
// cudaFuncGetAttributes and the occupancy calculator cost microseconds each.
struct KernelFacts {
  int max_threads = 0;
  int local_bytes = 0;
  int ptx_version = 0;  // the virtual architecture the code running on this device was compiled for (90: sm_90)
};
// The caches below are leaked on purpose (never destroyed): TensorFlow does not join its executor threads at exit,
// and an op still running then must not lock a destroyed mutex or walk a destroyed map.
std::mutex& g_facts_mutex = *new std::mutex;
std::map<std::pair<int, const void*>, KernelFacts>& g_facts =  // (device, fn): the SASS differs by architecture
    *new std::map<std::pair<int, const void*>, KernelFacts>;
std::map<std::tuple<int, const void*, int, size_t>, int>& g_occupancy =  // (device, fn, threads, smem) -> blocks/SM
    *new std::map<std::tuple<int, const void*, int, size_t>, int>;
std::set<std::pair<int, const void*>>& g_smem_raised = *new std::set<std::pair<int, const void*>>;  // at the opt-in max
std::set<std::pair<int, const void*>>& g_nonportable = *new std::set<std::pair<int, const void*>>;  // clusters > 8 ok

// Raises a kernel's dynamic shared-memory cap on the current device to the device's opt-in maximum, once, and never
// lowers it. The cap is per (function, device) and process-wide, so a value set per launch or per candidate plan
// could be lowered by another thread (TensorFlow runs ops concurrently) between its set and its launch, and the
// launch would fail. Launches and occupancy queries pass their own sizes; the cap only has to admit them.
// Call with g_facts_mutex held.
const char* RaiseSmemCapLocked(const void* fn) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaMessage("cudaGetDevice", e);
  if (g_smem_raised.count({device, fn})) return nullptr;
  int optin = 0;
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return CudaMessage("cudaDeviceGetAttribute", e);
  cudaFuncAttributes attr;
  e = cudaFuncGetAttributes(&attr, fn);
  if (e != cudaSuccess) return CudaMessage("cudaFuncGetAttributes", e);
  // The cap counts dynamic bytes only: the opt-in maximum less the kernel's static shared memory.
  const int cap = optin - static_cast<int>(attr.sharedSizeBytes);
  e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, cap);
  if (e != cudaSuccess) return CudaMessage("cudaFuncSetAttribute", e);
  g_smem_raised.insert({device, fn});
  return nullptr;
}

const char* Facts(KernelFn fn, KernelFacts* out) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaMessage("cudaGetDevice", e);
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  const auto key = std::make_pair(device, reinterpret_cast<const void*>(fn));
  auto it = g_facts.find(key);
  if (it != g_facts.end()) {
    *out = it->second;
    return nullptr;
  }
  cudaFuncAttributes attr;
  e = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(fn));
  if (e != cudaSuccess) return CudaMessage("cudaFuncGetAttributes", e);
  KernelFacts f;
  f.max_threads = attr.maxThreadsPerBlock;
  f.local_bytes = static_cast<int>(attr.localSizeBytes);
  f.ptx_version = attr.ptxVersion;
  g_facts[key] = f;
  *out = f;
  return nullptr;
}

const char* BlocksPerSm(KernelFn fn, int threads, size_t smem, const CudaDeviceLimits& limits, int* blocks) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaMessage("cudaGetDevice", e);
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  auto key = std::make_tuple(device, reinterpret_cast<const void*>(fn), threads, smem);
  auto it = g_occupancy.find(key);
  if (it != g_occupancy.end()) {
    *blocks = it->second;
    return nullptr;
  }
  if (const char* err = RaiseSmemCapLocked(reinterpret_cast<const void*>(fn))) return err;
  int n = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, reinterpret_cast<const void*>(fn), threads, smem);
  if (e != cudaSuccess) return CudaMessage("cudaOccupancyMaxActiveBlocksPerMultiprocessor", e);
  g_occupancy[key] = n;
  *blocks = n;
  return nullptr;
}

// How many clusters of `cluster_size` blocks can be resident at once (0: the cluster cannot be launched, or the code
// that would run was compiled for an architecture below sm_90, where the kernels' cluster code compiles to nothing:
// a library built without sm_90 SASS or compute_90 PTX, running on a Hopper from older PTX).
const char* ClustersPossible(KernelFn fn, int threads, size_t smem, int cluster_size, int* clusters) {
  KernelFacts facts;
  if (const char* err = Facts(fn, &facts)) return err;
  if (facts.ptx_version < 90) {
    *clusters = 0;
    return nullptr;
  }
  // The query honours the kernel's dynamic shared-memory cap (a cap lowered by an earlier launch refused forced
  // cluster plans in session 9): it is raised once to the device's maximum and never lowered.
  {
    std::lock_guard<std::mutex> lock(g_facts_mutex);
    if (RaiseSmemCapLocked(reinterpret_cast<const void*>(fn)) != nullptr) {
      cudaGetLastError();
      *clusters = 0;
      return nullptr;
    }
    // Clusters of more than 8 blocks (Hopper: up to 16) are "non-portable": the kernel must allow them, once per
    // (device, function), process-wide like the cap above; never revoked. Refused: no such clusters.
    if (cluster_size > 8) {
      int device = 0;
      if (cudaGetDevice(&device) != cudaSuccess) {
        cudaGetLastError();
        *clusters = 0;
        return nullptr;
      }
      const auto key = std::make_pair(device, reinterpret_cast<const void*>(fn));
      if (!g_nonportable.count(key)) {
        if (cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), cudaFuncAttributeNonPortableClusterSizeAllowed,
                                 1) != cudaSuccess) {
          cudaGetLastError();
          *clusters = 0;
          return nullptr;
        }
        g_nonportable.insert(key);
      }
    }
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cluster_size);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster_size;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaError_t e = cudaOccupancyMaxActiveClusters(clusters, fn, &cfg);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky; treat as "cannot launch"
    *clusters = 0;
  }
  return nullptr;
}

int WordsPerChunk(int wk, int g) {
  return wk == cuda_impl::kWeightF32 ? 4 * g : (wk == cuda_impl::kWeightI8 ? g : 2 * g);
}
// Bytes one thread's streamed chunk takes (the kernel stores 8-byte pairs, or 4-byte words for int8).
size_t ChunkBytes(int wk, int g) { return size_t(WordsPerChunk(wk, g)) * 4; }
// Bytes of one raw weight element.
int ElemBytes(int wk) {
  return wk == cuda_impl::kWeightF32 ? 4 : (wk == cuda_impl::kWeightI8 ? 1 : 2);
}
// Extra instructions per chunk for unpacking the weights (and, int8, scaling the 4 h values of each row pass).
double DecodeInstr(int wk, int g, int rc) {
  if (wk == cuda_impl::kWeightF32) return 0;
  if (wk == cuda_impl::kWeightI8) return 8.0 * g + 4.0 * rc + 1;
  return 2.0 * g;
}

DotMap MakeMap(int cols, int k_rows, int ksl, int ksw) {
  DotMap m;
  m.cols = std::max(cols, 1);
  m.ksl = ksl;
  m.ksw = ksw;
  m.ks = ksl * ksw;
  m.kc = static_cast<int>(CeilDiv(std::max(k_rows, 1), 4 * m.ks));
  m.kpad = m.kc * 4 * m.ks;
  const int groups = static_cast<int>(CeilDiv(m.cols, 32 / ksl));
  m.threads_used = groups * ksw * 32;
  return m;
}

struct Plan {
  KernelParams kp;
  KernelFn fn = nullptr;
  int threads = 0, grid = 0, rc = 1, kc_idx = 0, kc_template = 0, blocks_per_sm = 0;
  size_t smem = 0;
  bool cooperative = false;
  int cluster = 0;  // cluster size for cluster plans
  int waves = 1;    // how many rounds of resident blocks the grid takes
  size_t ws_bytes = 0, ws_memset_bytes = 0;
  size_t off_counters = 0, off_xh = 0, off_xm = 0, off_stream_a = 0, off_stream_b = 0;
  double cost = 1e300;
  // Tensor-core TF32 through float16 (CudaTuning::tf32_exchange16): this plan is the float16 kernel on the scaled
  // copy of U; fb_* is the float32-exchange TF32 plan launched after it, which runs only when the copy kernel
  // finds an initial state beyond float16's range (KernelParams::tc_gate). Both lay out the workspace from 0 (the
  // watchdog word shared); the gate, the column scales and the copy follow the larger of the two.
  bool tc_emu = false;
  KernelParams fb_kp;
  KernelFn fb_fn = nullptr;
  int fb_threads = 0, fb_grid = 0;
  size_t fb_smem = 0, fb_off_counters = 0, fb_off_xh = 0;
  size_t off_gate = 0, off_col_scale = 0, off_w16 = 0;
  // INT8 or 16-bit weights run as float32 (CudaTuning::as_float32): this is the float32 plan, and the call first
  // converts the narrow kernels into the workspace at these offsets (after the float32 plan's own workspace, which
  // starts at 0 and keeps its size in kernel_ws_bytes).
  bool to_f32 = false;
  size_t off_f32_rec = 0, off_f32_proj = 0, kernel_ws_bytes = 0;
};

struct Geometry {  // what a mode fixes before the per-thread layout is chosen
  int exchange, nbr, rb, nbu, upb, ppb;
};

// Rough cycles for the whole call on one SM; only used to rank candidate plans.
double EstimateCycles(const RnnShape& shape, int wk, const Geometry& geo, const DotMap& a, const DotMap& b,
                      int threads, int rc, bool a_global, bool b_global, int waves, bool proj_rs) {
  const int G = shape.num_gates();
  const double rows = geo.rb;
  const double passes = std::ceil(rows / rc);
  // Load instructions per streamed chunk: 8-byte pairs, or 4-byte words for int8.
  const int per_load = wk == cuda_impl::kWeightI8 ? 1 : 2;
  const int gb = proj_rs ? 2 : 1;  // map b's gates: the reduce-scatter splits the P columns in two
  const int nq_a = WordsPerChunk(wk, G) / per_load, nq_b = WordsPerChunk(wk, gb) / per_load;
  double per_step = 0;
  // phase A. Instruction issue: a warp issues about once per ~6 cycles when it has only its own dependent work
  // (measured: 6.4 cycles per instruction with 1.75 warps per scheduler), so the dot costs
  // instructions-per-warp x max(6, warps per scheduler). Plus streamed bytes through shared memory / L2.
  const double warps_a = a.threads_used / 32.0;
  const double instr_a = (4.0 * G * rc + rc + (a.kc - a.kc_reg > 0 ? nq_a : 0) + DecodeInstr(wk, G, rc)) *
                         a.kc * passes;
  // With 4 rows per pass a thread has 4 G independent accumulators: issue-bound rather than latency-bound.
  // (Measured: H=1024 B=64 counter plan matches 2 cycles per instruction; the shared-memory plans with 4 rows
  // per pass ran far slower than that, so they keep the latency-bound rate.)
  const bool smem_plan =
      geo.exchange == cuda_impl::kExchangeLocal || geo.exchange == cuda_impl::kExchangeCluster;
  const double per_instr = (rc == 1 || smem_plan) ? 6.0 : 2.0;
  per_step += instr_a * std::max(per_instr, warps_a / 4.0);
  const double stream_a_bytes = double(a.kc - a.kc_reg) * ChunkBytes(wk, G) * a.threads_used;
  per_step += stream_a_bytes * passes / (a_global ? 24.0 : 100.0);
  per_step += (a.threads_used / 32.0) * std::log2(double(a.ksl)) * G * passes * rc / 4.0 * 2;
  // Cell update: one thread per (row, unit) pair; a serial chain of ~100 instructions at ~5 cycles, plus the
  // cross-warp partial sums it adds up (ksw of them per gate).
  per_step += CeilDiv(geo.rb * geo.upb, threads) * (1000.0 + 60.0 * (a.ksw - 1));  // measured 0.9-1.3 k
  if (shape.num_proj > 0) {
    const double instr_b = (4.0 * gb * rc + rc + nq_b + DecodeInstr(wk, gb, rc)) * b.kc * passes;
    per_step += instr_b * std::max(per_instr, b.threads_used / 32.0 / 4.0);
    const double stream_b_bytes = double(b.kc) * ChunkBytes(wk, gb) * b.threads_used;
    per_step += stream_b_bytes * passes / (b_global ? 24.0 : 100.0);
    per_step += CeilDiv(geo.rb * std::max(geo.ppb, 1), threads) * 60.0;
    // Reduce-scatter: the [rows, P] partial sums stored, and a 5-level butterfly per owned column.
    if (proj_rs) per_step += CeilDiv(geo.rb * shape.num_proj, threads) * 20.0 + 150.0;
  }
  const int syncs = shape.num_proj > 0 ? 2 : 1;
  if (geo.exchange == cuda_impl::kExchangeLocal) {
    per_step += 300.0 * syncs;
  } else if (geo.exchange == cuda_impl::kExchangeCluster) {
    // Hardware cluster barrier + x prefetch (~1.1 k cycles measured) and one remote shared store per member for
    // every value this block produces (~40 cycles each on the serial path, measured).
    per_step += 1500.0 * syncs + CeilDiv(geo.rb * geo.upb, threads) * 40.0 * geo.nbu;
  } else {
    // Each exchange: wait for the slowest block (a store becoming visible + the poll/barrier round trip), then
    // the fetch. Counter: after the barrier, plain floats by cp.async, latency-bound rounds of ~1300 cycles.
    // Tagged: no barrier, but every thread polls its 8-byte words (value + step) in batches of 4 loads, and a
    // word that is not ready yet costs another round trip: fitted to measured kernel times on an H200 (session
    // 6: LSTM H=512 / H=1024 B=1 and the ELMo layer, tagged against counter), ~530 cycles per word per thread
    // plus ~1.1 k. The old model (rounds of 8 words x 1300 cycles) picked tagged for the ELMo layer, which ran
    // 22-27% slower than counter.
    //
    // Refitted in session 12 (H200, tools/gpu/plan_sweep.py) after the fetch lost its divisions (session 10):
    // tagged against counter on the same layout, LSTM H=1024 and GRU H=512 at B=1 (2-4 words per thread, one
    // exchange per step) and the int8 ELMo layer (9 words per thread, two exchanges), gives ~1300 cycles + ~300
    // per exchange + ~67 per word per thread; the counter model below is unchanged. The old slope (534 per word)
    // made the planner pick counter plans that ran 1.2-1.46x slower. Past 20 words per thread (batches: not
    // measured in this fit) the old slope is kept.
    //
    // Refitted again in session 24 (H200, plan_sweep.py, batched B=2-16 at H=256-1024): both exchanges cost far
    // more per word past ~4 words per thread than the B=1 fit said (LSTM H=512 B=8: tagged 0.54 ms against an
    // estimate of 0.26, counter 0.41 against 0.30), and the planner ran those batches on the general kernel where
    // the small kernel's clusters took 0.29. Tagged: ~400 cycles per word per thread from 4 to 20 words; counter:
    // ~0.5 more per word fetched by the block, from 1024 to 8192 words (the measured range). Per block, not per
    // thread: charged per thread, it sent LSTM H=1024 B=8 to a 512-thread counter plan with its weights in shared
    // memory, 0.69 ms against 0.58 for the 256-thread one.
    const bool tagged = geo.exchange == cuda_impl::kExchangeTagged;
    // Words fetched per step: h (R per row), and m (H per row) or, reduce-scatter, nbu partials per owned column.
    const double elems_b = shape.num_proj == 0 ? 0.0
                           : proj_rs ? double(geo.nbu) * std::max(geo.ppb, 1)
                                     : double(CeilDiv(shape.num_units, 4) * 4);
    const double elems = rows * (CeilDiv(shape.recurrent_width(), 4) * 4 + elems_b);
    if (tagged) {
      const double words = elems / threads;
      per_step += 1300.0 + 306.0 * syncs + 67.0 * std::min(words, 4.0) +
                  400.0 * std::min(std::max(words - 4.0, 0.0), 16.0) + 534.0 * std::max(words - 20.0, 0.0);
    } else {
      per_step += std::ceil(elems / (threads * 16.0)) * 1300.0 + 2000.0 * syncs + elems * 4.0 / 64.0 +
                  0.5 * std::min(std::max(elems - 1024.0, 0.0), 7168.0);
    }
  }
  per_step += 150;
  // prologue: the block's weight slice read once (and the workspace part written once)
  const double slice_bytes = double(a.kc) * ChunkBytes(wk, G) * a.threads_used +
                             double(b.kc) * ChunkBytes(wk, gb) * b.threads_used;
  const double prologue = slice_bytes / 40.0 + 3000;
  return (double(shape.max_time) * per_step + prologue) * waves;
}

const char* CheckShapeCuda(const RnnShape& s) {
  if (s.cell != CellType::kLstm && s.cell != CellType::kGru) return "fused_rnn CUDA: unknown cell type";
  if (s.direction != Direction::kForward && s.direction != Direction::kReverse &&
      s.direction != Direction::kBidirectional)
    return "fused_rnn CUDA: unknown direction";
  if (s.max_time < 0 || s.batch < 0 || s.num_units <= 0 || s.num_proj < 0)
    return "fused_rnn CUDA: negative sizes or num_units <= 0";
  if (s.cell == CellType::kGru && s.num_proj > 0) return "fused_rnn CUDA: projection is for LSTM only";
  if (s.num_units > (1 << 20) || s.num_proj > (1 << 20) || s.batch > (1 << 24) || s.max_time > (1 << 24))
    return "fused_rnn CUDA: size out of the supported range";
  return nullptr;
}

int WeightKind(WeightType t) {
  switch (t) {
    case WeightType::kFloat16: return cuda_impl::kWeightF16;
    case WeightType::kBFloat16: return cuda_impl::kWeightBF16;
    case WeightType::kInt8: return cuda_impl::kWeightI8;
    default: return cuda_impl::kWeightF32;
  }
}

// Tries every per-thread layout of one geometry with phase B as a reduce-scatter (rs = 1) or not; keeps the
// cheapest that runs in *best.
const char* TryGeometryWith(const RnnShape& shape, int wk, const Geometry& geo, const CudaDeviceLimits& limits,
                            const CudaTuning& tun, int rs, Plan* best) {
  const int G = shape.num_gates();
  const int H = static_cast<int>(shape.num_units), P = static_cast<int>(shape.num_proj);
  const int R = static_cast<int>(shape.recurrent_width());
  const int D = shape.num_dirs();
  // Local and cluster plans keep the whole h tile in shared memory (double-buffered); tagged and counter plans
  // exchange through the workspace and need every block of the grid resident (cooperative launch).
  const bool local = geo.exchange == cuda_impl::kExchangeLocal || geo.exchange == cuda_impl::kExchangeCluster;
  const bool is_cluster = geo.exchange == cuda_impl::kExchangeCluster;
  const int grid = D * geo.nbr * geo.nbu;
  const int rc = geo.rb >= 4 ? 4 : 1;
  const int smem_limit = limits.max_shared_bytes_per_block_optin;
  const int gb = rs ? 2 : 1;  // map b's gates: the reduce-scatter multiplies the P columns as two halves
  for (int ksl = 32; ksl >= 1; ksl /= 2) {
    if (tun.lanes_per_unit > 0 && ksl != tun.lanes_per_unit) continue;
    for (int ksw = 1; ksw <= 8; ksw *= 2) {
      DotMap a = MakeMap(geo.upb, R, ksl, ksw);
      const int threads = a.threads_used;
      if (threads > 1024) continue;
      if (ksw > 1 && a.kc < 2) continue;                    // splitting k further only adds padding
      if (ksl > 1 && 4 * ksl > std::max(R, 4) * 2) continue;  // lanes with no rows at all
      // Phase B map inside the same block size.
      DotMap b;
      if (P > 0) {
        bool found = false;
        for (int kslb = 32; kslb >= 1; kslb /= 2)
          for (int kswb = 1; kswb <= 32; kswb *= 2) {
            DotMap cand = rs ? MakeMap(P / 2, geo.upb, kslb, kswb) : MakeMap(geo.ppb, H, kslb, kswb);
            if (cand.threads_used > threads) continue;
            if (kswb > 1 && cand.kc < 2) continue;
            if (!found || cand.kc < b.kc || (cand.kc == b.kc && cand.threads_used < b.threads_used)) {
              b = cand;
              found = true;
            }
          }
        if (!found) continue;
      }
      for (int idx = 0; idx < cuda_impl::kNumKcReg; ++idx) {
        const int kc_template = cuda_impl::KcRegValue(wk, idx);
        int kc_reg = std::min(kc_template, a.kc);
        if (tun.max_reg_chunks >= 0) kc_reg = std::min(kc_reg, tun.max_reg_chunks);
        // Use the smallest template whose array holds kc_reg chunks (bigger arrays only cost registers).
        if (idx > 0 && cuda_impl::KcRegValue(wk, idx - 1) >= kc_reg) continue;
        KernelFn fn = GetKernel(shape.cell, wk, rc, idx, rs);
        if (!fn) continue;
        KernelFacts facts;
        if (const char* err = Facts(fn, &facts)) return err;
        if (facts.max_threads < threads) continue;
        DotMap aa = a;
        aa.kc_reg = kc_reg;
        const size_t stream_a_bytes = size_t(aa.kc - aa.kc_reg) * ChunkBytes(wk, G) * aa.threads_used;
        const size_t stream_b_bytes = P > 0 ? size_t(b.kc) * ChunkBytes(wk, gb) * b.threads_used : 0;
        // int8: 1 / scale for every k-row of each product, in shared memory.
        const bool i8 = wk == cuda_impl::kWeightI8;
        const size_t scale_bytes = i8 ? Align(size_t(aa.kpad) * 4, 16) + (P > 0 ? Align(size_t(b.kpad) * 4, 16) : 0) : 0;
        // Fixed shared memory: the h, m tiles and z partial sums, cell state, own h, lengths, x_proj buffers.
        const size_t z_floats =
            std::max(size_t(aa.ksw) * geo.rb * G * aa.cols, P > 0 ? size_t(b.ksw) * geo.rb * gb * b.cols : size_t(0));
        const size_t per_row_tile = size_t(aa.kpad) * 4 + (P > 0 ? size_t(b.kpad) * 4 : 0);
        const size_t c_bytes = size_t(geo.rb) * geo.upb * 4;
        const size_t hown_bytes = size_t(geo.rb) * (P > 0 ? geo.ppb : geo.upb) * 4;
        const size_t len_bytes = size_t(geo.rb + 1) * 4;
        const size_t x_bytes = size_t(2) * geo.rb * geo.upb * G * 4;
        for (int loc = 0; loc < 3; ++loc) {  // 0: A and B in smem, 1: B in smem, A global, 2: both global
          if (tun.stream_location == 0 && loc != 0) continue;
          if (tun.stream_location == 1 && loc != 2) continue;
          const bool a_global = loc >= 1 && stream_a_bytes > 0;
          const bool b_global = loc == 2 && stream_b_bytes > 0;
          if (loc == 1 && stream_a_bytes == 0) continue;
          if (loc == 2 && stream_b_bytes == 0 && tun.stream_location != 1) continue;
          size_t fixed_after_union = Align(c_bytes, 16) + Align(hown_bytes, 16) + Align(len_bytes, 16) +
                                     Align(x_bytes, 16) +
                                     (a_global ? 0 : Align(stream_a_bytes, 16)) +
                                     (b_global ? 0 : Align(stream_b_bytes, 16)) + scale_bytes;
          // Rows of h (and m) in the shared tile.
          int stage_rows;
          size_t tile_bytes;
          if (local) {
            const int rows_pad = static_cast<int>(CeilDiv(geo.rb, rc) * rc);
            stage_rows = geo.rb;
            tile_bytes = Align(size_t(2) * rows_pad * aa.kpad * 4, 16) + (P > 0 ? Align(size_t(rows_pad) * b.kpad * 4, 16) : 0);
          } else {
            const size_t avail = smem_limit > static_cast<int>(fixed_after_union + z_floats * 4 + 64)
                                     ? smem_limit - fixed_after_union - z_floats * 4 - 64
                                     : 0;
            int rows_fit = static_cast<int>(avail / (per_row_tile + 64));
            rows_fit = rows_fit / rc * rc;
            if (rows_fit < rc) continue;
            stage_rows = std::min<int>(rows_fit, static_cast<int>(CeilDiv(geo.rb, rc) * rc));
            if (rs && stage_rows < CeilDiv(geo.rb, rc) * rc) continue;  // its m tile holds every row of the block
            tile_bytes = Align(size_t(stage_rows) * aa.kpad * 4, 16) +
                         (P > 0 ? Align(size_t(stage_rows) * b.kpad * 4, 16) : 0);
          }
          const size_t union_bytes = Align(tile_bytes + Align(z_floats * 4, 16), 16);
          const size_t smem = union_bytes + fixed_after_union;
          if (smem > static_cast<size_t>(smem_limit)) continue;
          int bps = 0;
          if (const char* err = BlocksPerSm(fn, threads, smem, limits, &bps)) return err;
          if (bps < 1) continue;
          if (!local && grid > bps * limits.sm_count) continue;  // cooperative: every block resident
          int waves = static_cast<int>(CeilDiv(grid, int64_t(bps) * limits.sm_count));
          if (is_cluster) {
            // Clusters must fit inside one GPC: fewer of them are resident than SMs / size suggests (measured:
            // 32 clusters of 4 ran as two waves on 132 SMs).
            int clusters = 0;
            if (const char* err = ClustersPossible(fn, threads, smem, geo.nbu, &clusters)) return err;
            if (clusters < 1) continue;
            waves = static_cast<int>(CeilDiv(grid / geo.nbu, clusters));
          }
          double cost = EstimateCycles(shape, wk, geo, aa, b, threads, rc, a_global, b_global, waves, rs != 0);
          if (facts.local_bytes > 64) cost *= 1.15;  // register spills
          if (cost >= best->cost) continue;
          Plan pl;
          KernelParams& kp = pl.kp;
          kp.exchange = geo.exchange;
          kp.nbr = geo.nbr;
          kp.rb = geo.rb;
          kp.nbu = geo.nbu;
          kp.upb = geo.upb;
          kp.ppb = geo.ppb;
          kp.stage_rows = stage_rows;
          kp.a = aa;
          kp.a.stream_global = a_global ? 1 : 0;
          kp.b = b;
          kp.b.kc_reg = 0;
          kp.b.stream_global = b_global ? 1 : 0;
          kp.proj_rs = rs;
          kp.ex_p = rs ? P : 0;
          // shared layout
          size_t off = 0;
          kp.off_h = 0;
          if (local) {
            const int rows_pad = static_cast<int>(CeilDiv(geo.rb, rc) * rc);
            kp.h_buf_floats = rows_pad * aa.kpad;
            off = Align(size_t(2) * rows_pad * aa.kpad * 4, 16);
            kp.off_m = static_cast<int>(off);
            off += P > 0 ? Align(size_t(rows_pad) * b.kpad * 4, 16) : 0;
          } else {
            off = Align(size_t(stage_rows) * aa.kpad * 4, 16);
            kp.off_m = static_cast<int>(off);
            off += P > 0 ? Align(size_t(stage_rows) * b.kpad * 4, 16) : 0;
          }
          kp.off_z = static_cast<int>(off);
          kp.union_bytes = static_cast<int>(union_bytes);
          off = union_bytes;
          kp.off_c = static_cast<int>(off);
          off += Align(c_bytes, 16);
          kp.off_hown = static_cast<int>(off);
          off += Align(hown_bytes, 16);
          kp.off_len = static_cast<int>(off);
          off += Align(len_bytes, 16);
          kp.off_x = static_cast<int>(off);
          off += Align(x_bytes, 16);
          kp.off_stream_a = static_cast<int>(off);
          if (!a_global) off += Align(stream_a_bytes, 16);
          kp.off_stream_b = static_cast<int>(off);
          if (!b_global) off += Align(stream_b_bytes, 16);
          kp.off_scale_a = static_cast<int>(off);
          off += i8 ? Align(size_t(aa.kpad) * 4, 16) : 0;
          kp.off_scale_b = static_cast<int>(off);
          off += i8 && P > 0 ? Align(size_t(b.kpad) * 4, 16) : 0;
          if (off != smem) return "fused_rnn CUDA: internal error in the shared-memory layout";
          // The prologue's staging area for the weight copy (LoadWeightChunks), used when the block's whole slice
          // fits in one pass and is large: measured on an H200 (session 12), staging took the weight load of LSTM
          // H=1024 B=1 (128 KiB per block) from 29.7 k to 22.4 k cycles, but made H=512 (32 KiB: 3.0 k -> 7.6 k)
          // and the ELMo layer (several passes through a 19 KiB area: 105 k -> 132 k) slower. [0, off_len) (the
          // h/m/z union, cell state and own h) is dead until the weights are in, so it is free; otherwise an area
          // is appended at the end if that costs no occupancy (not for cluster plans).
          size_t stage_extra = 0;
          if (tun.stage_weights != 0) {
            const int elem = ElemBytes(wk);
            const size_t chunk_a = size_t(cuda_impl::StageRowBytes(elem, G, aa.cols)) * 4 * aa.ks;
            // (The reduce-scatter's projection slice loads coalesced without staging.)
            const size_t chunk_b = P > 0 && !rs ? size_t(cuda_impl::StageRowBytes(elem, 1, b.cols)) * 4 * b.ks : 0;
            const size_t stage_one = std::max(chunk_a, chunk_b);
            const size_t stage_all = std::max(chunk_a * aa.kc, chunk_b * b.kc);
            // A positive stage_weights forces staging with the area capped at that many chunks of the larger map
            // per pass (tests use it to run several passes).
            const bool forced = tun.stage_weights > 0;
            const size_t need = forced ? std::min(stage_all, size_t(tun.stage_weights) * stage_one) : stage_all;
            const bool worth = forced || stage_all >= (size_t(64) << 10);
            const size_t free_bytes = size_t(kp.off_len);
            if (worth && need <= free_bytes) {
              kp.off_stage = 0;
              kp.stage_bytes = static_cast<int>(need);
            } else if (worth && !is_cluster && smem + Align(need, 16) <= size_t(smem_limit)) {
              int bps_extra = 0;
              if (const char* err = BlocksPerSm(fn, threads, smem + Align(need, 16), limits, &bps_extra)) return err;
              if (bps_extra == bps) {
                stage_extra = Align(need, 16);
                kp.off_stage = static_cast<int>(smem);
                kp.stage_bytes = static_cast<int>(need);
              }
            }
          }
          // workspace layout
          size_t ws = 0;
          const bool need_sync = !local;
          if (need_sync || a_global || b_global) {
            ws = 128;  // watchdog word
            pl.off_counters = ws;
            if (need_sync) ws += size_t(D) * geo.nbr * 128;
            const size_t elem = geo.exchange == cuda_impl::kExchangeTagged ? 8 : 4;
            pl.off_xh = Align(ws, 256);
            ws = pl.off_xh + (need_sync ? size_t(2) * D * shape.batch * CeilDiv(R, 4) * 4 * elem : 0);
            pl.off_xm = Align(ws, 256);
            ws = pl.off_xm + (!need_sync || P == 0 ? 0
                              : rs ? size_t(2) * D * shape.batch * geo.nbu * P * elem
                                   : size_t(2) * D * shape.batch * CeilDiv(H, 4) * 4 * elem);
            // Tagged words must start untagged; the plain buffers' row padding must read as zero.
            pl.ws_memset_bytes = need_sync ? ws : pl.off_xh;
            pl.off_stream_a = Align(ws, 256);
            kp.ws_stream_a_words = a_global ? static_cast<long long>(stream_a_bytes / 8) : 0;
            ws = pl.off_stream_a + size_t(kp.ws_stream_a_words) * 8 * grid;
            pl.off_stream_b = Align(ws, 256);
            kp.ws_stream_b_words = b_global ? static_cast<long long>(stream_b_bytes / 8) : 0;
            ws = pl.off_stream_b + size_t(kp.ws_stream_b_words) * 8 * grid;
            ws = Align(ws, 256);
          }
          pl.ws_bytes = ws;
          pl.fn = fn;
          pl.threads = threads;
          pl.grid = grid;
          pl.rc = rc;
          pl.kc_idx = idx;
          pl.kc_template = kc_template;
          pl.blocks_per_sm = bps;
          pl.smem = smem + stage_extra;
          pl.cooperative = !local;
          pl.cluster = is_cluster ? geo.nbu : 0;
          pl.waves = waves;
          pl.cost = cost;
          *best = pl;
        }
      }
    }
  }
  return nullptr;
}

const char* TryGeometry(const RnnShape& shape, int wk, const Geometry& geo, const CudaDeviceLimits& limits,
                        const CudaTuning& tun, Plan* best) {
  // Phase B as a reduce-scatter (KernelParams::proj_rs): tagged exchange, an even projection width, 16-bit or int8
  // weights and one row per pass (the kernels compiled with it).
  const int P = static_cast<int>(shape.num_proj);
  const bool rs_possible = P > 0 && P % 2 == 0 && geo.exchange == cuda_impl::kExchangeTagged &&
                           wk != cuda_impl::kWeightF32 && geo.rb < 4;  // one row per pass (RC = 1)
  for (int rs = 0; rs <= 1; ++rs) {
    if (rs == 1 && (!rs_possible || tun.proj_reduce == 0)) continue;
    if (rs == 0 && rs_possible && tun.proj_reduce == 1) continue;
    if (const char* err = TryGeometryWith(shape, wk, geo, limits, tun, rs, best)) return err;
  }
  return nullptr;
}

KernelFn GetTcKernel(CellType cell, int wk, int nt_idx, bool col_scaled) {
  using namespace cuda_impl;
  if (col_scaled) {  // TF32 through float16 (wk is kWeightF16)
    return cell == CellType::kLstm ? GetKernelTcLstmF16Scaled(nt_idx) : GetKernelTcGruF16Scaled(nt_idx);
  }
  if (cell == CellType::kLstm) {
    if (wk == kWeightF32) return GetKernelTcLstmF32(nt_idx);
    return wk == kWeightBF16 ? GetKernelTcLstmBF16(nt_idx) : GetKernelTcLstmF16(nt_idx);
  }
  if (wk == kWeightF32) return GetKernelTcGruF32(nt_idx);
  return wk == kWeightBF16 ? GetKernelTcGruBF16(nt_idx) : GetKernelTcGruF16(nt_idx);
}

// Mode 4, the tensor-core kernel (fused_rnn_cuda_tc.cuh): 16-bit weights, or float32 weights as 3xTF32 products; no
// projection, sm_80+, all blocks resident. A block owns upb units (G * upb <= 8 NT gate columns) of one row group
// (rb rows, a multiple of 16), with one warp per KTW k-tiles of U. Every block reads its rows of the whole h each
// step, so the L2 traffic per step is D * nbu * B * H * (2 or 4) bytes: fewer, wider unit blocks (with several row
// groups to keep the SMs busy) move less. Every (row groups, NT) that fits is costed; the cheapest is kept.
const char* TryTensorCoreKind(const RnnShape& shape, int wk, bool allow_tf32, const CudaDeviceLimits& limits,
                              const CudaTuning& tun, Plan* best, bool col_scaled = false) {
  using namespace cuda_impl;
  if (wk != kWeightF16 && wk != kWeightBF16 && wk != kWeightF32) return nullptr;
  if (shape.num_proj > 0 || limits.cc_major < 8 || !limits.cooperative_launch) return nullptr;
  const bool f32 = wk == kWeightF32;
  const bool tf32 = f32 && allow_tf32;  // one TF32 product instead of three, no splits
  const int G = shape.num_gates();
  const int H = static_cast<int>(shape.num_units), D = shape.num_dirs();
  const int B = static_cast<int>(std::max<int64_t>(shape.batch, 1));
  const int ktw = TcKtw(wk);
  const int MTG = static_cast<int>(CeilDiv(B, 16)), KT = static_cast<int>(CeilDiv(H, TcKWidth(wk)));
  const int warps = static_cast<int>(CeilDiv(KT, ktw));
  const int threads = 32 * warps;
  if (threads > 1024) return nullptr;
  const bool forced = tun.mode == kModeTensorCore;
  // The model below ranks the 16-bit kernels' n-tile widths wrongly. Every width forced at LSTM H=512/768/1024, GRU
  // H=1024 and biLSTM H=512, B=8-64 (H100, session 41, bench/gpu/tc_geometry_sweep_h100_session41.json): NT=6 ran
  // ~15% faster, against the other widths, than the model predicts, and picking by the model cost 9.4% on average
  // over those 14 shapes (up to 22.5%) and 5.5% over 9 others (up to 23%). Ranking NT=6 at 0.85 of its cost: 0.6%
  // (up to 5%) and 2.1% (up to 8.9%, a choice between modes that this does not touch). A factor for NT=2 as well
  // fitted the 14 better but missed GRU H=768 B=16 by 17%; not kept. The factor only ranks the tensor-core
  // candidates among themselves; whether one is taken at all is decided as before, by the model's lowest cost
  // against the other modes' plans. The float32 kernels (3xTF32 or TF32; NT <= 4) had the same kind of error at
  // NT=2: 6.5% mean regret over 6 shapes (up to 21.5%) and 2.6% over 9 others (up to 15.6%); NT=2 ranked at 0.7 of
  // its cost: 0.13% and 0.03% (bench/gpu/tc_geometry_sweep_f32_h100_session41.json).
  auto rank_factor = [&](int nt) { return f32 ? (nt == 2 ? 0.7 : 1.0) : (nt == 6 ? 0.85 : 1.0); };
  Plan tc_best;
  double tc_best_rank = std::numeric_limits<double>::infinity();
  double tc_min_cost = std::numeric_limits<double>::infinity();
  for (int groups = 1; groups <= 8; groups *= 2) {
    const int rb = tun.rows_per_block > 0 ? static_cast<int>(CeilDiv(std::min(tun.rows_per_block, B), 16) * 16)
                                          : static_cast<int>(CeilDiv(CeilDiv(B, groups), 16) * 16);
    const int nbr = static_cast<int>(CeilDiv(B, rb));
    if (tun.rows_per_block > 0 ? groups > 1 : nbr != groups) continue;
    const int MTL = rb / 16;
    for (int idx = 0; idx < kTcNumNt; ++idx) {
      const int NT = TcNtValue(idx), MG = TcMgValue(wk, NT);
      const int upb = tun.units_per_block > 0 ? tun.units_per_block : std::min(H, NT * 8 / G);
      if (upb < 1 || G * upb > NT * 8) continue;
      if (tun.units_per_block > 0 && idx > 0 && G * upb <= TcNtValue(idx - 1) * 8) continue;  // smallest NT only
      const int nbu = static_cast<int>(CeilDiv(H, upb));
      const int grid = D * nbr * nbu;
      if (grid > limits.sm_count * 4) continue;
      KernelFn fn = GetTcKernel(shape.cell, wk, idx, col_scaled);
      if (!fn) continue;
      KernelFacts facts;
      if (const char* err = Facts(fn, &facts)) return err;
      if (facts.max_threads < threads) continue;
      const size_t stage = size_t(warps) * ktw * MG * 512;
      const size_t z_bytes = size_t(MTL) * 16 * NT * 8 * 4;
      const size_t pair_bytes = size_t(rb) * upb * 4;
      const size_t len_bytes = size_t(rb + 1) * 4;
      const size_t x_bytes = size_t(2) * rb * upb * G * 4;
      size_t off = stage;
      const size_t off_z = off;
      off += Align(z_bytes, 16);
      const size_t off_c = off;
      off += Align(pair_bytes, 16);
      const size_t off_hown = off;
      off += Align(pair_bytes, 16);
      const size_t off_len = off;
      off += Align(len_bytes, 16);
      const size_t off_x = off;
      off += Align(x_bytes, 16);
      const size_t off_cs = off;  // column scales (TF32 through float16)
      off += Align(size_t(NT) * 8 * 4, 16);
      const size_t off_frag = off;  // exchange offsets of the block's rows and units (TcFragRowPart / ColPart)
      off += Align(size_t(rb + upb) * 4, 16);
      const size_t smem = off;
      if (smem > static_cast<size_t>(limits.max_shared_bytes_per_block_optin)) continue;
      int bps = 0;
      if (const char* err = BlocksPerSm(fn, threads, smem, limits, &bps)) return err;
      if (bps < 1 || grid > bps * limits.sm_count) continue;
      // Cycles per step, fitted to the H200 stamps of session 8 (bench/gpu/NOTES.md; LSTM H=1024 B=64, one row
      // group: fetch + products 6.7 k, cell update 1.4 k, barrier 3.7 k). The h copy is bound by the aggregate L2
      // bandwidth when every block reads the whole h (~2.8 KB per cycle for the chip, ~64 B per cycle per SM),
      // the products by mma.sync issue (~8 cycles per m16n8k16 per scheduler); they overlap in part. float32
      // issues three m16n8k8 TF32 products per 16-bit one's k-range half, plus the hi/lo splits of h and U: counted
      // as 4x per k-tile (fits the H100 stamps of LSTM H=1024 B=64: 29.4 k cycles a step, bench/gpu/NOTES.md);
      // TF32 (allow_tf32) one m16n8k8 per 16-bit k-tile's half: 2x the 16-bit count of k-tiles at half the k each.
      const int passes = static_cast<int>(CeilDiv(MTL, MG));
      const int mg_eff = std::min(MTL, MG);
      const double bytes_block = double(mg_eff) * KT * 512.0;
      const double fetch = 1300.0 + std::max(bytes_block / 64.0, bytes_block * grid / 2800.0);
      const double mma = double(ktw) * mg_eff * NT * 8.0 * CeilDiv(warps, 4) * (f32 ? (tf32 ? 1.0 : 4.0) : 1.0);
      const double reduce = 300.0 + double(mg_eff) * 16 * NT * 8 / 4 * warps / threads * 30.0;
      const double per_step = 2500.0 + passes * (std::max(fetch, mma) + 0.5 * std::min(fetch, mma) + reduce) +
                              CeilDiv(int64_t(rb) * upb, threads) * 1000.0 + 150.0;
      const double prologue = double(H) * G * upb * (f32 ? 4 : 2) / 40.0 + 3000;
      const double cost = double(shape.max_time) * per_step + prologue;
      tc_min_cost = std::min(tc_min_cost, cost);
      const double rank = cost * rank_factor(NT);
      if (rank >= tc_best_rank) continue;
      tc_best_rank = rank;
      Plan& pl = tc_best;
      pl = Plan();
      KernelParams& kp = pl.kp;
      kp.exchange = kModeTensorCore;
      kp.nbr = nbr;
      kp.rb = rb;
      kp.nbu = nbu;
      kp.upb = upb;
      kp.ppb = 0;
      kp.tc_mt = MTG;
      kp.tc_kt = KT;
      kp.tc_tf32 = tf32 ? 1 : 0;
      kp.off_z = static_cast<int>(off_z);
      kp.off_c = static_cast<int>(off_c);
      kp.off_hown = static_cast<int>(off_hown);
      kp.off_len = static_cast<int>(off_len);
      kp.off_x = static_cast<int>(off_x);
      kp.off_cs = static_cast<int>(off_cs);
      kp.off_frag = static_cast<int>(off_frag);
      size_t ws = 128;  // watchdog word
      pl.off_counters = ws;
      ws += size_t(D) * nbr * 128;
      pl.off_xh = Align(ws, 256);
      ws = pl.off_xh + size_t(2) * D * MTG * KT * 256 * 2;
      ws = Align(ws, 256);
      pl.ws_bytes = ws;
      pl.ws_memset_bytes = ws;  // counters zero, h padding (rows >= B, k >= H) zero
      pl.fn = fn;
      pl.threads = threads;
      pl.grid = grid;
      pl.rc = 0;
      pl.kc_idx = idx;
      pl.kc_template = NT;
      pl.blocks_per_sm = bps;
      pl.smem = smem;
      pl.cooperative = true;
      pl.cost = cost;
    }
  }
  if (tc_best.fn && (tc_min_cost < best->cost || (forced && best->kp.exchange != kModeTensorCore))) *best = tc_best;
  return nullptr;
}

// Mode 4 for the weight kind wk. float32 weights with TF32 allowed may also run as TF32 through float16
// (CudaTuning::tf32_exchange16; fused_rnn_cuda_tc_f16copy.cu says why it keeps TF32's precision): the float16 kernel
// on a per-call copy of U, plus (GRU only) the float32-exchange TF32 plan as the fallback for initial states beyond
// float16's range; an LSTM scales such a state instead (KernelParams::tc_h0_shift). Costed as the float16 plan, the
// copy (read U twice, write half of it) and, for a GRU, the fallback's empty launch.
const char* TryTensorCore(const RnnShape& shape, int wk, const CudaDeviceLimits& limits, const CudaTuning& tun,
                          Plan* best) {
  using namespace cuda_impl;
  const bool emu_possible = wk == kWeightF32 && tun.allow_tf32 && tun.tf32_exchange16 != 0;
  if (!emu_possible) return TryTensorCoreKind(shape, wk, tun.allow_tf32 != 0, limits, tun, best);
  Plan direct, emu;
  if (const char* err = TryTensorCoreKind(shape, wk, true, limits, tun, &direct)) return err;
  if (const char* err = TryTensorCoreKind(shape, kWeightF16, false, limits, tun, &emu, /*col_scaled=*/true))
    return err;
  const bool forced = tun.mode == kModeTensorCore;
  Plan chosen = direct;
  if (direct.fn && emu.fn) {
    const int G = shape.num_gates(), D = shape.num_dirs();
    const double GH = double(G) * shape.num_units, K = double(shape.num_units);
    const double copy_bytes = D * K * GH * (4 + 4 + 2);
    // ~1 KB per cycle from HBM/L2; the GRU fallback's launch (a change of kernel function: ~8 us, session 39)
    emu.cost += 3000.0 + copy_bytes / 1000.0 + (shape.cell == CellType::kGru ? 4000.0 : 0.0);
    if (tun.tf32_exchange16 == 1 || emu.cost < direct.cost) {
      chosen = emu;
      chosen.tc_emu = true;
      chosen.fb_kp = direct.kp;
      chosen.fb_fn = direct.fn;
      chosen.fb_threads = direct.threads;
      chosen.fb_grid = direct.grid;
      chosen.fb_smem = direct.smem;
      chosen.fb_off_counters = direct.off_counters;
      chosen.fb_off_xh = direct.off_xh;
      size_t ws = Align(std::max(emu.ws_bytes, direct.ws_bytes), 256);
      chosen.off_gate = ws;
      ws += Align(size_t(1 + size_t(D) * shape.batch) * 4, 256);  // the gate word and the rows' h0 shifts
      chosen.ws_memset_bytes = ws;  // both layouts' counters and h padding, and the gate words
      chosen.off_col_scale = ws;
      ws += Align(size_t(D) * size_t(GH) * 4, 256);
      chosen.off_w16 = ws;
      ws += Align(size_t(D) * size_t(K) * size_t(GH) * 2, 256);
      chosen.ws_bytes = ws;
    }
  }
  if (!chosen.fn) return nullptr;
  if (chosen.cost < best->cost || (forced && best->kp.exchange != kModeTensorCore)) *best = chosen;
  return nullptr;
}

KernelFn GetSmallKernel(CellType cell, int wk, int nr, int ksl, int cluster, bool wide) {
  if (wide)
    return cell == CellType::kLstm ? cuda_impl::GetKernelSmallWideLstm(wk, nr)
                                   : cuda_impl::GetKernelSmallWideGru(wk, nr);
  return cell == CellType::kLstm ? cuda_impl::GetKernelSmallLstm(wk, nr, ksl, cluster)
                                 : cuda_impl::GetKernelSmallGru(wk, nr, ksl, cluster);
}

// Mode 5, the small-hidden-size kernel (fused_rnn_cuda_small.cuh): one block per (direction, batch row), the whole
// recurrent kernel of the direction on chip (NR chunks per lane in registers, up to 2 more in shared memory), one
// __syncthreads per step. Blocks are independent (no cooperative launch: a grid larger than the device runs in
// waves). Every lane count and register split that fits is costed; the cheapest is kept.
// On sm_90 the units of a direction may also split over a thread-block cluster of C = 2..16 blocks (the kernel's
// cluster variant): fewer warps per SM, every chunk in registers, and H up to 256 (8 lanes), for an exchange of ~350
// cycles a step instead of a ~50-cycle __syncthreads; with float32 weights the wide variant keeps up to 8 more
// chunks in shared memory (H up to 512 over 16 blocks). Auto tries C = 2, 4, 8, 16; CudaTuning::units_per_block
// forces C = ceil(H / units_per_block) (units_per_block >= H: one block).
const char* TrySmall(const RnnShape& shape, int wk, const CudaDeviceLimits& limits, const CudaTuning& tun, Plan* best) {
  using namespace cuda_impl;
  if (shape.num_proj > 0) return nullptr;
  const int G = shape.num_gates();
  const int H = static_cast<int>(shape.num_units), D = shape.num_dirs();
  const int64_t B = std::max<int64_t>(shape.batch, 1);
  if (int64_t(D) * G * H >= (int64_t(1) << 30) || B * D > (int64_t(1) << 30)) return nullptr;
  const bool forced = tun.mode == kModeSmall;
  const int smem_limit = limits.max_shared_bytes_per_block_optin;
  for (int cs = 1; cs <= 16; ++cs) {
    // The forced split, or each power of 2 that leaves every member at least 8 units (2 full warps of 4 lanes).
    const int upb = cs == 1 ? H : static_cast<int>(CeilDiv(H, cs));
    if (tun.units_per_block > 0) {
      const int want = tun.units_per_block >= H ? 1 : static_cast<int>(CeilDiv(H, tun.units_per_block));
      if (cs != want) continue;
    } else if ((cs & (cs - 1)) != 0 || (cs > 1 && upb < 8)) {
      continue;
    }
    const int nbu = cs == 1 ? 1 : static_cast<int>(CeilDiv(H, upb));  // no empty member
    if (nbu != cs) continue;
    if (cs > 1 && limits.cc_major < 9) continue;
    if (B * D * cs > (int64_t(1) << 30)) continue;
    const int grid = static_cast<int>(B * D * cs);
    for (int ksl = 4; ksl <= 8; ksl *= 2) {
      if (tun.lanes_per_unit > 0 && ksl != tun.lanes_per_unit) continue;
      DotMap a = MakeMap(upb, H, ksl, 1);
      const int threads = a.threads_used;
      if (threads > 1024) continue;
      if (ksl > 4 && 4 * ksl > std::max(H, 4) * 2 && tun.lanes_per_unit == 0) continue;  // lanes with no rows
      // (register chunks, wide variant): the regular kernels with at most kSmallMaxTail chunks in shared memory,
      // then (clusters, 8 lanes, float32) the wide ones.
      std::vector<std::pair<int, bool>> splits;
      for (int nr = std::min(a.kc, kSmallMaxNi); nr >= 1 && nr >= a.kc - kSmallMaxTail; --nr) splits.push_back({nr, false});
      if (cs > 1 && ksl == 8 && wk == kWeightF32)
        for (int i = 0; i < kSmallWideCount; ++i)
          if (kSmallWideNr[i] < a.kc && a.kc - kSmallWideNr[i] <= kSmallWideTail) splits.push_back({kSmallWideNr[i], true});
      for (const auto& split : splits) {
        const int nr = split.first;
        const bool wide = split.second;
        if (tun.max_reg_chunks >= 0 && nr > tun.max_reg_chunks) continue;
        KernelFn fn = GetSmallKernel(shape.cell, wk, nr, ksl, cs > 1 ? 1 : 0, wide);
        if (!fn) continue;
        KernelFacts facts;
        if (const char* err = Facts(fn, &facts)) return err;
        if (facts.max_threads < threads) continue;
        DotMap aa = a;
        aa.kc_reg = nr;
        const int tail = aa.kc - nr;
        const size_t tail_bytes = Align(size_t(tail) * ChunkBytes(wk, G) * threads, 16);
        const size_t h_bytes = Align(size_t(2) * aa.kpad * 4, 16);
        // Each thread loads its own weights from global memory; stage_weights > 0 (tests) copies them through
        // shared memory, n chunks per pass, as the persistent kernel's prologue does for large slices. Never by
        // default here: on an H100 every staged small plan timed was slower than unstaged (session 13: biLSTM H=100
        // f32 37.3 k cycles against 9.5 k; session 23, kernel alone: LSTM H=64 -10% unstaged, biLSTM H=64 B=8
        // -10%, H=128 bf16 -8/-9%, biLSTM H=100 f16 -7%, GRU H=64 equal; in clusters of 2, biLSTM H=100 22.4 k
        // cycles against 3.6 k).
        const size_t chunk_stage = size_t(StageRowBytes(ElemBytes(wk), G, upb)) * 4 * ksl;
        const size_t stage_all = chunk_stage * aa.kc;
        size_t stage = 0;
        const size_t avail = size_t(smem_limit) > tail_bytes ? size_t(smem_limit) - tail_bytes : 0;
        if (tun.stage_weights > 0) {
          stage = std::min(stage_all, size_t(tun.stage_weights) * chunk_stage);
          if (stage > avail) stage = avail / chunk_stage * chunk_stage;
          if (stage == 0) continue;
        }
        const size_t off_mbar = tail_bytes + std::max(h_bytes, Align(stage, 16));
        const size_t smem = off_mbar + (cs > 1 ? 16 : 0);
        if (smem > size_t(smem_limit)) continue;
        int bps = 0;
        if (const char* err = BlocksPerSm(fn, threads, smem, limits, &bps)) return err;
        if (bps < 1) continue;
        int waves = static_cast<int>(CeilDiv(grid, int64_t(bps) * limits.sm_count));
        if (cs > 1) {
          int clusters = 0;
          if (const char* err = ClustersPossible(fn, threads, smem, cs, &clusters)) return err;
          if (clusters < 1) continue;
          waves = static_cast<int>(CeilDiv(B * D, clusters));
        }
        const double blocks_on_sm = std::min<double>(bps, CeilDiv(grid, limits.sm_count));
        // Cycles per step: issue of the FMAs (+ weight unpacking, tail loads and the shuffles) by the warps of the
        // blocks sharing an SM, at least ~2 cycles per instruction for a lone warp's dependent chains; the tail's
        // shared-memory bytes; a fixed part for the h read, the butterfly latency, the cell update and the barrier.
        const double warps_sched = threads / 32.0 * blocks_on_sm / 4.0;
        const int nq = wk == kWeightI8 ? WordsPerChunk(wk, G) : WordsPerChunk(wk, G) / (wide ? 4 : 2);
        const double instr = nr * (4.0 * G + 1 + DecodeInstr(wk, G, 1)) +
                             tail * (4.0 * G + 1 + nq + DecodeInstr(wk, G, 1)) + 120.0;
        // Cluster: the exchange (st.async + transaction barrier, ~370-420 cycles a step against ~60 for the
        // __syncthreads it replaces, bench/gpu/cluster_exchange_bench.cu), more with each member's store (spread
        // over the unit's lanes since session 24; the term was fitted before and still ranks the measured plans:
        // bench/gpu/NOTES.md).
        const double exchange = cs > 1 ? 300.0 + 15.0 * cs : 0.0;
        // A cluster member's few warps (1-2 per scheduler) issue at ~1.5 cycles per instruction (fitted to biLSTM
        // H=100 B=1 in clusters of 2, 4 and 8 on an H100, session 23: 1287, ~1140 and ~1270 cycles per step).
        const double per_step = 450.0 + 30.0 * std::log2(double(ksl)) +
                                instr * std::max(cs > 1 ? 1.0 : 2.0, warps_sched) * 1.5 +
                                double(tail) * ChunkBytes(wk, G) * threads * blocks_on_sm / 128.0 + exchange;
        const double prologue = double(aa.kc) * ChunkBytes(wk, G) * threads / 40.0 + 3000;
        double cost = (double(shape.max_time) * per_step + prologue) * waves;
        if (facts.local_bytes > 64) cost *= 1.15;  // register spills
        if (cost >= best->cost && !(forced && best->kp.exchange != kModeSmall)) continue;
        Plan pl;
        KernelParams& kp = pl.kp;
        kp.exchange = kModeSmall;
        kp.nbr = static_cast<int>(B);
        kp.rb = 1;
        kp.nbu = cs;
        kp.upb = upb;
        kp.ppb = 0;
        kp.off_mbar = static_cast<int>(off_mbar);
        kp.a = aa;
        kp.a.stream_global = 0;
        kp.off_stream_a = 0;
        kp.off_h = static_cast<int>(tail_bytes);
        kp.off_stage = static_cast<int>(tail_bytes);
        kp.stage_bytes = static_cast<int>(stage);
        kp.h_buf_floats = aa.kpad;
        pl.ws_bytes = 0;
        pl.ws_memset_bytes = 0;
        pl.fn = fn;
        pl.threads = threads;
        pl.grid = grid;
        pl.rc = 1;
        pl.kc_idx = nr;
        pl.kc_template = nr;
        pl.blocks_per_sm = bps;
        pl.smem = smem;
        pl.cooperative = false;
        pl.cluster = cs > 1 ? cs : 0;
        pl.waves = waves;
        pl.cost = cost;
        *best = pl;
      }
    }
  }
  return nullptr;
}

// Mode 6, the int8 LSTM kernel on integer tensor cores (fused_rnn_cuda_i8mma.cuh): int8 weights, batch <= 2, a
// known bound on |h| (no projection, or a projection clip), sm_80+, all blocks resident (one per SM). Units are
// split over as many blocks as the SMs allow (a multiple of 4 units each); the warps of a block cover its 4 * upb
// gate columns in m-tiles of 16 and split k into slices of at most TA register tiles (the smallest TA whose block
// stays within 16 warps). Auto takes it over the general kernel where it measured faster (bench/gpu/NOTES.md,
// session 25): with a projection (ELMo layer 0.733 -> 0.618 ms), not without (LSTM H=1024 B=1 0.282 -> 0.327).
const char* TryInt8Mma(const RnnShape& shape, int wk, const CudaDeviceLimits& limits, const CudaTuning& tun,
                       Plan* best) {
  using namespace cuda_impl;
  const bool forced = tun.mode == kModeInt8Mma;
  if (wk != kWeightI8 || shape.cell != CellType::kLstm || limits.cc_major < 8 || !limits.cooperative_launch)
    return nullptr;
  const int D = shape.num_dirs();
  const int B = static_cast<int>(std::max<int64_t>(shape.batch, 1));
  const int H = static_cast<int>(shape.num_units), P = static_cast<int>(shape.num_proj);
  const int R = static_cast<int>(shape.recurrent_width());
  if (B > 2 || (P > 0 && !(shape.proj_clip > 0.f))) return nullptr;
  if (!forced && P == 0) return nullptr;  // without a projection the general kernel measured faster (H=1024 B=1)
  const int per_dir = std::max(1, limits.sm_count / D);
  int upb = tun.units_per_block > 0 ? tun.units_per_block : static_cast<int>(CeilDiv(H, per_dir));
  upb = static_cast<int>(CeilDiv(upb, 4) * 4);
  const int nbu = static_cast<int>(CeilDiv(H, upb));
  const int grid = D * nbu;
  if (grid > limits.sm_count) return nullptr;
  const int MA = upb / 4, KA = static_cast<int>(CeilDiv(R, 32));
  const int MB = P > 0 ? static_cast<int>(CeilDiv(P, 16)) : 0, KB = P > 0 ? static_cast<int>(CeilDiv(upb, 32)) : 0;
  const int ppb = P > 0 ? static_cast<int>(CeilDiv(P, nbu)) : 0;
  for (int idx = 0; idx < kI8MmaNumTa; ++idx) {
    const int TA = kI8MmaTa[idx];
    const int ks = static_cast<int>(CeilDiv(KA, TA));
    const int ta = static_cast<int>(CeilDiv(KA, ks));
    const int threads = 32 * MA * ks;
    if (threads > 1024 || (threads > 512 && idx + 1 < kI8MmaNumTa)) continue;
    KernelFn fn = GetKernelI8MmaLstm(idx);
    if (!fn) continue;
    KernelFacts facts;
    if (const char* err = Facts(fn, &facts)) return err;
    if (facts.ptx_version < 80 || facts.max_threads < threads) continue;
    KernelParams kp;
    KernelParams::I8Mma& q = kp.q8;
    q.ma = MA;
    q.ka = KA;
    q.ks = ks;
    q.ta = ta;
    q.mb = MB;
    q.kb = KB;
    q.pla_stride = KA * 32 + 16;
    q.plb_stride = KB * 32 + 16;
    // Per-step areas first (zeroed in the prologue: union_bytes), then the prologue's staging area.
    size_t off = 0;
    auto take = [&](size_t bytes) {
      const size_t o = off;
      off += Align(bytes, 16);
      return static_cast<int>(o);
    };
    kp.off_h = take(size_t(2) * KA * 32 * 4);
    q.off_pla = take(size_t(8) * q.pla_stride);
    q.off_plb = take(size_t(8) * q.plb_stride);
    q.off_acc = take(size_t(ks) * MA * 32 * 16);
    q.off_csa = take(size_t(MA) * 16 * 4);
    q.off_csb = take(size_t(MB) * 16 * 4);
    q.off_inva = take(size_t(KA) * 32 * 4);
    q.off_invb = take(size_t(KB) * 32 * 4);
    q.off_flags = take(32 * 4);
    kp.off_z = take(size_t(2) * upb * 16);
    kp.off_c = take(size_t(2) * upb * 4);
    kp.off_hown = take(size_t(2) * std::max(upb, ppb) * 4);
    kp.off_len = take(4 * 4);
    kp.off_x = take(size_t(2) * 2 * upb * 4 * 4);
    q.off_fragb = take(size_t(MB) * KB * 32 * 16);
    kp.union_bytes = static_cast<int>(off);
    const int row_bytes = 4 * upb;
    q.stage_rows_a = std::max(32, std::min(KA * 32, (32768 / row_bytes) / 32 * 32));
    const size_t stage = std::max<size_t>(size_t(q.stage_rows_a) * row_bytes, size_t(32) * P);
    kp.off_stage = take(stage);
    kp.stage_bytes = static_cast<int>(stage);
    const size_t smem = off;
    if (smem > static_cast<size_t>(limits.max_shared_bytes_per_block_optin)) continue;
    int bps = 0;
    if (const char* err = BlocksPerSm(fn, threads, smem, limits, &bps)) return err;
    if (bps < 1 || grid > bps * limits.sm_count) continue;
    // Rough cycles, only to rank against the other modes when forced off: two exchanges a step (~1.3 k cycles
    // each, tagged words), the products at ~16 cycles per mma in a chain of ta, the cell update.
    const double per_step = 1300.0 * (P > 0 ? 2 : 1) + 16.0 * ta + 800.0;
    const double cost = double(shape.max_time) * per_step + 40000.0;
    Plan pl;
    pl.kp = kp;
    KernelParams& k = pl.kp;
    k.exchange = kModeInt8Mma;
    k.nbr = 1;
    k.rb = B;
    k.nbu = nbu;
    k.upb = upb;
    k.ppb = ppb;
    k.ex_p = P;
    size_t ws = 128;  // watchdog word
    pl.off_xh = Align(ws, 256);
    ws = pl.off_xh + size_t(2) * D * B * CeilDiv(R, 4) * 4 * 8;
    pl.off_xm = Align(ws, 256);
    if (P > 0) ws = pl.off_xm + size_t(2) * D * B * nbu * P * 8;
    ws = Align(ws, 256);
    pl.ws_bytes = ws;
    pl.ws_memset_bytes = ws;  // tags from an earlier call must not match
    pl.fn = fn;
    pl.threads = threads;
    pl.grid = grid;
    pl.rc = 0;
    pl.kc_idx = idx;
    pl.kc_template = TA;
    pl.blocks_per_sm = bps;
    pl.smem = smem;
    pl.cooperative = true;
    pl.cost = cost;
    *best = pl;  // eligible and fitting: taken (the rule above says where)
    return nullptr;
  }
  return nullptr;
}

const char* MakePlan(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                     const CudaTuning* tuning, Plan* out) {
  if (const char* err = CheckShapeCuda(shape)) return err;
  if (limits.sm_count <= 0 || limits.max_shared_bytes_per_block_optin <= 0)
    return "fused_rnn CUDA: CudaDeviceLimits not filled in";
  const CudaTuning tun = tuning ? *tuning : CudaTuning();
  const int wk = WeightKind(weight_type);
  const int D = shape.num_dirs();
  const int64_t B = std::max<int64_t>(shape.batch, 1);
  const int H = static_cast<int>(shape.num_units), P = static_cast<int>(shape.num_proj);
  const int R = static_cast<int>(shape.recurrent_width());
  Plan best;
  // Mode 0: one block per (direction, row group), whole recurrent kernel in that block, no grid sync.
  if (tun.mode < 0 || tun.mode == 0) {
    Geometry geo;
    geo.exchange = cuda_impl::kExchangeLocal;
    int64_t rb = tun.rows_per_block > 0 ? tun.rows_per_block : CeilDiv(B * D, limits.sm_count);
    rb = std::min<int64_t>(std::max<int64_t>(rb, 1), B);
    geo.rb = static_cast<int>(rb);
    geo.nbr = static_cast<int>(CeilDiv(B, rb));
    geo.nbu = 1;
    geo.upb = H;
    geo.ppb = P;
    if (const char* err = TryGeometry(shape, wk, geo, limits, tun, &best)) return err;
  }
  // Mode 3: a thread-block cluster per (direction, row group) on sm_90: units split over up to 8 blocks that
  // exchange h through distributed shared memory and the hardware cluster barrier (no grid-wide sync).
  if ((tun.mode < 0 || tun.mode == 3) && limits.cc_major >= 9) {
    for (int cs = 2; cs <= 8; cs *= 2) {
      Geometry geo;
      geo.exchange = cuda_impl::kExchangeCluster;
      geo.upb = tun.units_per_block > 0 ? std::min(tun.units_per_block, H) : static_cast<int>(CeilDiv(H, cs));
      geo.nbu = static_cast<int>(CeilDiv(H, geo.upb));
      if (tun.units_per_block > 0 && cs > 2) break;  // a forced size is one geometry
      if (geo.nbu < 2 || geo.nbu > 8) continue;
      const int64_t max_groups = std::max<int64_t>(1, limits.sm_count / (int64_t(D) * geo.nbu));
      int64_t rb = tun.rows_per_block > 0 ? tun.rows_per_block : CeilDiv(B, max_groups);
      rb = std::min<int64_t>(std::max<int64_t>(rb, 1), B);
      geo.rb = static_cast<int>(rb);
      geo.nbr = static_cast<int>(CeilDiv(B, rb));
      geo.ppb = P > 0 ? static_cast<int>(CeilDiv(P, geo.nbu)) : 0;
      if (const char* err = TryGeometry(shape, wk, geo, limits, tun, &best)) return err;
    }
  }
  // Modes 1/2: the units of a direction split over blocks that exchange h every step.
  if ((tun.mode < 0 || tun.mode == 1 || tun.mode == 2) && limits.cooperative_launch) {
    const int max_blocks_per_dir = std::max(1, limits.sm_count / D);
    Geometry geo;
    geo.nbr = 1;
    geo.rb = static_cast<int>(B);
    geo.upb = tun.units_per_block > 0 ? std::min(tun.units_per_block, H)
                                      : static_cast<int>(CeilDiv(H, max_blocks_per_dir));
    geo.nbu = static_cast<int>(CeilDiv(H, geo.upb));
    geo.ppb = P > 0 ? static_cast<int>(CeilDiv(P, geo.nbu)) : 0;
    for (int ex = 1; ex <= 2; ++ex) {
      if (tun.mode > 0 && ex != tun.mode) continue;
      geo.exchange = ex;
      if (const char* err = TryGeometry(shape, wk, geo, limits, tun, &best)) return err;
    }
  }
  // Mode 4: tensor cores for a batch (16-bit weights; float32 weights as 3xTF32). Compared on the same cost scale as
  // the others; auto only from 8 rows with 16-bit weights (below that a step is latency-bound and the h rounding to
  // 16 bits buys nothing) and from 16 with float32 ones (H100: LSTM H=1024 B=8 0.63 ms against the general kernel's
  // 0.56, B=16 0.69 against 0.94), or from 8 with float32 weights and TF32 products allowed.
  const int64_t tc_min_batch = wk == cuda_impl::kWeightF32 && !tun.allow_tf32 ? 16 : 8;
  if ((tun.mode < 0 && shape.batch >= tc_min_batch) || tun.mode == cuda_impl::kModeTensorCore) {
    if (const char* err = TryTensorCore(shape, wk, limits, tun, &best)) return err;
    if (tun.mode == cuda_impl::kModeTensorCore && best.kp.exchange != cuda_impl::kModeTensorCore)
      return "fused_rnn CUDA: the tensor-core mode needs float32 or 16-bit weights, no projection, sm_80+, and a "
             "grid that fits";
  }
  // Mode 5: the small-hidden-size kernel (no projection; the whole recurrent kernel of a direction in one block).
  if (tun.mode < 0 || tun.mode == cuda_impl::kModeSmall) {
    if (const char* err = TrySmall(shape, wk, limits, tun, &best)) return err;
    if (tun.mode == cuda_impl::kModeSmall && best.kp.exchange != cuda_impl::kModeSmall)
      return "fused_rnn CUDA: the small-hidden-size mode needs no projection and a recurrent kernel that fits one block";
  }
  // Mode 6: int8 LSTM weights on integer tensor cores at batch <= 2.
  if (tun.mode < 0 || tun.mode == cuda_impl::kModeInt8Mma) {
    if (const char* err = TryInt8Mma(shape, wk, limits, tun, &best)) return err;
    if (tun.mode == cuda_impl::kModeInt8Mma && best.kp.exchange != cuda_impl::kModeInt8Mma)
      return "fused_rnn CUDA: the int8 tensor-core mode needs int8 LSTM weights, batch <= 2, a projection clip with a "
             "projection, sm_80+, and a grid that fits";
  }
  if (!best.fn) return "fused_rnn CUDA: no kernel configuration fits this shape on this device";
  KernelParams& kp = best.kp;
  kp.D = D;
  kp.B = static_cast<int>(shape.batch);
  kp.T = static_cast<int>(shape.max_time);
  kp.H = H;
  kp.P = P;
  kp.R = R;
  kp.reverse_mask = shape.direction == Direction::kReverse ? 1 : (shape.direction == Direction::kBidirectional ? 2 : 0);
  kp.time_major = shape.time_major ? 1 : 0;
  kp.cell_clip = shape.cell == CellType::kLstm ? shape.cell_clip : 0.f;
  kp.proj_clip = P > 0 ? shape.proj_clip : 0.f;
  kp.reserve_f = shape.cell == CellType::kLstm ? 5 * H + P : 4 * H;
  kp.ex_r = static_cast<int>(CeilDiv(R, 4) * 4);
  kp.ex_h = static_cast<int>(CeilDiv(H, 4) * 4);
  *out = best;
  return nullptr;
}

// INT8 and 16-bit weights (CudaTuning::as_float32): the plan of the weights' own kind, or the float32 plan of the
// same shape on weights converted per call when auto finds that cheaper (or it is forced). The float32 plan runs exact
// float32 products (no TF32), as the narrow kinds' general kernels do on their decoded weights. Mode 6 (int8 tensor
// cores) is never replaced: it runs where the float32 weights would not stay on chip (the ELMo layer: 2.5 ms in
// float32 against 0.58 in mode 6 on an H100).
constexpr int64_t kDecideSteps = 100;
const char* MakePlanAsFloat32(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                              const CudaTuning* tuning, Plan* out) {
  const CudaTuning tun = tuning ? *tuning : CudaTuning();
  Plan own;
  const char* own_err = MakePlan(shape, weight_type, limits, tuning, &own);
  // By weight_type alone: the plan cache's key has no shape.int8_weights (CudaForward checks that the two agree).
  const bool narrow = weight_type == WeightType::kInt8 || weight_type == WeightType::kFloat16 ||
                      weight_type == WeightType::kBFloat16;
  const bool consider = narrow && (tun.as_float32 == 1 || (tun.as_float32 < 0 && tun.mode < 0));
  if (!consider || (!own_err && own.kp.exchange == cuda_impl::kModeInt8Mma)) {
    if (own_err) return own_err;
    *out = own;
    return nullptr;
  }
  RnnShape fs = shape;
  fs.int8_weights = false;
  CudaTuning ft = tun;
  ft.allow_tf32 = 0;
  ft.tf32_exchange16 = 0;
  ft.as_float32 = 0;
  Plan fp;
  if (MakePlan(fs, WeightType::kFloat32, limits, &ft, &fp) != nullptr) {
    if (own_err) return own_err;
    *out = own;
    return nullptr;
  }
  const int G = shape.num_gates(), D = shape.num_dirs();
  const size_t R = static_cast<size_t>(shape.recurrent_width()), H = static_cast<size_t>(shape.num_units),
               P = static_cast<size_t>(shape.num_proj);
  const size_t rec_bytes = size_t(D) * R * G * H * 4, proj_bytes = size_t(D) * H * P * 4;
  // The conversion: ~2 us for the launch and the kernel switch, and the bytes (narrow read, float32 written) at HBM
  // speed, ~1.5 KB a cycle. Fitted on an H100 (session 40: the int8 call converted took 2.0, 3.7 and 7.7 us longer
  // than the float32 one for 0.4, 5 and 20 MB).
  const double read_per_f32_byte = weight_type == WeightType::kInt8 ? 0.25 : 0.5;
  const double conv_cost = 4000.0 + double(rec_bytes + proj_bytes) * (1.0 + read_per_f32_byte) / 1500.0;
  // int8 decides on the costs of a 100-step call: the int8 kernels' fixed cost per call is under-estimated (H100,
  // session 40, LSTM H=1024 B=1: ~31 us against float32's ~20, from the times at 5 and 100 steps), and converting
  // measured faster at 5, 20 and 100 steps on every shape swept where it was at 100
  // (bench/gpu/as_float32_sweep_h100_session40.txt), while costs at the call's own length kept int8 at 5 steps
  // (LSTM H=1024 B=1: 0.0443 ms against 0.0380 converted). 16-bit weights decide at the call's own length: their
  // kernels' prologue loads half of float32's bytes, which the estimates do count, and at 5-20 steps they were
  // measured faster than converting (LSTM H=1024 B=1 float16, T=5: 0.0302 against 0.0367), which those costs get.
  double own_cost = own.cost, f_cost = fp.cost;
  int own_mode = own.kp.exchange;
  if (!own_err && tun.as_float32 != 1 && weight_type == WeightType::kInt8 && shape.max_time != kDecideSteps) {
    RnnShape s100 = shape, f100 = fs;
    s100.max_time = f100.max_time = kDecideSteps;
    Plan a, b;
    if (MakePlan(s100, weight_type, limits, tuning, &a) == nullptr &&
        MakePlan(f100, WeightType::kFloat32, limits, &ft, &b) == nullptr) {
      own_cost = a.cost;
      own_mode = a.kp.exchange;
      f_cost = b.cost;
    }
  }
  // At one batch row the narrow kinds' general and small-kernel plans measured 9-31% slower than their estimates
  // relative to float32's (H100, session 40: LSTM H=1024 B=1, 100 steps, float16 est 190 us, 249 measured, float32
  // 201 and 207; int8 225 and 290; at B=4 all kinds were under-estimated alike): decoding each weight lengthens a
  // latency-bound step more than the model counts. The comparison charges them 1.25x.
  if (shape.batch == 1 && own_mode != cuda_impl::kModeTensorCore && own_mode != cuda_impl::kModeInt8Mma) own_cost *= 1.25;
  if (!own_err && tun.as_float32 != 1 && !(f_cost + conv_cost < own_cost)) {
    *out = own;
    return nullptr;
  }
  fp.to_f32 = true;
  fp.kernel_ws_bytes = fp.ws_bytes;
  // The int at offset 0 is the watchdog word CudaWatchdogFired reads: a plan without workspace of its own gets 256
  // bytes for it, which the converting kernel zeroes.
  size_t ws = Align(std::max<size_t>(fp.ws_bytes, 4), 256);
  fp.off_f32_rec = ws;
  ws += Align(rec_bytes, 256);
  if (P > 0) {
    fp.off_f32_proj = ws;
    ws += Align(proj_bytes, 256);
  }
  fp.ws_bytes = ws;
  fp.cost += conv_cost;
  *out = fp;
  return nullptr;
}

// Plans are cached: the search above calls the occupancy calculator for every candidate, far too slow per call.
struct PlanKey {
  int v[27];
  bool operator<(const PlanKey& o) const { return std::memcmp(v, o.v, sizeof(v)) < 0; }
};
std::mutex& g_plan_mutex = *new std::mutex;  // leaked, as the caches above
std::map<PlanKey, Plan>& g_plans = *new std::map<PlanKey, Plan>;

const char* GetPlan(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                    const CudaTuning* tuning, Plan* out) {
  // The size checks come before the cache lookup: the key holds the sizes as int, which is exact only inside the
  // checked range (a batch of 2^32 + b must not find the plan of batch b).
  if (const char* err = CheckShapeCuda(shape)) return err;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return CudaMessage("cudaGetDevice", e);
  const CudaTuning tun = tuning ? *tuning : CudaTuning();
  float clips[2] = {shape.cell_clip, shape.proj_clip};
  int clip_bits[2];
  std::memcpy(clip_bits, clips, sizeof(clips));
  PlanKey key = {{static_cast<int>(shape.cell), static_cast<int>(shape.direction), static_cast<int>(shape.max_time),
                  static_cast<int>(shape.batch), static_cast<int>(shape.num_units), static_cast<int>(shape.num_proj),
                  shape.time_major ? 1 : 0, clip_bits[0], clip_bits[1], static_cast<int>(weight_type), device,
                  limits.sm_count, limits.max_shared_bytes_per_block_optin, limits.cooperative_launch,
                  limits.cc_major, limits.cc_minor, tun.mode, tun.units_per_block, tun.rows_per_block,
                  tun.max_reg_chunks, tun.stream_location, tun.lanes_per_unit, tun.stage_weights,
                  tun.proj_reduce, tun.allow_tf32 ? 1 : 0, tun.tf32_exchange16, tun.as_float32}};
  {
    std::lock_guard<std::mutex> lock(g_plan_mutex);
    auto it = g_plans.find(key);
    if (it != g_plans.end()) {
      *out = it->second;
      return nullptr;
    }
  }
  if (const char* err = MakePlanAsFloat32(shape, weight_type, limits, tuning, out)) return err;
  std::lock_guard<std::mutex> lock(g_plan_mutex);
  if (g_plans.size() > 4096) g_plans.clear();
  g_plans[key] = *out;
  return nullptr;
}

}  // namespace

const char* QueryCudaDeviceLimits(int device, CudaDeviceLimits* limits) {
  if (!limits) return "fused_rnn CUDA: null limits";
  auto get = [&](cudaDeviceAttr attr, int* v) { return cudaDeviceGetAttribute(v, attr, device); };
  cudaError_t e;
  if ((e = get(cudaDevAttrMultiProcessorCount, &limits->sm_count)) != cudaSuccess ||
      (e = get(cudaDevAttrMaxSharedMemoryPerBlockOptin, &limits->max_shared_bytes_per_block_optin)) != cudaSuccess ||
      (e = get(cudaDevAttrMaxSharedMemoryPerMultiprocessor, &limits->max_shared_bytes_per_sm)) != cudaSuccess ||
      (e = get(cudaDevAttrMaxThreadsPerMultiProcessor, &limits->max_threads_per_sm)) != cudaSuccess ||
      (e = get(cudaDevAttrMaxRegistersPerMultiprocessor, &limits->max_regs_per_sm)) != cudaSuccess ||
      (e = get(cudaDevAttrL2CacheSize, &limits->l2_bytes)) != cudaSuccess ||
      (e = get(cudaDevAttrComputeCapabilityMajor, &limits->cc_major)) != cudaSuccess ||
      (e = get(cudaDevAttrComputeCapabilityMinor, &limits->cc_minor)) != cudaSuccess ||
      (e = get(cudaDevAttrCooperativeLaunch, &limits->cooperative_launch)) != cudaSuccess)
    return CudaMessage("cudaDeviceGetAttribute", e);
  return nullptr;
}

size_t CudaForwardWorkspaceBytes(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                                 const CudaTuning* tuning) {
  Plan plan;
  if (GetPlan(shape, weight_type, limits, tuning, &plan) != nullptr) return 0;
  return plan.ws_bytes;
}

bool CudaMessageIsRuntimeFailure(const char* message) {
  return message != nullptr &&
         std::strncmp(message, kCudaRuntimeFailurePrefix, sizeof(kCudaRuntimeFailurePrefix) - 1) == 0;
}

const char* CudaDescribePlan(const RnnShape& shape, WeightType weight_type, const CudaDeviceLimits& limits,
                             const CudaTuning* tuning, char* buf, size_t buf_len) {
  Plan pl;
  if (const char* err = GetPlan(shape, weight_type, limits, tuning, &pl)) return err;
  if (pl.to_f32 && buf_len > 0) {  // the float32 plan's own description follows
    const int n = std::snprintf(buf, buf_len, "%s weights converted to float32 per call, then ",
                                weight_type == WeightType::kInt8 ? "int8" : "16-bit");
    if (n > 0 && static_cast<size_t>(n) < buf_len) {
      buf += n;
      buf_len -= n;
    }
  }
  const KernelParams& k = pl.kp;
  if (k.exchange == cuda_impl::kModeTensorCore) {
    std::snprintf(buf, buf_len,
                  "mode=tensorcore%s grid=%d (D=%d x rowgroups=%d x unitblocks=%d) threads=%d rows/block=%d "
                  "units/block=%d NT=%d KTW=%d m-tiles=%d k-tiles=%d smem=%zu ws=%zu blocks/SM=%d est_us=%.1f",
                  pl.tc_emu ? (shape.num_gates() == 4 ? "(tf32 via f16, h0 scaled)" : "(tf32 via f16, f32-exchange fallback)") : (k.tc_tf32 ? "(tf32)" : ""), pl.grid, k.D, k.nbr, k.nbu, pl.threads, k.rb, k.upb, pl.kc_template, cuda_impl::TcKtw(pl.tc_emu ? cuda_impl::kWeightF16 : (pl.to_f32 ? cuda_impl::kWeightF32 : WeightKind(weight_type))), k.tc_mt, k.tc_kt,
                  pl.smem, pl.ws_bytes, pl.blocks_per_sm, pl.cost / 1980.0);
    return nullptr;
  }
  if (k.exchange == cuda_impl::kModeInt8Mma) {
    std::snprintf(buf, buf_len,
                  "mode=int8mma grid=%d (D=%d x unitblocks=%d) threads=%d units/block=%d proj/block=%d A[m-tiles=%d "
                  "k-tiles=%d slices=%d tiles/warp=%d (tmpl %d)] B[m-tiles=%d k-tiles=%d] smem=%zu ws=%zu "
                  "blocks/SM=%d",
                  pl.grid, k.D, k.nbu, pl.threads, k.upb, k.ppb, k.q8.ma, k.q8.ka, k.q8.ks, k.q8.ta,
                  pl.kc_template, k.q8.mb, k.q8.kb, pl.smem, pl.ws_bytes, pl.blocks_per_sm);
    return nullptr;
  }
  if (k.exchange == cuda_impl::kModeSmall) {
    std::snprintf(buf, buf_len,
                  "mode=small grid=%d (D=%d x rows=%d x cluster=%d) units/block=%d threads=%d A[ksl=%d kc=%d reg=%d "
                  "tail=%d] weight_stage=%d@%d smem=%zu ws=%zu blocks/SM=%d waves=%d est_us=%.1f",
                  pl.grid, k.D, k.nbr, k.nbu, k.upb, pl.threads, k.a.ksl, k.a.kc, k.a.kc_reg, k.a.kc - k.a.kc_reg,
                  k.stage_bytes,
                  k.off_stage, pl.smem, pl.ws_bytes, pl.blocks_per_sm, pl.waves, pl.cost / 1980.0);
    return nullptr;
  }
  static const char* kModes[] = {"local", "tagged", "counter", "cluster"};
  std::snprintf(buf, buf_len,
                "mode=%s grid=%d (D=%d x rowgroups=%d x unitblocks=%d) threads=%d rows/block=%d units/block=%d "
                "proj/block=%d RC=%d A[ksl=%d ksw=%d kc=%d reg=%d(tmpl %d) stream=%s] B[ksl=%d ksw=%d kc=%d "
                "stream=%s%s] stage_rows=%d weight_stage=%d@%d smem=%zu ws=%zu blocks/SM=%d waves=%d est_us=%.1f",
                kModes[k.exchange], pl.grid, k.D, k.nbr, k.nbu, pl.threads, k.rb, k.upb, k.ppb, pl.rc, k.a.ksl,
                k.a.ksw, k.a.kc, k.a.kc_reg, pl.kc_template, k.a.kc == k.a.kc_reg ? "-" : (k.a.stream_global ? "global" : "smem"),
                k.b.ksl, k.b.ksw, k.b.kc, k.P == 0 ? "-" : (k.b.stream_global ? "global" : "smem"),
                k.proj_rs ? " reduce-scatter" : "", k.stage_rows,
                k.stage_bytes, k.off_stage, pl.smem, pl.ws_bytes, pl.blocks_per_sm, pl.waves, pl.cost / 1980.0);
  return nullptr;
}

const char* CudaForward(const RnnShape& shape, const RnnForwardArgs& args, WeightType weight_type,
                        const void* recurrent_kernel_16bit, const void* projection_kernel_16bit, void* workspace,
                        size_t workspace_bytes, void* stream_ptr, const CudaDeviceLimits& limits,
                        const CudaTuning* tuning) {
  Plan pl;
  if (const char* err = GetPlan(shape, weight_type, limits, tuning, &pl)) return err;
  if (shape.batch == 0) return nullptr;
  const bool i8 = weight_type == WeightType::kInt8;
  if (i8 != shape.int8_weights) return "fused_rnn CUDA: WeightType::kInt8 goes with shape.int8_weights (and only with it)";
  const bool is16 = weight_type == WeightType::kFloat16 || weight_type == WeightType::kBFloat16;
  const void* w_rec = i8 ? static_cast<const void*>(args.recurrent_kernel_q8)
                         : (is16 ? recurrent_kernel_16bit : static_cast<const void*>(args.recurrent_kernel));
  const void* w_proj = i8 ? static_cast<const void*>(args.projection_kernel_q8)
                          : (is16 ? projection_kernel_16bit : static_cast<const void*>(args.projection_kernel));
  if (!w_rec) return "fused_rnn CUDA: recurrent kernel pointer is null (16-bit weight types take the 16-bit copy)";
  if (shape.num_proj > 0 && !w_proj) return "fused_rnn CUDA: projection kernel pointer is null";
  if (i8 && (!args.recurrent_scale || (shape.num_proj > 0 && !args.projection_scale)))
    return "fused_rnn CUDA: int8 weights need recurrent_scale (and projection_scale with a projection)";
  if (shape.max_time > 0 && (!args.x_proj || !args.output)) return "fused_rnn CUDA: x_proj or output is null";
  if (pl.ws_bytes > 0) {
    if (!workspace || workspace_bytes < pl.ws_bytes)
      return Fmt("fused_rnn CUDA: workspace too small%s (need %lld bytes)", "", static_cast<long long>(pl.ws_bytes));
    if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return "fused_rnn CUDA: workspace must be 256-byte aligned";
  }
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  KernelParams kp = pl.kp;
  kp.x_proj = args.x_proj;
  kp.w_rec = w_rec;
  kp.rec_bias = shape.cell == CellType::kGru ? args.recurrent_bias : nullptr;
  kp.w_proj = w_proj;
  kp.rec_scale = i8 ? args.recurrent_scale : nullptr;
  kp.proj_scale = i8 && shape.num_proj > 0 ? args.projection_scale : nullptr;
  kp.lengths = args.sequence_lengths;
  kp.h0 = args.initial_h;
  kp.c0 = shape.cell == CellType::kLstm ? args.initial_c : nullptr;
  kp.out = args.output;
  kp.final_h = args.final_h;
  kp.final_c = shape.cell == CellType::kLstm ? args.final_c : nullptr;
  kp.reserve = args.reserve;
  kp.debug_clock = tuning ? reinterpret_cast<long long*>(tuning->debug_clock) : nullptr;
  // INT8 or 16-bit weights run as float32: the plan's kernel reads float32 weights, converted first into the
  // workspace.
  if (pl.to_f32) {
    char* ws = static_cast<char*>(workspace);
    float* rec32 = reinterpret_cast<float*>(ws + pl.off_f32_rec);
    const bool proj = shape.num_proj > 0;
    float* proj32 = proj ? reinterpret_cast<float*>(ws + pl.off_f32_proj) : nullptr;
    const int D = shape.num_dirs(), G = shape.num_gates();
    const long long rec_rows = static_cast<long long>(D) * shape.recurrent_width();
    const long long proj_rows = static_cast<long long>(D) * shape.num_units;
    const int rec_cols = static_cast<int>(G * shape.num_units), proj_cols = static_cast<int>(shape.num_proj);
    const cudaError_t e = static_cast<cudaError_t>(
        i8 ? cuda_impl::LaunchI8Dequant(args.recurrent_kernel_q8, args.recurrent_scale, rec_rows, rec_cols, rec32,
                                        proj ? args.projection_kernel_q8 : nullptr, args.projection_scale, proj_rows,
                                        proj_cols, proj32, reinterpret_cast<int*>(ws), limits.sm_count, stream)
           : cuda_impl::LaunchWiden16(weight_type == WeightType::kBFloat16,
                                      static_cast<const uint16_t*>(recurrent_kernel_16bit), rec_rows * rec_cols, rec32,
                                      proj ? static_cast<const uint16_t*>(projection_kernel_16bit) : nullptr,
                                      proj_rows * proj_cols, proj32, reinterpret_cast<int*>(ws), limits.sm_count,
                                      stream));
    if (e != cudaSuccess) return CudaMessage("kernel launch (weights converted to float32)", e);
    kp.w_rec = rec32;
    kp.w_proj = proj32;
    kp.rec_scale = nullptr;
    kp.proj_scale = nullptr;
  }
  if (pl.to_f32 ? pl.kernel_ws_bytes > 0 : pl.ws_bytes > 0) {
    char* ws = static_cast<char*>(workspace);
    kp.watchdog = reinterpret_cast<int*>(ws);
    if (kp.exchange == cuda_impl::kModeTensorCore) {
      kp.counters = reinterpret_cast<unsigned*>(ws + pl.off_counters);
      kp.xh16 = ws + pl.off_xh;
    } else if (kp.exchange == cuda_impl::kModeInt8Mma) {
      kp.xh_tag = reinterpret_cast<unsigned long long*>(ws + pl.off_xh);
      kp.xm_tag = shape.num_proj > 0 ? reinterpret_cast<unsigned long long*>(ws + pl.off_xm) : nullptr;
    } else if (kp.exchange != cuda_impl::kExchangeLocal) {
      kp.counters = reinterpret_cast<unsigned*>(ws + pl.off_counters);
      if (kp.exchange == cuda_impl::kExchangeTagged) {
        kp.xh_tag = reinterpret_cast<unsigned long long*>(ws + pl.off_xh);
        kp.xm_tag = shape.num_proj > 0 ? reinterpret_cast<unsigned long long*>(ws + pl.off_xm) : nullptr;
      } else {
        kp.xh = reinterpret_cast<float*>(ws + pl.off_xh);
        kp.xm = shape.num_proj > 0 ? reinterpret_cast<float*>(ws + pl.off_xm) : nullptr;
      }
    }
    kp.ws_stream_a = ws + pl.off_stream_a;
    kp.ws_stream_b = ws + pl.off_stream_b;
    if (pl.ws_memset_bytes > 0) {
      cudaError_t e = cudaMemsetAsync(workspace, 0, pl.ws_memset_bytes, stream);
      if (e != cudaSuccess) return CudaMessage("cudaMemsetAsync(workspace)", e);
    }
    if (tuning && tuning->test_raise_watchdog) {
      cudaError_t e = cudaMemsetAsync(workspace, 1, 1, stream);  // the int at offset 0 becomes 1 (little-endian)
      if (e != cudaSuccess) return CudaMessage("cudaMemsetAsync(watchdog)", e);
    }
  }
  {
    std::lock_guard<std::mutex> lock(g_facts_mutex);
    if (const char* err = RaiseSmemCapLocked(reinterpret_cast<const void*>(pl.fn))) return err;
    if (pl.tc_emu)
      if (const char* err = RaiseSmemCapLocked(reinterpret_cast<const void*>(pl.fb_fn))) return err;
  }
  KernelParams fb;  // TF32 through float16: the float32-exchange kernel that runs instead for a large h0
  if (pl.tc_emu) {
    char* ws = static_cast<char*>(workspace);
    int* gate = reinterpret_cast<int*>(ws + pl.off_gate);
    const int G = shape.num_gates(), D = shape.num_dirs();
    const int H = static_cast<int>(shape.num_units);
    // Geometry from the fallback plan; everything the call binds (pointers, sizes, clips) from this one.
    fb = kp;
    const KernelParams& g = pl.fb_kp;
    fb.exchange = g.exchange;
    fb.nbr = g.nbr;
    fb.rb = g.rb;
    fb.nbu = g.nbu;
    fb.upb = g.upb;
    fb.ppb = g.ppb;
    fb.tc_mt = g.tc_mt;
    fb.tc_kt = g.tc_kt;
    fb.tc_tf32 = g.tc_tf32;
    fb.off_z = g.off_z;
    fb.off_c = g.off_c;
    fb.off_hown = g.off_hown;
    fb.off_len = g.off_len;
    fb.off_x = g.off_x;
    fb.off_cs = g.off_cs;
    fb.off_frag = g.off_frag;
    fb.w_rec = args.recurrent_kernel;
    fb.tc_col_scale = nullptr;
    fb.counters = reinterpret_cast<unsigned*>(ws + pl.fb_off_counters);
    fb.xh16 = ws + pl.fb_off_xh;
    fb.tc_gate = gate;
    fb.tc_gate_run_if = 1;
    kp.w_rec = ws + pl.off_w16;
    kp.tc_col_scale = reinterpret_cast<const float*>(ws + pl.off_col_scale);
    if (G == 4) {  // LSTM: one kernel; the rows' h0 shifts follow the gate word (fused_rnn_cuda_tc_f16copy.cu)
      kp.tc_gate = nullptr;
      kp.tc_h0_shift = gate + 1;
    } else {
      kp.tc_gate = gate;
      kp.tc_gate_run_if = 0;
    }
    const bool skip_copy = tuning && (tuning->test_tf32h_skip & 1);
    const cudaError_t e = skip_copy ? cudaSuccess : static_cast<cudaError_t>(cuda_impl::LaunchTcF16Copy(
        args.recurrent_kernel, D, H, G * H, reinterpret_cast<uint16_t*>(ws + pl.off_w16),
        reinterpret_cast<float*>(ws + pl.off_col_scale), args.initial_h,
        args.initial_h ? static_cast<long long>(D) * shape.batch * H : 0, H, gate, stream));
    if (e != cudaSuccess) return CudaMessage("kernel launch (TF32 through float16: the copy of U)", e);
  }
  auto launch = [&](KernelFn fn, int grid, int threads, size_t smem, const KernelParams& params) -> const char* {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    cfg.attrs = attr;
    cfg.numAttrs = 0;
    if (pl.cooperative) {
      attr[0].id = cudaLaunchAttributeCooperative;
      attr[0].val.cooperative = 1;
      cfg.numAttrs = 1;
    } else if (pl.cluster > 0) {
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = pl.cluster;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.numAttrs = 1;
    }
    cudaError_t e = cudaLaunchKernelEx(&cfg, fn, params);
    if (e != cudaSuccess) return CudaMessage(pl.cooperative ? "cooperative kernel launch" : "kernel launch", e);
    return nullptr;
  };
  if (const char* err = launch(pl.fn, pl.grid, pl.threads, pl.smem, kp)) return err;
  if (pl.tc_emu && shape.num_gates() == 3 && !(tuning && (tuning->test_tf32h_skip & 2)))
    if (const char* err = launch(pl.fb_fn, pl.fb_grid, pl.fb_threads, pl.fb_smem, fb)) return err;
  return nullptr;
}

int CudaWatchdogFired(const void* workspace, size_t workspace_bytes) {
  if (!workspace || workspace_bytes < 4) return 0;
  int v = 0;
  if (cudaMemcpy(&v, workspace, sizeof(v), cudaMemcpyDeviceToHost) != cudaSuccess) return -1;
  return v != 0 ? 1 : 0;
}

}  // namespace fused_rnn
