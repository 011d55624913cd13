// Mode 6: the int8 LSTM kernel on integer tensor cores (device code; sm_80+). Included only by
// fused_rnn_cuda_i8mma.cu.
//
// Why: the general kernel rebuilds every int8 weight as a float (prmt + sub) before its FMA, 3 instructions per
// weight on the serial per-step chain; the ELMo layer (4096 units, projection 512) spends most of a step there
// (bench/gpu/NOTES.md, session 20-24). Here the products are exact integer mma.sync.m16n8k32 (s8 x u8 -> s32),
// 512 weights per instruction, with no decode:
//   * the weights stay the caller's int8 bytes, resident as A fragments (rows = gate columns, k = h index);
//   * the vector v = h / scale (the int8 scheme's per-k-row scale) is rounded once per step to a fixed point
//     X = rint(v * 2^(30 - e)), |X| <= 2^30, with one exponent e per step known in advance from a bound on |h|
//     (1 without a projection, |h| = |o tanh(c)|; the projection clip with one) and max(1 / scale), so no
//     reduction is needed; X + 2^31 is split into 4 unsigned bytes ("planes"), which are the 4 B-fragment columns
//     n = 4 b + p of batch row b (so B <= 2 rows fill the n = 8 columns);
//   * sum_k q X = sum_p 256^p (sum_k q u_p) - 2^31 sum_k q: exact in int64 (each plane's sum fits int32 for
//     k < 66000), rounded once to float32 and scaled by 2^(e - 30).
// The fixed point's error is 2^-31 of the bound per element: below float32's own rounding for values within
// 2^7 of the bound (the same scheme as the CPU path's VNNI products; tests check 1e-5 against float64). A NaN in
// h (from a NaN input) makes the row's products NaN, as float math does. Step 0 takes its exponent from max|h0|
// instead, so any finite initial state is exact; an infinite one gives NaN products (float math would give +-inf
// or NaN per column).
//
// Layout: block (direction d, unit block ub) owns upb units (a multiple of 4). Phase A: z = h_prev @ U for its
// 4 * upb gate columns (m-tile mt = 4 units x 4 gates), warps split k into ks slices and add their int32
// accumulators in shared memory; the cell update runs per (row, unit), inside the warp that did the products when
// ks = 1. Phase B (projection): the block's partial sums m_own @ P[u0.., :] for every projection column (its
// fragments in shared memory), published as tagged words; the owner of a column adds the nbu partials in a fixed
// order, clips, and publishes h. The h exchange is tagged words (readers poll the data; no barrier), bounded by the
// watchdog; from step 1 on each word already holds the fixed-point X + 2^31 of h / scale, which the readers write
// straight into the byte planes (FetchPlanes). tools/gpu/trace_i8mma.py times the phases per block
// (-DFUSED_RNN_I8MMA_TRACE builds only).
#ifndef FUSED_RNN_CUDA_FUSED_RNN_CUDA_I8MMA_CUH_
#define FUSED_RNN_CUDA_FUSED_RNN_CUDA_I8MMA_CUH_

#include "fused_rnn_cuda_tc.cuh"

namespace fused_rnn {
namespace cuda_impl {

// The A fragments (4 registers a tile) plus ~64 registers for everything else; a multiple of 128 threads.
template <int TA> __host__ __device__ constexpr int I8MmaMaxThreads() {
  return (65536 / (4 * TA + 64)) / 128 * 128 > 1024 ? 1024 : (65536 / (4 * TA + 64)) / 128 * 128;
}

__device__ __forceinline__ void MmaS8U8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// The exponent e with bound < 2^(e - 1), 0 for a zero bound. Values up to 2^e are accepted (a second bit of
// margin: the ex2-based activations may round a hair past 1), so |X| <= 2^30.
__device__ __forceinline__ int FixedExponent(float bound) {
  int ex = 0;
  frexpf(bound, &ex);
  return bound > 0.f ? ex + 1 : 0;
}
// X + 2^31 as an unsigned word, X = rint(v * to_fixed) (|X| <= 2^30).
__device__ __forceinline__ uint32_t OffsetFixed(float v, float to_fixed) {
  return static_cast<uint32_t>(__float2int_rn(v * to_fixed)) ^ 0x80000000u;
}
// sum_k q X from the 4 plane sums and sum_k q, scaled back to float.
__device__ __forceinline__ float FromPlanes(int a0, int a1, int a2, int a3, int colsum, float from_fixed) {
  const long long t = static_cast<long long>(a0) + (static_cast<long long>(a1) << 8) +
                      (static_cast<long long>(a2) << 16) + (static_cast<long long>(a3) << 24) -
                      (static_cast<long long>(colsum) << 31);
  return __ll2float_rn(t) * from_fixed;
}
// Writes the 4 planes of one value (byte p of the word into plane p).
__device__ __forceinline__ void StorePlanes(uint8_t* base, int stride, uint32_t w) {
  base[0] = static_cast<uint8_t>(w);
  base[stride] = static_cast<uint8_t>(w >> 8);
  base[2 * stride] = static_cast<uint8_t>(w >> 16);
  base[3 * stride] = static_cast<uint8_t>(w >> 24);
}
__device__ __forceinline__ void AtomicMaxNonNeg(float* addr, float v) {
  atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));  // v >= 0: int order is float order
}

