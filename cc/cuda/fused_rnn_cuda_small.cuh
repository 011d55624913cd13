// Mode 5, the small-hidden-size kernel (device code; included only by the fused_rnn_cuda_small_*.cu files).
//
// One block per (direction, batch row) holds the whole recurrent kernel of its direction in registers and runs
// every step of its row with ONE __syncthreads per step and nothing else: no grid or cluster barrier, no global
// exchange, no shared-memory weight stream, no z round trip through shared memory. Blocks never wait for each
// other, so any grid size runs (in waves when it does not fit) and there is nothing that could deadlock.
//
// Layout: KSL lanes per hidden unit j (4 or 8); lane kl of the unit owns the k-rows
// 4 * (kl + ksl * i) + e (i < kc, e < 4) of all G gate columns of unit j, as kc chunks (the DotMap and
// LoadWeightChunks layout of the persistent kernel with one warp slot): the first NR in registers, at most a
// couple more (the tail) in the thread's own shared-memory slots. Per step each thread:
//   1. reads its float4 of h_{t-1} from the shared tile (the ksl lanes of a unit read consecutive float4, the
//      32 / ksl units of a warp the same ones: conflict-free broadcasts);
//   2. accumulates its G partial gate sums (two accumulator sets: half-length dependent chains); lane g of the unit
//      starts gate g's sum at x_proj (LSTM; GRU gates z and r, and the n gate's recurrent bias), so no separate add;
//   3. reduce-scatters the G sums over the unit's KSL lanes (lane q * KSL / 4 ends with gate q's total), applies
//      its gate's activation, and gathers the four activations back with shuffles;
//   4. runs the rest of the cell update redundantly in every lane of the unit (no divergence, c and h stay in
//      registers); lane 0 stores h to the output and into the other h buffer, then the block meets at the barrier.
// Cluster variant (CL = 1, sm_90): the units of a direction split over the C = p.nbu blocks of a thread-block
// cluster (p.upb each, K stays H), so each SM runs fewer warps and every weight chunk fits in registers. Every block
// keeps the whole h tile; the KSL lanes of unit j (which all hold its new h) store it into every member's tile with
// st.async, lane l into members l, l + KSL, ..., which also counts its 4 bytes on that member's transaction barrier
// for the buffer (one mbarrier per buffer, armed for 4 H bytes per step). A block waits on its own barrier only: no
// round trip, no __syncthreads (373-424 cycles a step where the hardware cluster barrier takes ~1030-1090:
// bench/gpu/cluster_exchange_bench.cu, H100). Up to 16 members (more than 8 is Hopper's non-portable size).
// Wide variant (TAIL > kSmallMaxTail, float32, 8 lanes): up to 12 register chunks and 8 shared-memory chunks per
// lane, so K = 512 fits 16 members (LSTM H=512: 256 KB of weights per SM, 160 KB of them in registers).
// Why this shape: at H ~100 the general local plan spends ~3 k cycles per step (bench/gpu/NOTES.md, session 13),
// mostly in phases that exist only to share work across warps (z partial sums in shared memory, a one-warp cell
// update, a barrier between them); here the dependent chain per step is LDS -> ~kc * 4 * G FMAs -> 2-3 shuffle
// levels -> one activation -> one gather -> the cell.
#ifndef FUSED_RNN_CUDA_FUSED_RNN_CUDA_SMALL_CUH_
#define FUSED_RNN_CUDA_FUSED_RNN_CUDA_SMALL_CUH_

#include "fused_rnn_cuda_kernel.cuh"