// Steps >= 1: the owners publish h already as the fixed-point word X + 2^31 of h / scale (0 flags a row whose h
// is NaN or infinite), so the fetch writes the byte planes directly: no float pass and no second block barrier
// between the fetch and the products (that pass and its barrier were ~1 k of the ~10.5 k cycles of an ELMo step,
// session 26). Polled as FetchRows polls (PollTaggedPairs); a pair's second word past `width` is padding, never
// published.
__device__ __forceinline__ void FetchPlanes(uint8_t* planes, int plane_stride, int* flag_rows, int flag_value,
                                            const unsigned long long* tagged_rows, unsigned tag, int nrows, int width,
                                            int src_stride, int tid, int nthreads, int* watchdog) {
  PollTaggedPairs(
      tagged_rows, tag, nrows, width, src_stride, tid, nthreads, watchdog,
      [&](unsigned r, int k) { return r * 4u * static_cast<unsigned>(plane_stride) + static_cast<unsigned>(k); },
      [&](unsigned dst_off, unsigned r, bool two, uint32_t w0, uint32_t w1) {
        if (!two) w1 = 0x80000000u;  // padding: X = 0
        if ((w0 >> 30) == 0u || (w1 >> 30) == 0u) flag_rows[r] = flag_value;  // valid: [2^30, 3 * 2^30]
#pragma unroll
        for (int pl = 0; pl < 4; ++pl)  // bytes pl of both words, side by side, into plane pl
          *reinterpret_cast<uint16_t*>(planes + dst_off + pl * plane_stride) =
              static_cast<uint16_t>(__byte_perm(w0, w1, pl | ((4 + pl) << 4)));
      });
}

template <int TA>
__global__ void __launch_bounds__(I8MmaMaxThreads<TA>(), 1) RnnInt8MmaKernel(const KernelParams p) {
#if __CUDA_ARCH__ >= 800
  constexpr int G = 4;
  extern __shared__ __align__(16) unsigned char smem[];
  const KernelParams::I8Mma& q8 = p.q8;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x, nwarps = nthreads >> 5;
  const int g8 = lane >> 2, t4 = lane & 3;
  const int d = blockIdx.x / p.nbu, ub = blockIdx.x - d * p.nbu;
  const int H = p.H, R = p.R, P = p.P, B = p.B, T = p.T, D = p.D;
  const int nrows = B;  // one row group of at most 2 rows
  const int upb = p.upb;
  const int u0 = ub * upb, ucount = min(upb, H - u0);
  const int pc0 = ub * p.ppb, pcount = P > 0 ? max(0, min(p.ppb, P - pc0)) : 0;
  const int own_cols = P > 0 ? p.ppb : upb;
  const int own0 = P > 0 ? pc0 : u0, own_count = P > 0 ? pcount : ucount;
  const bool reverse = (p.reverse_mask >> d) & 1;
  const int MA = q8.ma, KA = q8.ka, TAN = q8.ta, MB = q8.mb, KB = q8.kb;
  const int mt_a = warp % MA, ksi = warp / MA;
  const int kpad_a = KA * 32;
  const long long xcols = (long long)D * G * H, ocols = (long long)D * R;
  auto row_index = [&](int b, int t) -> long long { return p.time_major ? (long long)t * B + b : (long long)b * T + t; };

  float* h_s = reinterpret_cast<float*>(smem + p.off_h);           // [2][kpad_a] fetched h
  uint8_t* pla_s = smem + q8.off_pla;                              // [2 rows][4 planes][pla_stride]
  uint8_t* plb_s = smem + q8.off_plb;                              // [2][4][plb_stride]
  int4* acc_s = reinterpret_cast<int4*>(smem + q8.off_acc);        // [ks][ma][32] phase-A accumulators
  int* csa_s = reinterpret_cast<int*>(smem + q8.off_csa);          // [ma * 16] sum_k q of each gate column
  int* csb_s = reinterpret_cast<int*>(smem + q8.off_csb);          // [mb * 16] sum over own units of P's q
  float* inva_s = reinterpret_cast<float*>(smem + q8.off_inva);    // [kpad_a] 1 / scale of U's rows
  float* invb_s = reinterpret_cast<float*>(smem + q8.off_invb);    // [kb * 32] 1 / scale of the own P rows
  int* flag_s = reinterpret_cast<int*>(smem + q8.off_flags);       // [0, 2) NaN in h, [2, 4) NaN in m: step + 1;
                                                                   // [4], [5] float maxima (prologue),
                                                                   // [8, 17) the fixed-point scalings
  uint4* fragb_s = reinterpret_cast<uint4*>(smem + q8.off_fragb);  // [mb * kb][32] phase-B A fragments
  float* z_s = reinterpret_cast<float*>(smem + p.off_z);           // [2][upb][G] phase-A products
  float* c_s = reinterpret_cast<float*>(smem + p.off_c);           // [2][upb]
  float* hown_s = reinterpret_cast<float*>(smem + p.off_hown);     // [2][own_cols]
  int* len_s = reinterpret_cast<int*>(smem + p.off_len);           // [rb] lengths, then their max
  float* xs_s = reinterpret_cast<float*>(smem + p.off_x);          // [2][rb * upb][G]
  uint8_t* stage = smem + p.off_stage;                             // prologue only

  const bool stamping = p.debug_clock != nullptr && blockIdx.x == 0 && tid == 0;
  auto stamp = [&](int slot) {
    if (stamping) p.debug_clock[slot] = clock64();
  };
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 2);
  stamp(0);