namespace fused_rnn {
namespace cuda_impl {

// Block size the compiler plans registers for: NR weight chunks plus a budget for the rest, rounded down to whole
// groups of 4 warps (ptxas sizes the register cap for a multiple of 128 threads). The rest of the kernel needs
// about 64 registers whatever the weight kind: the decode keeps a chunk's 4 x G floats live next to the packed
// words. With 32 (until session 19) the bound let ptxas cap the kernels below what they use: the int8 ones spilled
// 76-232 bytes (fixed in session 17), the float32 LSTM with 4 chunks 372 bytes at 96 registers, the 16-bit LSTM
// with 8 chunks 628 bytes (H100, `bench/gpu/small_resources_*`). Where 64 would take the bound below 512 threads
// (4 lanes x H=100 needs 416), the bound stays where 32 put it, at most 512: float32 LSTM and GRU with 5-8 chunks,
// which keep the plans (and code) they had.
__host__ __device__ constexpr int SmallBound(int regs) {
  return (65536 / regs) / 128 * 128 > 1024 ? 1024 : ((65536 / regs) / 128 * 128 < 128 ? 128 : (65536 / regs) / 128 * 128);
}
template <int G, int WK, int NR> __host__ __device__ constexpr int SmallMaxThreads() {
  return SmallBound(NR * WordsPerChunk<WK, G>() + 64) >= 512
             ? SmallBound(NR * WordsPerChunk<WK, G>() + 64)
             : (SmallBound(NR * WordsPerChunk<WK, G>() + 32) >= 512 ? 512 : SmallBound(NR * WordsPerChunk<WK, G>() + 32));
}

// Cluster kernels are only planned at upb * KSL threads (at most 256 for the register budgets that need them), so
// their bound is the register one alone: ptxas may give them up to 255 registers and keep every chunk resident.
template <int G, int WK, int NR, int CL> __host__ __device__ constexpr int SmallLaunchBound() {
  return CL ? SmallBound(NR * WordsPerChunk<WK, G>() + 64) : SmallMaxThreads<G, WK, NR>();
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kSmallNoClusters = true;  // the cluster kernels compile to an empty body here; never planned
#else
constexpr bool kSmallNoClusters = false;
#endif

__device__ __forceinline__ unsigned SmemAddr32(const void* ptr) {
  return static_cast<unsigned>(__cvta_generic_to_shared(ptr));
}
// This block's transaction barrier expects `bytes` more for its current phase, and this thread arrives on it (the
// barrier counts one arrival per phase: the thread that arms it).
__device__ __forceinline__ void MbarArriveExpectTx(unsigned mbar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(mbar), "r"(bytes) : "memory");
}
// Waits until the barrier's phase with this parity has completed (cluster scope: the bytes came from other SMs).
// Unbounded, like the cluster barrier of mode 3: the hardware co-schedules a cluster's blocks, all of them run the
// same steps of the same row, and each phase gets exactly the bytes it was armed for, so the wait always ends.
__device__ __forceinline__ void MbarWaitParity(unsigned mbar, unsigned parity) {
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
// v into the same shared-memory offset (local_addr) of cluster member `rank`, counted on its barrier `mbar_local`.
__device__ __forceinline__ void StoreAsyncToRank(unsigned local_addr, unsigned mbar_local, unsigned rank, float v) {
  unsigned ra, rm;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(local_addr), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rm) : "r"(mbar_local), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(ra),
               "r"(__float_as_uint(v)), "r"(rm)
               : "memory");
}

// A load issued where it is written: the x_proj of the next step, so its latency hides behind a whole step (a
// plain load was sunk by the compiler to its use, back onto the serial path).
__device__ __forceinline__ float LoadGlobalNcHere(const float* ptr) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(ptr));
  return v;
}

template <int G>
__device__ __forceinline__ void SmallFma(const float (&w)[4][G], const float4& hv, float (&acc)[G]) {
#pragma unroll
  for (int g = 0; g < G; ++g) {
    acc[g] = fmaf(w[0][g], hv.x, acc[g]);
    acc[g] = fmaf(w[1][g], hv.y, acc[g]);
    acc[g] = fmaf(w[2][g], hv.z, acc[g]);
    acc[g] = fmaf(w[3][g], hv.w, acc[g]);
  }
}