#ifdef FUSED_RNN_I8MMA_TRACE
  // Diagnostic build only (tools/gpu/trace_i8mma.py): thread 0 of every block writes (clock64, globaltimer) pairs
  // at the phase boundaries of the prologue and of steps [kTrS0, kTrS0 + kTrSteps), after the profile's slots.
  constexpr int kTrS0 = 8, kTrSteps = 8, kTrSlots = 16, kTrPro = 8, kTrWarpSlots = 2 * 32;
  long long* tr = p.debug_clock ? p.debug_clock + kDebugSlots +
                                      (long long)blockIdx.x * (2 * (kTrPro + kTrSteps * kTrSlots) +
                                                               kTrSteps * kTrWarpSlots) : nullptr;
  // globaltimer only at a step's start: reading it costs up to ~1.5 k cycles at times (seen as phantom phases).
  auto trace_at = [&](int i, bool with_gt) {
    if (tr != nullptr && tid == 0) {
      tr[2 * i] = clock64();
      if (with_gt) {
        unsigned long long gt;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
        tr[2 * i + 1] = static_cast<long long>(gt);
      }
    }
  };
  auto trace_pro = [&](int slot) { trace_at(slot, false); };
  auto trace = [&](int s, int slot) {
    if (s >= kTrS0 && s < kTrS0 + kTrSteps) trace_at(kTrPro + (s - kTrS0) * kTrSlots + slot, slot == 0);
  };
  // Lane 0 of every warp: clock64 into per-warp slot (which * 32 + warp).
  auto trace_warp = [&](int s, int which) {
    if (tr != nullptr && lane == 0 && s >= kTrS0 && s < kTrS0 + kTrSteps)
      tr[2 * (kTrPro + kTrSteps * kTrSlots) + (s - kTrS0) * kTrWarpSlots + which * 32 + warp] = clock64();
  };
#else
  auto trace_pro = [](int) {};
  auto trace = [](int, int) {};
  auto trace_warp = [](int, int) {};
#endif
  trace_pro(0);

  // ---- prologue ------------------------------------------------------------------------------------------------
  for (int i = tid; i < p.union_bytes / 4; i += nthreads) reinterpret_cast<int*>(smem)[i] = 0;
  __syncthreads();
  LoadLengths(p, len_s, 0, nrows, tid, nthreads);
  trace_pro(1);

  // Phase A fragments: tile i of this warp is (m-tile mt_a, k-tile ksi * TAN + i). Row r of an m-tile is unit
  // 4 mt + r / 4, gate r % 4. A pass of stage_rows_a k-rows is staged already in fragment order
  // ([m-tile][k-tile of the pass][lane][4 words]), so each lane takes a tile with one 16-byte load. The staging
  // thread of (4 consecutive k, gate g, 16 consecutive units) loads the 4 rows' 16 bytes and transposes them with
  // byte permutes into 16 words of 4 k-bytes, one per unit (session 27: the per-byte picks from a [k][g][u] stage,
  // with their bank conflicts, were ~47 k of the ~69 k prologue cycles of an ELMo layer, session 26).
  uint32_t wa[TA][4];