template <int CELL, int WK, int NR, int KSL, int CL, int TAIL>
__device__ __forceinline__ void RnnSmallBody(const KernelParams p) {  // by value: a reference to the kernel parameter put a copy of it on the stack
  constexpr int G = CELL == 0 ? 4 : 3;
  constexpr bool kLstm = CELL == 0;
  constexpr int NW = WordsPerChunk<WK, G>();
  // The wide variant (TAIL > kSmallMaxTail, float32 clusters): up to TAIL shared-memory chunks per lane in 16-byte
  // slots, so a chunk is NW / 4 16-byte loads (the 8-byte slots took 8 loads and 16 address multiplies).
  constexpr bool kWide = TAIL > kSmallMaxTail;
  using Raw = typename RawOf<WK>::T;
  extern __shared__ __align__(16) unsigned char smem[];

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int H = p.H, B = p.B, T = p.T, D = p.D;
  // Cluster: blocks [C * (d * B + b), + C) are one cluster (1-D cluster dims: the rank is blockIdx.x % C) and
  // member r owns units [r * upb, + ucount).
  const int C = CL ? p.nbu : 1;
  const int row_id = CL ? static_cast<int>(blockIdx.x) / C : static_cast<int>(blockIdx.x);
  const int rank = CL ? static_cast<int>(blockIdx.x) - row_id * C : 0;
  const int d = row_id / B, b = row_id - d * B;
  const int u0 = CL ? rank * p.upb : 0;
  const int ucount = CL ? min(p.upb, H - u0) : H;
  const bool reverse = (p.reverse_mask >> d) & 1;
  constexpr int ksl = KSL;  // the planner's p.a.ksl
  const int kpad = p.a.kpad;
  const DotSlot slot = MakeSlot(p.a, tid);
  const int j = u0 + slot.col;  // the hidden unit (a padding lane past the block's units: zero weights, no stores)
  const bool unit_ok = slot.col < ucount;
  const int lanek = slot.lanek;
  const int lane = tid & 31;
  float* h_s = reinterpret_cast<float*>(smem + p.off_h);  // [2][kpad], double-buffered by step parity

  const bool stamping = p.debug_clock != nullptr && blockIdx.x == 0 && tid == 0;
  auto stamp = [&](int slot_index) {
    if (stamping) p.debug_clock[slot_index] = clock64();
  };
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 2);
  stamp(0);

  int len = p.lengths ? p.lengths[b] : T;
  len = min(max(len, 0), T);

  // ---- prologue: weights into registers (through the staging area when the planner gave one), then state.
  uint32_t wreg[NR][NW];
#pragma unroll
  for (int i = 0; i < NR; ++i)
#pragma unroll
    for (int q = 0; q < NW; ++q) wreg[i][q] = WK == kWeightI8 ? 0x80808080u : 0u;  // int8: bytes q ^ 0x80
  uint2* tail_s = reinterpret_cast<uint2*>(smem + p.off_stream_a);  // chunks >= NR, this thread's own slots
  LoadWeightChunks<WK, G, NR, kWide>(static_cast<const Raw*>(p.w_rec) + (long long)d * H * G * H, (long long)G * H, H, u0,
                              ucount, p.a, H, wreg, tail_s, slot, tid, nthreads, smem + p.off_stage, p.stage_bytes);
  // Tail chunks that hold real k-rows for this lane (at H = 100 with 4 lanes the 7th chunk is row group 24 alone:
  // only lane 0 of each unit reads it, the other lanes skip it).
  int tail_chunks = 0;
  for (int jt = NR; jt < p.a.kc; ++jt)
    if (4 * (slot.kl + ksl * jt) < H) tail_chunks = jt - NR + 1;
  stamp(1);

  // int8: the h tile holds h[k] / scale[k], so the dot of the integer weights is the dequantized product. The
  // lane that publishes unit j's h scales it by 1 / scale[j] (0 for a zero row, as the quantizer's scale 0 means).
  float inv_scale = 1.f;
  if constexpr (WK == kWeightI8) {
    const float sc = unit_ok ? __ldg(p.rec_scale + (long long)d * H + j) : 0.f;
    inv_scale = sc != 0.f ? 1.f / sc : 0.f;
  }
  for (int i = tid; i < 2 * kpad; i += nthreads) h_s[i] = 0.f;  // k padding reads 0 (the staging area overlapped)
  // Cluster: one transaction barrier per h buffer, behind the tile; each is armed (one arrival, 4 H bytes) for
  // the first h it will receive: h_0 into buffer 1, h_1 into buffer 0.
  // (Addressed as mbar0 + 8 * buffer: an array indexed by the step parity would live on the stack.)
  const unsigned mbar0 = CL ? SmemAddr32(smem + p.off_mbar) : 0u;
  if constexpr (CL) {
    if (tid == 0) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mbar0) : "memory");
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(mbar0 + 8u) : "memory");
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
  }
  __syncthreads();
  if constexpr (CL) {
    // Armed after the barrier that publishes the init (with the arrival right behind the init, in the same thread,
    // compute-sanitizer racecheck reported the pair as a hazard).
    if (tid == 0) {
      MbarArriveExpectTx(mbar0, 4u * H);
      MbarArriveExpectTx(mbar0 + 8u, 4u * H);
    }
  }
  const long long state_idx = ((long long)d * B + b) * H + j;
  float h_prev = unit_ok && p.h0 ? p.h0[state_idx] : 0.f;
  float c = kLstm && unit_ok && p.c0 ? p.c0[state_idx] : 0.f;
  if constexpr (CL) {
    // Every member starts from the whole h0 (int8: each k scaled by its own row's 1 / scale).
    for (int k = tid; k < H; k += nthreads) {
      float v = p.h0 ? p.h0[((long long)d * B + b) * H + k] : 0.f;
      if constexpr (WK == kWeightI8) {
        const float sc = __ldg(p.rec_scale + (long long)d * H + k);
        v *= sc != 0.f ? 1.f / sc : 0.f;  // as the writer lanes scale it (inv_scale)
      }
      h_s[k] = v;
    }
  } else {
    if (unit_ok && lanek == 0) h_s[j] = WK == kWeightI8 ? h_prev * inv_scale : h_prev;
  }
  // Lane g's starting value of gate g's sum, besides x_proj: the GRU n gate's recurrent bias (it sits inside the
  // reset product r * (U_n h + b_n)); the z and r biases add to x like any other constant.
  float acc_bias = 0.f;
  float rb_zr = 0.f;
  if constexpr (!kLstm) {
    if (p.rec_bias && unit_ok && lanek < G) {
      const float rb = __ldg(p.rec_bias + (long long)d * G * H + (long long)lanek * H + j);
      if (lanek == 2)
        acc_bias = rb;
      else
        rb_zr = rb;
    }
  }

  // Zeros past the row's length in this direction's output columns.
  const long long xcols = (long long)D * G * H, ocols = (long long)D * H;
  auto row_index = [&](int t) -> long long { return p.time_major ? (long long)t * B + b : (long long)b * T + t; };
  for (long long i = tid; i < (long long)(T - len) * ucount; i += nthreads) {
    const int t = len + static_cast<int>(i / ucount), u = u0 + static_cast<int>(i % ucount);
    p.out[row_index(t) * ocols + (long long)d * H + u] = 0.f;
  }

  // x_proj: lane g < G of each unit reads gate g, one step ahead. Addresses are recomputed from t every step
  // (a few integer instructions off the serial path) rather than carried as 64-bit pointers and strides: with the
  // weights in registers every live register counts.
  const bool x_lane = unit_ok && lanek < G;
  const bool writer = unit_ok && lanek == 0;
  const bool has_reserve = p.reserve != nullptr && writer;
  const int x_col = d * G * H + (x_lane ? lanek * H + j : 0);  // < 2^31: D * G * H is checked by the planner
  const int o_col = d * H + (unit_ok ? j : 0);
  auto x_at = [&](int t) { return p.x_proj + row_index(t) * xcols + x_col; };
  auto t_of = [&](int s) { return reverse ? len - 1 - s : s; };
  float x_cur = x_lane && len > 0 ? __ldg(x_at(t_of(0))) + rb_zr : 0.f;
  __syncthreads();  // h0 in the tile
  // Cluster: every member's barriers are initialised and its tile zeroed before anyone stores into it.
  if constexpr (CL) ClusterSync();
  stamp(2);

  // ---- the recurrence ------------------------------------------------------------------------------------------
  int cur = 0;
  const unsigned full = 0xffffffffu;
  const int group_base = lane & ~(KSL - 1);