#pragma unroll
  for (int i = 0; i < TA; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) wa[i][r] = 0u;
  {
    const int8_t* w = static_cast<const int8_t*>(p.w_rec) + (long long)d * R * G * H;
    // 16-byte loads when every row segment is 16-byte aligned (then ucount is a multiple of 16 too); one unit's 4
    // bytes a thread otherwise.
    const bool vec = H % 16 == 0 && upb % 16 == 0 && (reinterpret_cast<uintptr_t>(w) & 15) == 0;
    uint32_t* frag_w = reinterpret_cast<uint32_t*>(stage);
    // Word (unit u, gate g, k-quad kq of the pass) in fragment order: m-tile u / 4, row (u % 4) * 4 + g (lane
    // 4 (row % 8) + t4, register 2 (k-half) + row / 8).
    auto frag_word = [&](int ktp, int u, int g, int kq) -> int {
      const int row = (u & 3) * 4 + g, kk = (kq & 7) * 4;
      return (((u >> 2) * ktp + (kq >> 3)) * 32 + (row & 7) * 4 + ((kk & 15) >> 2)) * 4 + (kk >> 4) * 2 + (row >> 3);
    };
#pragma unroll 1
    for (int k0 = 0; k0 < R; k0 += q8.stage_rows_a) {
      const int rows = min(q8.stage_rows_a, R - k0);
      const int ktp = (rows + 31) / 32, nkq = ktp * 8;  // k-tiles and k-quads of this pass (zero past R)
      if (vec) {
        const int nug = upb / 16, items = nkq * G * nug;
#pragma unroll 1
        for (int it = tid; it < items; it += nthreads) {
          const int kq = it % nkq, rem = it / nkq, g = rem % G, ug = rem / G;
          uint4 v[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int k = k0 + kq * 4 + e;
            v[e] = make_uint4(0u, 0u, 0u, 0u);
            if (k < R && ug * 16 < ucount)
              v[e] = __ldg(reinterpret_cast<const uint4*>(w + (long long)k * G * H + (long long)g * H + u0 + ug * 16));
          }
#pragma unroll
          for (int q = 0; q < 4; ++q) {  // units 4 q .. 4 q + 3: a 4 x 4 byte transpose
            const uint32_t x0 = (&v[0].x)[q], x1 = (&v[1].x)[q], x2 = (&v[2].x)[q], x3 = (&v[3].x)[q];
            const uint32_t t0 = __byte_perm(x0, x1, 0x5140), t1 = __byte_perm(x0, x1, 0x7362);
            const uint32_t t2 = __byte_perm(x2, x3, 0x5140), t3 = __byte_perm(x2, x3, 0x7362);
            const int u = ug * 16 + q * 4;
            frag_w[frag_word(ktp, u, g, kq)] = __byte_perm(t0, t2, 0x5410);
            frag_w[frag_word(ktp, u + 1, g, kq)] = __byte_perm(t0, t2, 0x7632);
            frag_w[frag_word(ktp, u + 2, g, kq)] = __byte_perm(t1, t3, 0x5410);
            frag_w[frag_word(ktp, u + 3, g, kq)] = __byte_perm(t1, t3, 0x7632);
          }
        }
      } else {
        const int items = nkq * G * upb;
#pragma unroll 1
        for (int it = tid; it < items; it += nthreads) {
          const int kq = it % nkq, rem = it / nkq, g = rem % G, u = rem / G;
          uint32_t word = 0u;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int k = k0 + kq * 4 + e;
            const uint32_t byte =
                k < R && u < ucount ? static_cast<uint8_t>(w[(long long)k * G * H + (long long)g * H + u0 + u]) : 0u;
            word |= byte << (8 * e);
          }
          frag_w[frag_word(ktp, u, g, kq)] = word;
        }
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < TA; ++i) {
        const int kt = ksi * TAN + i;
        if (i < TAN && kt < KA && kt * 32 >= k0 && kt * 32 < k0 + rows) {
          const uint4 f = reinterpret_cast<const uint4*>(stage)[(mt_a * ktp + (kt - k0 / 32)) * 32 + lane];
          wa[i][0] = f.x;
          wa[i][1] = f.y;
          wa[i][2] = f.z;
          wa[i][3] = f.w;
        }
      }
      __syncthreads();
    }
  }
  trace_pro(2);
  // Phase B fragments: tile (mt, kt) = projection columns mt * 16.., own units kt * 32..; the own rows of P are
  // contiguous ([ucount][P] bytes), staged 32 rows at a time.
  if (P > 0) {
    const int8_t* w = static_cast<const int8_t*>(p.w_proj) + ((long long)d * H + u0) * P;
#pragma unroll 1
    for (int kt = 0; kt < KB; ++kt) {
      const int rows = max(0, min(32, ucount - kt * 32));
      if (P % 16 == 0 && (reinterpret_cast<uintptr_t>(w) & 15) == 0) {
        const uint4* src = reinterpret_cast<const uint4*>(w + (long long)kt * 32 * P);
        for (int i = tid; i < 2 * P; i += nthreads)  // 32 rows x P bytes = 2 P vectors
          reinterpret_cast<uint4*>(stage)[i] = i < rows * P / 16 ? __ldg(src + i) : make_uint4(0u, 0u, 0u, 0u);
      } else {
        for (int i = tid; i < 32 * P; i += nthreads)
          stage[i] = i < rows * P ? static_cast<uint8_t>(w[(long long)kt * 32 * P + i]) : 0u;
      }
      __syncthreads();
      for (int i = tid; i < MB * 32; i += nthreads) {
        const int mt = i >> 5, l = i & 31, lg8 = l >> 2, lt4 = l & 3;
        uint32_t word[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int c = mt * 16 + lg8 + 8 * (r & 1);
          word[r] = 0u;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int k = lt4 * 4 + 16 * (r >> 1) + e;
            const uint32_t byte = c < P ? stage[k * P + c] : 0u;
            word[r] |= byte << (8 * e);
          }
        }
        fragb_s[(mt * KB + kt) * 32 + l] = make_uint4(word[0], word[1], word[2], word[3]);
      }
      __syncthreads();
    }
  }
  trace_pro(3);
  // Column sums sum_k q: the same products with every plane byte 1.
  {
    int acc[4] = {0, 0, 0, 0};
#pragma unroll
    for (int i = 0; i < TA; ++i)
      if (i < TAN && ksi * TAN + i < KA) MmaS8U8(acc, wa[i], 0x01010101u, 0x01010101u);
    acc_s[(ksi * MA + mt_a) * 32 + lane] = make_int4(acc[0], acc[1], acc[2], acc[3]);
    if (P > 0) {
      for (int mt = warp; mt < MB; mt += nwarps) {
        int cb[4] = {0, 0, 0, 0};
        for (int kt = 0; kt < KB; ++kt) {
          const uint4 a4 = fragb_s[(mt * KB + kt) * 32 + lane];
          const uint32_t a[4] = {a4.x, a4.y, a4.z, a4.w};
          MmaS8U8(cb, a, 0x01010101u, 0x01010101u);
        }
        if (t4 == 0) {
          csb_s[mt * 16 + g8] = cb[0];
          csb_s[mt * 16 + g8 + 8] = cb[2];
        }
      }
    }
    __syncthreads();
    for (int r = tid; r < MA * 16; r += nthreads) {
      const int mt = r >> 4, row = r & 15;
      int sum = 0;
      for (int k = 0; k < q8.ks; ++k) {
        const int* a = reinterpret_cast<const int*>(acc_s + (k * MA + mt) * 32 + (row & 7) * 4);
        sum += a[(row >> 3) * 2];
      }
      csa_s[r] = sum;
    }
  }
  stamp(1);
  trace_pro(4);
  // 1 / scale (0 for a zero row and the padding) and the fixed-point exponents: phase A from the bound on |h|
  // (the projection clip, or 1) and max 1 / scale over U's rows; phase B from |m| <= 1 and the own P rows.
  if (tid == 0) {
    reinterpret_cast<float*>(flag_s)[4] = 0.f;
    reinterpret_cast<float*>(flag_s)[5] = 0.f;
  }
  __syncthreads();
  for (int k = tid; k < kpad_a; k += nthreads) {
    const float sc = k < R ? __ldg(p.rec_scale + (long long)d * R + k) : 0.f;
    const float inv = sc != 0.f ? 1.f / sc : 0.f;
    inva_s[k] = inv;
    AtomicMaxNonNeg(reinterpret_cast<float*>(flag_s) + 4, fabsf(inv));
  }
  if (P > 0) {
    for (int k = tid; k < KB * 32; k += nthreads) {
      const float sc = k < ucount ? __ldg(p.proj_scale + (long long)d * H + u0 + k) : 0.f;
      const float inv = sc != 0.f ? 1.f / sc : 0.f;
      invb_s[k] = inv;
      AtomicMaxNonNeg(reinterpret_cast<float*>(flag_s) + 5, fabsf(inv));
    }
  }
  trace_pro(5);
  // Initial state: own h and c, and h0's own maximum of |h0 / scale| (finite values; the others are flagged).
  for (int i = tid; i < nrows * own_count; i += nthreads) {
    const int r = i / own_count, c = i - r * own_count;
    hown_s[r * own_cols + c] = p.h0 ? p.h0[((long long)d * B + r) * R + own0 + c] : 0.f;
  }
  for (int i = tid; i < nrows * ucount; i += nthreads) {
    const int r = i / ucount, u = i - r * ucount;
    c_s[r * upb + u] = p.c0 ? p.c0[((long long)d * B + r) * H + u0 + u] : 0.f;
  }
  for (int r = 0; r < nrows; ++r) {
    const int len = len_s[r];
    const int n = (T - len) * own_count;
    for (int i = tid; i < n; i += nthreads) {
      const int t = len + i / own_count, c = i % own_count;
      p.out[row_index(r, t) * ocols + (long long)d * R + own0 + c] = 0.f;
    }
  }
  __syncthreads();
  const float h_bound = P > 0 ? p.proj_clip : 1.f;
  const int e_a = FixedExponent(h_bound * reinterpret_cast<float*>(flag_s)[4]);
  const int e_b = FixedExponent(reinterpret_cast<float*>(flag_s)[5]);
  float h0_max = 0.f;
  if (p.h0) {
    // Every block of the direction computes the same maximum from the same h0.
    __syncthreads();
    if (tid == 0) reinterpret_cast<float*>(flag_s)[4] = 0.f;
    __syncthreads();
    for (int i = tid; i < nrows * R; i += nthreads) {
      const int r = i / R, k = i - r * R;
      const float v = fabsf(p.h0[((long long)d * B + r) * R + k] * inva_s[k]);
      if (v <= 3.0e38f) AtomicMaxNonNeg(reinterpret_cast<float*>(flag_s) + 4, v);
    }
    __syncthreads();
    h0_max = reinterpret_cast<float*>(flag_s)[4];
  }
  const int e_a0 = max(e_a, FixedExponent(h0_max));
  // The scalings live in shared memory, read where used: held in registers across the step loop they were spilled
  // to local memory and reloaded on the serial path every step (ptxas: 40-80 bytes of spills, session 25).
  // [0..2] phase A at step 0 (to fixed, limit, from fixed), [3..5] phase A later, [6..8] phase B.
  float* fx_s = reinterpret_cast<float*>(flag_s + 8);
  __syncthreads();
  if (tid == 0) {
    const int ex[3] = {e_a0, e_a, e_b};
    for (int j = 0; j < 3; ++j) {
      fx_s[3 * j] = ldexpf(1.f, 30 - ex[j]);
      fx_s[3 * j + 1] = ldexpf(1.f, ex[j]);
      fx_s[3 * j + 2] = ldexpf(1.f, ex[j] - 30);
    }
  }
  const int max_len = len_s[p.rb];
  stamp(2);
  trace_pro(6);

  const int npairs = nrows * ucount;
  const int xs_buf = p.rb * upb * G;
  // With ks = 1 every warp holds one m-tile's whole sums (4 units x 4 gates), and the cell update of those units
  // runs in the warp itself: no z round trip through shared memory, no block barrier between the products and the
  // cell, 16 warps on the cell instead of 2 (session 26). Lane 4 g + t of m-tile mt holds z of (batch row t / 2,
  // unit 4 mt + g / 4 + 2 (t % 2), gate g % 4); the gate-0 lanes (g % 4 = 0) run the cell of their unit. x_proj
  // is prefetched by the lane that uses it (cp.async is only waited for per thread).
  const bool fused_cell = q8.ks == 1;
  const bool cell_lane = fused_cell && (g8 & 3) == 0;
  const int cell_r = t4 >> 1, cell_u = mt_a * 4 + (g8 >> 2) + 2 * (t4 & 1);
  auto prefetch_pair = [&](int s, int r, int u) {
    float* xs = xs_s + (s & 1) * xs_buf;
    const int pi = r * ucount + u;
    const int len = len_s[r];
    if (s < len) {
      const int t = reverse ? len - 1 - s : s;
      const float* xp = p.x_proj + row_index(r, t) * xcols + (long long)d * G * H + u0 + u;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(xs + pi * G + g));
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(xp + (long long)g * H) : "memory");
      }
    }
  };
  auto prefetch_x = [&](int s) {
    if (fused_cell) {
      if (cell_lane && cell_r < nrows && cell_u < ucount) prefetch_pair(s, cell_r, cell_u);
    } else {
#pragma unroll 1
      for (int pi = tid; pi < npairs; pi += nthreads) {
        const int r = pi / ucount;
        prefetch_pair(s, r, pi - r * ucount);
      }
    }
    CpAsyncCommit();
  };
  prefetch_x(0);
  // h of step s as the next step's operand word (FetchPlanes): X + 2^31 of h / scale at the scaling of steps >= 1,
  // or 0 when h / scale is NaN, infinite or past the bound (the reader flags the row).
  auto publish_h = [&](int r, int col, float h, int s) {
    const long long idx = (((long long)(s & 1) * D + d) * B + r) * p.ex_r + col;
    const float v = h * inva_s[col];
    const uint32_t w = fabsf(v) <= fx_s[4] ? OffsetFixed(v, fx_s[3]) : 0u;
    StoreRelaxed64(p.xh_tag + idx, (static_cast<unsigned long long>(s + 1) << 32) | w);
  };
  // The cell update of (row r, own unit u) at step s from its 4 gate sums; then h published (no projection) or m
  // into phase B's planes.
  auto cell_pair = [&](int s, int r, int u, const float (&z)[G], const float* xs_step) {
    const int pi = r * ucount + u;
    const int len = len_s[r];
    float hv = 0.f;
    if (s < len) {
      const int t = reverse ? len - 1 - s : s;
      float x[G];
#pragma unroll
      for (int g = 0; g < G; ++g) x[g] = xs_step[pi * G + g];
      float* rs = p.reserve ? p.reserve + (((long long)d * B + r) * T + t) * p.reserve_f + u0 + u : nullptr;
      hv = LstmCellUpdate(x, z, &c_s[r * upb + u], p.cell_clip, rs, H);
      if (P == 0) {
        hown_s[r * upb + u] = hv;
        p.out[row_index(r, t) * ocols + (long long)d * R + u0 + u] = hv;
      }
    } else if (P == 0) {
      hv = hown_s[r * upb + u];  // a finished row keeps publishing its last state
    }
    if (P == 0) {
      publish_h(r, u0 + u, hv, s);
    } else {
      float v = hv * invb_s[u];
      if (!(fabsf(v) <= fx_s[7]) || hv != hv) {
        if (s < len) flag_s[2 + r] = s + 1;
        v = 0.f;
      }
      StorePlanes(plb_s + r * 4 * q8.plb_stride + u, q8.plb_stride, OffsetFixed(v, fx_s[6]));
    }
  };

  // ---- the recurrence ------------------------------------------------------------------------------------------
  for (int s = 0; s < max_len; ++s) {
    const int sbase = s < kDebugSteps ? 3 + 5 * s : -1;
    if (sbase >= 0) stamp(sbase);
    trace(s, 0);
    // ---- phase A: h_prev as byte planes. Step 0: h0 (floats) through one conversion pass at step 0's scaling;
    // later steps: the owners' fixed-point words straight into the planes.
    if (s == 0) {
      FetchRows(h_s, kpad_a, p.h0 ? p.h0 + (long long)d * B * R : nullptr, nullptr, nullptr, 0, 0u, nrows, R, p.ex_r,
                tid, nthreads, p.watchdog);
      __syncthreads();
      const float to_fixed = fx_s[0], lim = fx_s[1];
#pragma unroll 1
      for (int i = tid; i < nrows * R; i += nthreads) {
        const int r = nrows == 1 ? 0 : i / R, k = i - r * R;
        const float h = h_s[r * kpad_a + k];
        float v = h * inva_s[k];
        if (!(fabsf(v) <= lim) || h != h) {
          flag_s[r] = s + 1;
          v = 0.f;
        }
        StorePlanes(pla_s + r * 4 * q8.pla_stride + k, q8.pla_stride, OffsetFixed(v, to_fixed));
      }
    } else {
      FetchPlanes(pla_s, q8.pla_stride, flag_s, s + 1, p.xh_tag + ((long long)((s + 1) & 1) * D + d) * B * p.ex_r,
                  static_cast<unsigned>(s), nrows, R, p.ex_r, tid, nthreads, p.watchdog);
    }
    trace(s, 1);
    __syncthreads();
    trace(s, 2);
    trace(s, 3);
    if (sbase >= 0) stamp(sbase + 1);
    // ---- phase A products: this warp's tiles; the planes of row b are B-fragment columns 4 b .. 4 b + 3.
    // z (float) is put together in parallel here, off the cell update's serial path: by the warp itself when it
    // covers all of k (ks = 1: lanes 4 g + 2 b and 4 g + 2 b + 1 hold planes 0-1 and 2-3 of row b), else after the
    // slices' accumulators are added in shared memory.
    const float from_fixed = fx_s[s == 0 ? 2 : 5];
    auto put_z = [&](int mt, int row, int r, int a0, int a1, int a2, int a3) {
      const float z = flag_s[r] == s + 1 ? __int_as_float(0x7fc00000)
                                          : FromPlanes(a0, a1, a2, a3, csa_s[mt * 16 + row], from_fixed);
      z_s[(r * upb + mt * 4 + (row >> 2)) * G + (row & 3)] = z;
    };
    {
      // One accumulator: with several (summed at the end) ptxas re-associated the integer sums into one chain
      // anyway, and 4 chains measured the same as 2 (session 25).
      int acc0[4] = {0, 0, 0, 0};
      const uint8_t* pb = pla_s + g8 * q8.pla_stride + t4 * 4;
#pragma unroll
      for (int i = 0; i < TA; ++i) {
        const int kt = ksi * TAN + i;
        if (i < TAN && kt < KA) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(pb + kt * 32);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(pb + kt * 32 + 16);
          MmaS8U8(acc0, wa[i], b0, b1);
        }
      }
      trace(s, 12);
      if (fused_cell) {
        int o[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) o[e] = __shfl_xor_sync(0xffffffffu, acc0[e], 1);
        // Even lanes hold planes 0-1 of rows g and g + 8, odd lanes planes 2-3: even lanes put row g together,
        // odd lanes row g + 8.
        float zv = 0.f;
        if (cell_r < nrows) {
          const bool nan_h = flag_s[cell_r] == s + 1;
          zv = nan_h ? __int_as_float(0x7fc00000)
                     : ((t4 & 1) == 0 ? FromPlanes(acc0[0], acc0[1], o[0], o[1], csa_s[mt_a * 16 + g8], from_fixed)
                                      : FromPlanes(o[2], o[3], acc0[2], acc0[3], csa_s[mt_a * 16 + g8 + 8],
                                                   from_fixed));
        }
        // A unit's gates 1..3 sit 4, 8 and 12 lanes above its gate 0.
        const float zg[G] = {zv, __shfl_down_sync(0xffffffffu, zv, 4), __shfl_down_sync(0xffffffffu, zv, 8),
                             __shfl_down_sync(0xffffffffu, zv, 12)};
        trace(s, 13);
        CpAsyncWaitGroup<0>();  // this lane's x_proj of step s
        if (cell_lane && cell_r < nrows && cell_u < ucount) cell_pair(s, cell_r, cell_u, zg, xs_s + (s & 1) * xs_buf);
        // Without a projection nothing else orders this step's reads of the planes before the next fetch's writes.
        if (P == 0) __syncthreads();
      } else {
        acc_s[(ksi * MA + mt_a) * 32 + lane] = make_int4(acc0[0], acc0[1], acc0[2], acc0[3]);
        __syncthreads();
        const int* a = reinterpret_cast<const int*>(acc_s);
        const int n = MA * 32 * 4;  // ints per slice
#pragma unroll 1
        for (int i = tid; i < MA * 16 * nrows; i += nthreads) {
          const int mt = i / (16 * nrows), rem = i - mt * 16 * nrows, row = rem / nrows, r = rem - row * nrows;
          const int off = (mt * 32 + (row & 7) * 4 + 2 * r) * 4 + (row >> 3) * 2;
          int a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma unroll 1
          for (int k = 0; k < q8.ks; ++k) {
            a0 += a[k * n + off];
            a1 += a[k * n + off + 1];
            a2 += a[k * n + off + 4];
            a3 += a[k * n + off + 5];
          }
          put_z(mt, row, r, a0, a1, a2, a3);
        }
        __syncthreads();
      }
    }
    if (sbase >= 0) stamp(sbase + 2);
    trace(s, 4);
    // ---- cell update for this block's (row, unit) pairs (k split over warps: from z in shared memory)
    if (!fused_cell) {
      CpAsyncWaitGroup<0>();  // this thread's x_proj of step s
      const float* xs_step = xs_s + (s & 1) * xs_buf;
#pragma unroll 1
      for (int pi = tid; pi < npairs; pi += nthreads) {
        const int r = pi / ucount, u = pi - r * ucount;
        const float4 z4 = *reinterpret_cast<const float4*>(z_s + (r * upb + u) * G);
        const float z[G] = {z4.x, z4.y, z4.z, z4.w};
        cell_pair(s, r, u, z, xs_step);
      }
    }
    if (sbase >= 0) stamp(sbase + 3);
    trace(s, 5);
    if (s + 1 < max_len) prefetch_x(s + 1);

    // ---- phase B (projection) as a reduce-scatter: partial sums of the own units for every column, then the
    // owned columns summed over the nbu blocks in a fixed order
    if (P > 0) {
      __syncthreads();  // plb_s complete
      trace(s, 6);
      const unsigned long long tag = static_cast<unsigned long long>(s + 1) << 32;
      const long long par_base = ((long long)(s & 1) * D + d) * B;
      const long long blk_stride = (long long)p.nbu * p.ex_p;
      unsigned long long* xp_own = p.xm_tag + par_base * blk_stride + (long long)ub * p.ex_p;
      const uint8_t* pb = plb_s + g8 * q8.plb_stride + t4 * 4;
      // Two m-tiles a warp at a time (mt and mt + nwarps): two independent MMA -> shuffle -> int64 -> store chains
      // instead of one after the other (one chain was ~1.1 k cycles of a ~2.2 k phase B, session 26).
      const float from_fixed_b = fx_s[8];
      const int r = t4 >> 1;
      const bool nan_row = r < nrows && flag_s[2 + r] == s + 1;
#pragma unroll 1
      for (int mt0 = warp; mt0 < MB; mt0 += 2 * nwarps) {
        const bool second = mt0 + nwarps < MB;  // warp-uniform
        int c[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll 1
        for (int kt = 0; kt < KB; ++kt) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(pb + kt * 32);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(pb + kt * 32 + 16);
          const uint4 a4 = fragb_s[(mt0 * KB + kt) * 32 + lane];
          const uint32_t a[4] = {a4.x, a4.y, a4.z, a4.w};
          MmaS8U8(c[0], a, b0, b1);
          if (second) {
            const uint4 e4 = fragb_s[((mt0 + nwarps) * KB + kt) * 32 + lane];
            const uint32_t e[4] = {e4.x, e4.y, e4.z, e4.w};
            MmaS8U8(c[1], e, b0, b1);
          }
        }
        int o[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q) o[j][q] = __shfl_xor_sync(0xffffffffu, c[j][q], 1);
        if (mt0 == warp) trace(s, 10);
        if ((t4 & 1) == 0 && r < nrows) {
          const float nanv = __int_as_float(0x7fc00000);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            if (j == 1 && !second) break;
            const int col0 = (mt0 + j * nwarps) * 16 + g8, col1 = col0 + 8;
            const float v0 = nan_row ? nanv : FromPlanes(c[j][0], c[j][1], o[j][0], o[j][1], csb_s[col0], from_fixed_b);
            const float v1 = nan_row ? nanv : FromPlanes(c[j][2], c[j][3], o[j][2], o[j][3], csb_s[col1], from_fixed_b);
            if (col0 < P) StoreRelaxed64(xp_own + r * blk_stride + col0, tag | __float_as_uint(v0));
            if (col1 < P) StoreRelaxed64(xp_own + r * blk_stride + col1, tag | __float_as_uint(v1));
          }
        }
        if (mt0 == warp) trace(s, 11);
      }
      trace(s, 7);
      trace_warp(s, 1);