#pragma unroll 1
  for (int s = 0; s < len; ++s) {
    const int sbase = s < kDebugSteps ? 3 + 5 * s : -1;
    if (sbase >= 0) {
      stamp(sbase);
      stamp(sbase + 1);
    }
    if constexpr (CL) {
      // h_{s-1} (all H units) has landed in buffer cur; re-arm that buffer's barrier for h_{s+1}, its next use.
      if (s > 0) {
        MbarWaitParity(mbar0 + 8u * cur, ((s - 1) >> 1) & 1);
        if (tid == 0 && s + 1 < len) MbarArriveExpectTx(mbar0 + 8u * cur, 4u * H);
      }
    }
    const int t = t_of(s);
    float x_next = 0.f;
    if (x_lane && s + 1 < len) x_next = LoadGlobalNcHere(x_at(reverse ? t - 1 : t + 1));

    const float4* h4 = reinterpret_cast<const float4*>(h_s + cur * kpad) + slot.kl;
    float acc0[G], acc1[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      // LSTM: every gate starts at x; GRU: z and r at x + their bias, n at its recurrent bias (x_n stays apart).
      const float start = (kLstm || g < 2) ? x_cur : acc_bias;
      acc0[g] = lanek == g ? start : 0.f;
      acc1[g] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < NR; ++i) {
      const float4 hv = h4[ksl * i];
      float w[4][G];
      DecodeChunk<WK, G>(wreg[i], w);
      SmallFma<G>(w, hv, (i & 1) ? acc1 : acc0);
    }
#pragma unroll
    for (int jt = 0; jt < TAIL; ++jt) {  // unrolled and predicated: no loop control per step
      if (jt < tail_chunks) {
        const float4 hv = h4[ksl * (NR + jt)];
        float w[4][G];
        if constexpr (kWide) {
          const uint4* slots = reinterpret_cast<const uint4*>(tail_s) + tid;
          uint32_t words[NW];
#pragma unroll
          for (int q = 0; q < NW / 4; ++q) {
            const uint4 v = slots[(jt * (NW / 4) + q) * nthreads];
            words[4 * q] = v.x;
            words[4 * q + 1] = v.y;
            words[4 * q + 2] = v.z;
            words[4 * q + 3] = v.w;
          }
          DecodeChunk<WK, G>(words, w);
        } else {
          LoadStreamChunk<WK, G>(tail_s, jt, nthreads, tid, w);
        }
        SmallFma<G>(w, hv, (jt & 1) ? acc0 : acc1);
      }
    }
    float z[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) z[g] = g < G ? acc0[g] + acc1[g] : 0.f;
    float x_n = 0.f;
    if constexpr (!kLstm) x_n = __shfl_sync(full, x_cur, group_base + 2);
    // Reduce-scatter of the 4 gate sums over the unit's KSL lanes: lane q * KSL / 4 (and its KSL / 4 - 1 right
    // neighbours) ends with gate q's total, 3 + log2(KSL / 4) shuffles instead of 4 log2(KSL); then each lane
    // applies its own gate's activation, so a warp issues one activation (2 MUFU) instead of four.
    constexpr int kHalf = KSL / 2, kQuarter = KSL / 4;
    const bool hi = (lanek & kHalf) != 0, hi2 = (lanek & kQuarter) != 0;
    float keep0 = hi ? z[2] : z[0], keep1 = hi ? z[3] : z[1];
    const float send0 = hi ? z[0] : z[2], send1 = hi ? z[1] : z[3];
    keep0 += __shfl_xor_sync(full, send0, kHalf);
    keep1 += __shfl_xor_sync(full, send1, kHalf);
    float v = hi2 ? keep1 : keep0;
    v += __shfl_xor_sync(full, hi2 ? keep0 : keep1, kQuarter);
#pragma unroll
    for (int off = kQuarter / 2; off > 0; off >>= 1) v += __shfl_xor_sync(full, v, off);
    const int q = (hi ? 2 : 0) + (hi2 ? 1 : 0);  // the gate this lane holds
    if (sbase >= 0) stamp(sbase + 2);

    float h_new;
    float* res_ptr = has_reserve ? p.reserve + (((long long)d * B + b) * T + t) * p.reserve_f + j : nullptr;
    if constexpr (kLstm) {
      // Sigmoid and Tanh in one code path (Tanh(v) = 2 Sigmoid(2 v) - 1, the same instructions as the helpers).
      const bool is_tanh = q == 2;
      const float y = RcpFtz(1.f + Exp2Ftz((is_tanh ? -2.8853900817779268f : -1.4426950408889634f) * v));
      const float act = is_tanh ? fmaf(2.f, y, -1.f) : y;
      const float ig = __shfl_sync(full, act, group_base);
      const float fg = __shfl_sync(full, act, group_base + kQuarter);
      const float gg = __shfl_sync(full, act, group_base + 2 * kQuarter);
      const float og = __shfl_sync(full, act, group_base + 3 * kQuarter);
      const float c_raw = fg * c + ig * gg;
      c = ClipKeepNaN(c_raw, p.cell_clip);
      h_new = og * Tanh(c);
      if (res_ptr) {
        res_ptr[0] = ig;
        res_ptr[H] = fg;
        res_ptr[2 * H] = gg;
        res_ptr[3 * H] = og;
        res_ptr[4 * H] = c_raw;
      }
    } else {
      const float act = Sigmoid(v);  // used for gates z and r
      const float zg = __shfl_sync(full, act, group_base);
      const float rg = __shfl_sync(full, act, group_base + kQuarter);
      const float an = __shfl_sync(full, v, group_base + 2 * kQuarter);  // U_n h + b_n
      const float ng = Tanh(x_n + rg * an);
      h_new = zg * h_prev + (1.f - zg) * ng;
      if (res_ptr) {
        res_ptr[0] = zg;
        res_ptr[H] = rg;
        res_ptr[2 * H] = ng;
        res_ptr[3 * H] = an;
      }
    }
    const float h_pub = WK == kWeightI8 ? h_new * inv_scale : h_new;
    if (writer) {
      p.out[row_index(t) * ocols + o_col] = h_new;
      if constexpr (!CL) h_s[(cur ^ 1) * kpad + j] = h_pub;
    }
    if constexpr (CL) {
      // Every lane of the unit holds the same h, so lane l stores it into members l, l + KSL, ...: one or two
      // stores per lane instead of C from lane 0 (16 members: ~300 cycles of one lane's chain). No one still
      // reads buffer cur ^ 1 anywhere: its last readers (step s - 1) produced h_{s-1}, which every member has
      // waited for.
      if (unit_ok) {
        const unsigned a = SmemAddr32(h_s + (cur ^ 1) * kpad + j);
#pragma unroll 1
        for (int r = lanek; r < C; r += KSL) StoreAsyncToRank(a, mbar0 + 8u * (cur ^ 1), r, h_pub);
      }
    }
    if (sbase >= 0) stamp(sbase + 3);
    h_prev = h_new;
    x_cur = x_next + rb_zr;
    if constexpr (!CL) __syncthreads();  // the new h is in the other buffer; everyone has finished reading this one
    cur ^= 1;
    if (sbase >= 0) stamp(sbase + 4);
  }
  stamp(3 + 5 * kDebugSteps);
  if constexpr (CL) {
    // The last step's stores into this block have all landed, and no member leaves while another may still be
    // storing into it.
    if (len > 0) MbarWaitParity(mbar0 + 8u * (len & 1), ((len - 1) >> 1) & 1);
    ClusterSync();
  }

  // ---- final states (the initial ones for an empty row) --------------------------------------------------------
  if (writer) {
    if (p.final_h) p.final_h[state_idx] = h_prev;
    if (kLstm && p.final_c) p.final_c[state_idx] = c;
  }
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 1);
}

template <int CELL, int WK, int NR, int KSL, int CL, int TAIL = kSmallMaxTail>
__global__ void __launch_bounds__(SmallLaunchBound<(CELL == 0 ? 4 : 3), WK, NR, CL>(), 1)
    RnnSmallKernel(const KernelParams p) {
  if constexpr (CL != 0 && kSmallNoClusters) {
    return;
  } else {
    RnnSmallBody<CELL, WK, NR, KSL, CL, TAIL>(p);
  }
}

// The kernels of one (cell, weight kind) for NR = 1..kSmallMaxNi register chunks per lane and KSL = 4 or 8 lanes
// per unit (more lanes would leave a block of at most 1024 threads at most 64 units with a single chunk).
// The cluster variant with 4 or 8 lanes per unit (8: K up to 256 in 8 register chunks, e.g. LSTM H=256 over 8
// blocks of 32 units).
#define FUSED_RNN_SMALL_ROW(CELL, WK, KSL, CL)                                                                     \
  {RnnSmallKernel<CELL, WK, 1, KSL, CL>, RnnSmallKernel<CELL, WK, 2, KSL, CL>, RnnSmallKernel<CELL, WK, 3, KSL, CL>, \
   RnnSmallKernel<CELL, WK, 4, KSL, CL>, RnnSmallKernel<CELL, WK, 5, KSL, CL>, RnnSmallKernel<CELL, WK, 6, KSL, CL>, \
   RnnSmallKernel<CELL, WK, 7, KSL, CL>, RnnSmallKernel<CELL, WK, 8, KSL, CL>}