#pragma unroll 1
      for (int q = warp; q < nrows * pcount; q += nwarps) {
        const int r = q / pcount, pc = q - r * pcount;
        const int len = len_s[r];
        float h;
        if (s < len) {
          const float sum = WarpSumTaggedColumn(p.xm_tag + (par_base + r) * blk_stride + pc0 + pc, p.nbu, p.ex_p,
                                                tag, lane, p.watchdog);
          trace(s, 14);
          h = ClipKeepNaN(sum, p.proj_clip);
          if (lane == 0) {
            const int t = reverse ? len - 1 - s : s;
            if (p.reserve) p.reserve[(((long long)d * B + r) * T + t) * p.reserve_f + 5 * H + pc0 + pc] = sum;
            hown_s[r * p.ppb + pc] = h;
            p.out[row_index(r, t) * ocols + (long long)d * R + pc0 + pc] = h;
          }
        } else {
          h = hown_s[r * p.ppb + pc];
        }
        if (lane == 0) publish_h(r, pc0 + pc, h, s);
      }
    }
    trace(s, 8);
    if (sbase >= 0) stamp(sbase + 4);
  }
  stamp(3 + 5 * kDebugSteps);

  // ---- final states ------------------------------------------------------------------------------------------
  __syncthreads();
  for (int i = tid; i < nrows * own_count; i += nthreads) {
    const int r = i / own_count, c = i - r * own_count;
    if (p.final_h) p.final_h[((long long)d * B + r) * R + own0 + c] = hown_s[r * own_cols + c];
  }
  if (p.final_c) {
    for (int i = tid; i < nrows * ucount; i += nthreads) {
      const int r = i / ucount, u = i - r * ucount;
      p.final_c[((long long)d * B + r) * H + u0 + u] = c_s[r * upb + u];
    }
  }
  PoisonIfWatchdogFired(p);
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 1);
#endif  // __CUDA_ARCH__ >= 800
}

}  // namespace cuda_impl
}  // namespace fused_rnn

#endif  // FUSED_RNN_CUDA_FUSED_RNN_CUDA_I8MMA_CUH_