#define FUSED_RNN_SMALL_TABLE(NAME, CELL, WK)                                                             \
  KernelFn NAME(int nr, int ksl, int cluster) {                                                           \
    static const KernelFn table[4][kSmallMaxNi] = {FUSED_RNN_SMALL_ROW(CELL, WK, 4, 0),                  \
                                                   FUSED_RNN_SMALL_ROW(CELL, WK, 8, 0),                  \
                                                   FUSED_RNN_SMALL_ROW(CELL, WK, 4, 1),                  \
                                                   FUSED_RNN_SMALL_ROW(CELL, WK, 8, 1)};                 \
    if (nr < 1 || nr > kSmallMaxNi || (ksl != 4 && ksl != 8)) return nullptr;                            \
    return table[(cluster ? 2 : 0) + (ksl == 8 ? 1 : 0)][nr - 1];                                         \
  }

// The wide cluster variant (float32 only): 8 lanes per unit, NR = kSmallWideNr[i] register chunks and up to
// kSmallWideTail more in shared memory: K up to 512 over clusters of up to 16 blocks (LSTM H=512: 32 units and
// 256 KB of weights per member, ~half of them in registers).
#define FUSED_RNN_SMALL_WIDE_TABLE(NAME, CELL, WK)                                                         \
  KernelFn NAME(int nr) {                                                                                 \
    static const KernelFn table[kSmallWideCount] = {RnnSmallKernel<CELL, WK, 8, 8, 1, kSmallWideTail>,   \
                                                    RnnSmallKernel<CELL, WK, 10, 8, 1, kSmallWideTail>,  \
                                                    RnnSmallKernel<CELL, WK, 12, 8, 1, kSmallWideTail>}; \
    for (int i = 0; i < kSmallWideCount; ++i)                                                             \
      if (kSmallWideNr[i] == nr) return table[i];                                                         \
    return nullptr;                                                                                       \
  }

}  // namespace cuda_impl
}  // namespace fused_rnn

#endif  // FUSED_RNN_CUDA_FUSED_RNN_CUDA_SMALL_CUH_
