// The tensor-core variant of the persistent kernel (device code; sm_80+, 16-bit or float32 weights, no projection).
// Included only by the fused_rnn_cuda_tc_*.cu instantiation files.
//
// For a batch, the recurrent product z[B, G*H] = h_prev[B, H] @ U[H, G*H] is a real matrix product, and the
// float32 CUDA-core dot of the general kernel runs at a fraction of the FMA peak (bench/gpu/NOTES.md: LSTM H=1024
// B=64 at 2.9 ms, FMA floor 0.8 ms). Here each block owns `upb` hidden units (all gates) of one group of `rb` batch
// rows, holds its slice of U as mma.sync m16n8k16 B fragments in registers for the whole sequence, and per step:
//   1. copies h_prev (16-bit, written by every block the step before, in the exchange buffer) into shared memory
//      with cp.async: each warp only its own k-range, so no block barrier is needed;
//   2. multiplies: warp w covers k-tiles [w * KTW, w * KTW + KTW) of every m-tile (16 batch rows) and n-tile (8 gate
//      columns), float32 accumulators in registers;
//   3. adds the warps' partial sums in shared memory (the warps split K, so every output has one partial per warp);
//   4. runs the cell update (float32, as the general kernel does) for its (row, unit) pairs, writes the outputs,
//      and publishes the new h rounded to 16 bits into the exchange buffer;
//   5. meets the other blocks of its direction at the counter barrier (cooperative launch: all blocks resident).
// The exchange buffer keeps h in mma A-fragment order: each 16x16 (rows x k) tile is 512 contiguous bytes, lane l's
// four registers 16 contiguous bytes of it, so step 1 is one coalesced 16-byte copy per lane per tile and the
// fragment is one 16-byte shared load. Numerics: the weights are the caller's 16-bit values exactly; h_{t-1} enters
// the product rounded to the weight type (float16: 2^-11 relative, bfloat16: 2^-8), products and sums are float32;
// the cell state, the gates and the outputs stay float32.
//
// float32 weights (WK = kWeightF32) run the same steps on m16n8k8 TF32 fragments with the product split three ways
// (3xTF32: a = a_hi + a_lo with both parts rounded to TF32, a.b ~ a_lo.b_hi + a_hi.b_lo + a_hi.b_hi), which keeps
// float32's accuracy (~1e-7 relative per product; the dropped a_lo.b_lo is ~2^-22 of it). U stays float32 in
// registers and is split on the fly; h is exchanged as float32 (a 16x8 tile is 512 bytes, as a 16x16 16-bit tile
// is, so the copy machinery is shared). Twice the registers per weight and twice the h bytes of the 16-bit path.
// With CudaTuning::allow_tf32 (TensorFlow's TF32 policy) the same kernel rounds U once and each published h to TF32
// and takes one product per k-tile instead of three: TF32 accuracy (~1e-3 relative), cuDNN's default for float32.
// Usually the planner runs TF32 on the float16 kernel instead (CudaTuning::tf32_exchange16): U copied to float16 per
// call with power-of-two column scales (tc_col_scale, undone in the cell update by the kColScaled instantiation),
// h exchanged as float16. An LSTM's initial state beyond float16's range is scaled by a power of two for step 0
// (tc_h0_shift); for a GRU this float32-exchange kernel is launched too, as the fallback for such a state (tc_gate;
// fused_rnn_cuda_tc_f16copy.cu).
#ifndef FUSED_RNN_CUDA_FUSED_RNN_CUDA_TC_CUH_
#define FUSED_RNN_CUDA_FUSED_RNN_CUDA_TC_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "fused_rnn_cuda_kernel.cuh"

namespace fused_rnn {
namespace cuda_impl {

// Registers the compiler must plan for: the B fragments, the accumulators, and ~88 for everything else; the block
// size is capped so that one block fits the SM's register file (a multiple of 128 threads, at least 256: 8 warps
// cover k up to 1024).
template <int NT, int KTW, int MG> __host__ __device__ constexpr int TcMaxThreads() {
  return (65536 / (2 * NT * KTW + 4 * MG * NT + 88)) / 128 * 128 > 1024
             ? 1024
             : ((65536 / (2 * NT * KTW + 4 * MG * NT + 88)) / 128 * 128 < 256
                    ? 256
                    : (65536 / (2 * NT * KTW + 4 * MG * NT + 88)) / 128 * 128);
}

// The exchange element (16-bit h, or float32 bits) and the k-width of one tile, by weight kind.
template <int WK> using TcElem = typename std::conditional<WK == kWeightF32, uint32_t, uint16_t>::type;
template <int WK> __host__ __device__ constexpr int TcKTile() { return WK == kWeightF32 ? 8 : 16; }

// Offset (in elements) of h[row][k] in one (parity, direction) slab of the exchange buffer: 512-byte tiles in
// row-tile-major order. 16-bit: tiles of 16 rows x 16 k in the A-fragment order of mma.m16n8k16 (lane = 4 * (row %
// 8) + (k % 8) / 2; register = (row % 16) / 8 + 2 * ((k % 16) / 8); low half = even k). float32: tiles of 16 rows x
// 8 k in the A-fragment order of mma.m16n8k8.tf32 (lane = 4 * (row % 8) + k % 4; register = (row % 16) / 8 + 2 *
// ((k % 8) / 4)).
// The offset is a sum of a row's part and a k's part (their bits do not overlap), so a block tabulates both once.
template <int WK> __device__ __forceinline__ int TcFragRowPart(int row, int kt_total) {
  const int mt = row >> 4, m = row & 15;
  if constexpr (WK == kWeightF32) return ((mt * kt_total) << 7) + ((m & 7) << 4) + (m >> 3);
  else return ((mt * kt_total) << 8) + ((m & 7) << 5) + ((m >> 3) << 1);
}
template <int WK> __device__ __forceinline__ int TcFragColPart(int k) {
  if constexpr (WK == kWeightF32) {
    const int kt = k >> 3, kk = k & 7;
    return (kt << 7) + ((kk & 3) << 2) + ((kk >> 2) << 1);
  } else {
    const int kt = k >> 4, kk = k & 15;
    return (kt << 8) + (((kk & 7) >> 1) << 3) + ((kk >> 3) << 2) + (kk & 1);
  }
}
template <int WK> __device__ __forceinline__ int TcFragOffset(int row, int k, int kt_total) {
  return TcFragRowPart<WK>(row, kt_total) + TcFragColPart<WK>(k);
}

template <int WK> __device__ __forceinline__ TcElem<WK> ToExchange(float v) {
  if constexpr (WK == kWeightF32) return __float_as_uint(v);
  else if constexpr (WK == kWeightBF16) return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  else return __half_as_ushort(__float2half_rn(v));
}

// float32 -> (hi, lo) for 3xTF32: hi = v rounded to TF32 (10 mantissa bits; the integer add rounds half away from
// zero), lo = v - hi (exact in float32, at most 2^-11 of |v|; the mma reads its top 11 significant bits). hi + lo
// equals v to ~2^-22 relative. Three integer/float ops without predicates: cvt.rna.tf32.f32 compiles on sm_90 to a
// compare, a predicated add and a mask whose shared predicate serialises every split (measured: the splits took
// 0.65 of the first build's 1.83 ms at LSTM H=1024 B=64). Finite values within 2^-11 of FLT_MAX round to Inf.
__device__ __forceinline__ void SplitTf32(uint32_t v, uint32_t& hi, uint32_t& lo) {
  hi = (v + 0x1000u) & 0xffffe000u;
  lo = __float_as_uint(__uint_as_float(v) - __uint_as_float(hi));
}
// v rounded to TF32 (as SplitTf32's hi) for the single-product TF32 mode; Inf and NaN pass unchanged (the integer
// add would carry a NaN's low payload bits into the exponent or the sign: 0x7fffffff, CUDA's NaN, became -0).
__device__ __forceinline__ uint32_t RoundTf32(uint32_t v) {
  return (v & 0x7f800000u) == 0x7f800000u ? v : ((v + 0x1000u) & 0xffffe000u);
}
// The same for U, whose split is the same every step: the volatile add keeps it inside the time loop, since both
// parts of every weight held at once would take twice U's registers and spill.
__device__ __forceinline__ void SplitTf32Pinned(uint32_t v, uint32_t& hi, uint32_t& lo) {
  uint32_t r;
  asm volatile("add.u32 %0, %1, 0x1000;" : "=r"(r) : "r"(v));
  hi = r & 0xffffe000u;
  lo = __float_as_uint(__uint_as_float(v) - __uint_as_float(hi));
}

// Not volatile: a pure function of its operands, so the compiler may interleave one k-tile's products with the
// next one's loads and splits.
__device__ __forceinline__ void Mma1688Tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800
  asm(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <int WK>
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint4& a, const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800
  if constexpr (WK == kWeightBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]));
  }
#endif
}

__device__ __forceinline__ void CpAsync16(void* smem_dst, const void* gmem_src) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem_src) : "memory");
#endif
}
// 16 bytes, or 16 zero bytes when !valid (src-size 0: nothing is read).
__device__ __forceinline__ void CpAsync16ZeroFill(void* smem_dst, const void* gmem_src, bool valid) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem_src), "r"(valid ? 16 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void CpAsyncCommit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void CpAsyncWaitGroup() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
// Waits until at most n (0..15) of this thread's newest commit groups are still in flight (n folds to a constant
// in the unrolled loops that call it).
__device__ __forceinline__ void CpAsyncWaitPending(int n) {
  switch (n) {
    case 0: CpAsyncWaitGroup<0>(); break;
    case 1: CpAsyncWaitGroup<1>(); break;
    case 2: CpAsyncWaitGroup<2>(); break;
    case 3: CpAsyncWaitGroup<3>(); break;
    case 4: CpAsyncWaitGroup<4>(); break;
    case 5: CpAsyncWaitGroup<5>(); break;
    case 6: CpAsyncWaitGroup<6>(); break;
    case 7: CpAsyncWaitGroup<7>(); break;
    case 8: CpAsyncWaitGroup<8>(); break;
    case 9: CpAsyncWaitGroup<9>(); break;
    case 10: CpAsyncWaitGroup<10>(); break;
    case 11: CpAsyncWaitGroup<11>(); break;
    case 12: CpAsyncWaitGroup<12>(); break;
    case 13: CpAsyncWaitGroup<13>(); break;
    case 14: CpAsyncWaitGroup<14>(); break;
    default: CpAsyncWaitGroup<15>(); break;
  }
}

// CELL 0 = LSTM (gates i, f, g, o), 1 = GRU (z, r, n); WK = kWeightF16, kWeightBF16 or kWeightF32; NT n-tiles of 8
// gate columns per block (columns ordered gate-major: col = g * upb + unit); KTW k-tiles (16 rows of U, 8 for
// float32) per warp; MG m-tiles (16 batch rows) per pass over the batch.
// kColScaled: the TF32-through-float16 instantiation (16-bit weights only), whose U columns carry power-of-two scales
// (tc_col_scale) undone in the cell update; a separate instantiation, so the plain 16-bit kernels keep their code
// (with the scales in one kernel, GRU H=1024 B=64 float16 measured 1-3% slower, session 39).
template <int CELL, int WK, int NT, int KTW, int MG, bool kColScaled = false>
__global__ void __launch_bounds__(TcMaxThreads<NT, KTW, MG>(), 1) RnnTensorCoreKernel(const KernelParams p) {
#if __CUDA_ARCH__ >= 800
  constexpr int G = CELL == 0 ? 4 : 3;
  constexpr bool kLstm = CELL == 0;
  constexpr bool kF32 = WK == kWeightF32;
  using XE = TcElem<WK>;                         // exchange (and weight) element: 16-bit, or float32 bits
  constexpr int kTileElems = 512 / sizeof(XE);   // one 16x16 tile of 16-bit values, or a 16x8 tile of float32
  constexpr int kLaneElems = 16 / sizeof(XE);    // one lane's 16 bytes of a tile
  constexpr int kKTile = TcKTile<WK>();
  constexpr int kWarpBufBytes = KTW * MG * 512;  // one warp's staged h tiles (and, aliased, its partial sums)
  constexpr int kNCols = NT * 8;
  static_assert(MG * kNCols * 16 * 4 <= kWarpBufBytes, "partial sums must fit the warp's staging buffer");
  extern __shared__ __align__(16) unsigned char smem[];
  // Two kernels launched for one call (TF32 through float16 and its float32 fallback): the gate word says which
  // one runs; the other returns before touching anything. Uniform over the grid, so no barrier is left waiting.
  if (p.tc_gate != nullptr && ((*p.tc_gate != 0) ? 1 : 0) != p.tc_gate_run_if) return;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x;
  // Block (direction d, row group rg, unit block ub): rows [row0, row0 + NR) (row0 a multiple of 16), units
  // [u0, u0 + ucount). Row groups are independent recurrences with their own barrier counter.
  const int blocks_per_dir = p.nbr * p.nbu;
  const int d = blockIdx.x / blocks_per_dir;
  const int rem = blockIdx.x - d * blocks_per_dir;
  const int rg = rem / p.nbu, ub = rem - rg * p.nbu;
  const int H = p.H, B = p.B, T = p.T, D = p.D;
  const int row0 = rg * p.rb;
  const int NR = min(p.rb, B - row0);
  const int u0 = ub * p.upb;
  const int ucount = min(p.upb, H - u0);
  const int KT = p.tc_kt;
  const int MT = (NR + 15) >> 4;  // this group's m-tiles
  const int mtb = row0 >> 4;      // its first m-tile in the exchange slab
  const int kt0 = warp * KTW;
  const bool reverse = (p.reverse_mask >> d) & 1;
  const long long xcols = (long long)D * G * H;
  const long long ocols = (long long)D * H;
  const long long x_tstride = p.time_major ? (long long)B * xcols : xcols;
  const long long o_tstride = p.time_major ? (long long)B * ocols : ocols;
  const long long slab = (long long)p.tc_mt * KT * kTileElems;  // elements per (parity, direction)
  XE* xh16 = static_cast<XE*>(p.xh16);

  unsigned char* wbuf = smem + warp * kWarpBufBytes;
  float* z_s = reinterpret_cast<float*>(smem + p.off_z);       // [MT * 16][kNCols]
  float* c_s = reinterpret_cast<float*>(smem + p.off_c);       // [rb][upb]
  float* hown_s = reinterpret_cast<float*>(smem + p.off_hown); // [rb][upb] float32 h of this block's units
  int* len_s = reinterpret_cast<int*>(smem + p.off_len);       // [rb] lengths, then (at rb) their max
  float* cs_s = reinterpret_cast<float*>(smem + p.off_cs);     // [kNCols] column scales (tc_col_scale only)
  float* xs_s = reinterpret_cast<float*>(smem + p.off_x);      // [2][rb * upb][G] x_proj by step parity
  int* frag_row_s = reinterpret_cast<int*>(smem + p.off_frag); // [rb] TcFragRowPart of the group's rows
  int* frag_col_s = frag_row_s + p.rb;                         // [upb] TcFragColPart of the block's units

  // Test-only phase stamps (block 0, thread 0), the general kernel's slots: per step s < kDebugSteps: start,
  // products of the first pass done, partial sums added (z ready), cell update done, after the barrier.
  const bool stamping = p.debug_clock != nullptr && blockIdx.x == 0 && tid == 0;
  auto stamp = [&](int slot) {
    if (stamping) p.debug_clock[slot] = clock64();
  };
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 2);
  stamp(0);

  // ---- prologue ------------------------------------------------------------------------------------------------
  LoadLengths(p, len_s, row0, NR, tid, nthreads);
  static_assert(!kColScaled || WK != kWeightF32, "column scales exist for the float16 copy only");
  constexpr bool col_scaled = kColScaled;  // p.tc_col_scale is set whenever this instantiation is launched
  if (col_scaled) {
    for (int c = tid; c < kNCols; c += nthreads) {
      const int gate = c / p.upb, u = c - gate * p.upb;
      cs_s[c] = (gate < G && u < ucount) ? p.tc_col_scale[((long long)d * G + gate) * H + u0 + u] : 1.f;
    }
  }

  // This warp's slice of U as B fragments: lane (g = lane / 4, t = lane % 4) holds, for column n = nt * 8 + g,
  // rows 2t, 2t+1 (word 0) and 2t+8, 2t+9 (word 1) of each k-tile (float32: row t in word 0, t+4 in word 1); zero
  // past R and past the block's columns.
  uint32_t bw[KTW][NT][2];
  {
    const XE* w = static_cast<const XE*>(p.w_rec) + (long long)d * H * G * H;
    const int g8 = lane >> 2, t4 = lane & 3;
    if (p.upb % kLaneElems == 0 && H % kLaneElems == 0 && (reinterpret_cast<uintptr_t>(w) & 15) == 0) {
      // Staged: the block reads rows of its columns with coalesced 16-byte loads, kBatch in flight per thread, into
      // the (still unused) staging area [0, off_z); then every lane picks its fragments out of shared memory.
      // (Gathering the 2-byte values straight from global memory took ~41 k cycles for H=1024 with 16 units per
      // block, 20 us of a 0.62 ms call.) The row stride is padded by 8 values: a fragment read touches rows 2t..
      // of 8 columns, and with a stride that is a multiple of 64 values its 32 lanes fell on 4 banks.
      constexpr int kCols = NT * 8;
      constexpr int kStride = kCols + 8;
      constexpr int kVecsRow = kCols / kLaneElems;
      XE* st = reinterpret_cast<XE*>(smem);
      const int rows_pass = (p.off_z / (kStride * (int)sizeof(XE))) / kKTile * kKTile;  // whole k-tiles per pass
#pragma unroll
      for (int kk = 0; kk < KTW; ++kk)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) bw[kk][nt][0] = bw[kk][nt][1] = 0u;
#pragma unroll 1
      for (int k0 = 0; k0 < H; k0 += rows_pass) {
        const int rows = min(rows_pass, H - k0);
        const int total = rows * kVecsRow;
        // Every vector of the pass in flight at once (cp.async, no registers; zero-filled outside the block's
        // columns). Session 35: the register-staged copy with 8 loads in flight per thread took ~36 k cycles for
        // H=1024 (128 KB a block), several DRAM round trips per pass.
        if (nthreads % kVecsRow == 0) {
          // A thread's vectors (tid + j * nthreads) all sit in the same column: its column, source and predicate
          // are fixed, and only the row advances. (Per vector, a division and 64-bit index arithmetic made the
          // issue loop ~50 instructions, a third of the prologue's samples in ncu, session 39.)
          const int n = (tid % kVecsRow) * kLaneElems;
          const int gate = n / p.upb, u = n - gate * p.upb;  // upb % kLaneElems == 0: no vector straddles two gates
          const bool ok = gate < G && u < ucount;            // ucount is a multiple of kLaneElems too
          const long long row_stride = (long long)G * H;
          const XE* src = w + (ok ? (long long)k0 * row_stride + (long long)gate * H + u0 + u : 0);
          const int dr = nthreads / kVecsRow;
          int r = tid / kVecsRow;
          src += ok ? r * row_stride : 0;
          const long long src_step = ok ? dr * row_stride : 0;
#pragma unroll 4
          for (; r < rows; r += dr, src += src_step) CpAsync16ZeroFill(st + r * kStride + n, src, ok);
        } else {
#pragma unroll 1
          for (int i = tid; i < total; i += nthreads) {
            const int r = i / kVecsRow, n = (i - r * kVecsRow) * kLaneElems;
            const int gate = n / p.upb, u = n - gate * p.upb;
            const bool ok = gate < G && u < ucount;
            const XE* src = ok ? w + (long long)(k0 + r) * G * H + (long long)gate * H + u0 + u : w;
            CpAsync16ZeroFill(st + r * kStride + n, src, ok);
          }
        }
        CpAsyncCommit();
        CpAsyncWaitGroup<0>();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < KTW; ++kk) {
          const int kt_row = (kt0 + kk) * kKTile;
          if (kt_row >= k0 && kt_row < k0 + rows) {
            if constexpr (!kF32) {
              if (kt_row + kKTile <= k0 + rows) {
                // A whole k-tile: ldmatrix.trans hands each lane its B fragments (rows 2t, 2t+1 and 2t+8, 2t+9 of
                // column g), two n-tiles per x4, instead of four 2-byte loads, shifts and ORs per word (a third of
                // the prologue's samples in ncu, session 39). Lane l addresses row l % 8 of matrix l / 8: matrices
                // (k 0-7, n-tile nt), (k 8-15, nt), (k 0-7, nt + 1), (k 8-15, nt + 1).
                const int mi = lane >> 3, mr = lane & 7;
                const XE* rowp = st + (kt_row - k0 + (mi & 1) * 8 + mr) * kStride + (mi >> 1) * 8;
#pragma unroll
                for (int nt = 0; nt < NT; nt += 2) {
                  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(rowp + nt * 8));
                  if (nt + 1 < NT) {
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                                 : "=r"(bw[kk][nt][0]), "=r"(bw[kk][nt][1]), "=r"(bw[kk][nt + 1][0]),
                                   "=r"(bw[kk][nt + 1][1])
                                 : "r"(a));
                  } else {
                    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                                 : "=r"(bw[kk][nt][0]), "=r"(bw[kk][nt][1])
                                 : "r"(a));
                  }
                }
                continue;
              }
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const int n = nt * 8 + g8;
              if constexpr (kF32) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int kr = kt_row + t4 + 4 * e;
                  bw[kk][nt][e] = kr < k0 + rows ? st[(kr - k0) * kStride + n] : 0u;
                }
              } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  const int kr = kt_row + 2 * t4 + (e & 1) + (e >> 1) * 8;
                  const uint32_t v = kr < k0 + rows ? static_cast<uint32_t>(st[(kr - k0) * kStride + n]) : 0u;
                  bw[kk][nt][e >> 1] |= v << (16 * (e & 1));
                }
              }
            }
          }
        }
        __syncthreads();
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = nt * 8 + g8;
        const int gate = n / p.upb, u = n - gate * p.upb;
        const bool col_ok = gate < G && u < ucount;
        const long long col = (long long)gate * H + u0 + u;
#pragma unroll
        for (int kk = 0; kk < KTW; ++kk) {
          if constexpr (kF32) {
            const int k = (kt0 + kk) * 8 + t4;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int kr = k + 4 * e;
              bw[kk][nt][e] = (col_ok && kr < H) ? __ldg(w + (long long)kr * G * H + col) : 0u;
            }
          } else {
            const int k = (kt0 + kk) * 16 + 2 * t4;
            uint32_t v[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int kr = k + (e & 1) + (e >> 1) * 8;
              v[e] = (col_ok && kr < H) ? static_cast<uint32_t>(__ldg(w + (long long)kr * G * H + col)) : 0u;
            }
            bw[kk][nt][0] = v[0] | (v[1] << 16);
            bw[kk][nt][1] = v[2] | (v[3] << 16);
          }
        }
      }
    }
  }

  // TF32 mode (float32 weights, allow_tf32): U rounded once here; h_{t-1} is rounded where it is published, so the
  // products read exact TF32 values and take one m16n8k8 each (no split). Outputs and states keep float32 h.
  const bool one_tf32 = kF32 && p.tc_tf32;
  if constexpr (kF32) {
    if (one_tf32) {
#pragma unroll
      for (int kk = 0; kk < KTW; ++kk)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          bw[kk][nt][0] = RoundTf32(bw[kk][nt][0]);
          bw[kk][nt][1] = RoundTf32(bw[kk][nt][1]);
        }
    }
  }
  auto to_exchange = [&](float v) -> XE {
    XE e = ToExchange<WK>(v);
    if constexpr (kF32) {
      if (one_tf32) e = RoundTf32(e);
    }
    return e;
  };

  for (int i = tid; i < p.rb + p.upb; i += nthreads)
    frag_row_s[i] = i < p.rb ? TcFragRowPart<WK>(row0 + i, KT) : TcFragColPart<WK>(u0 + i - p.rb);
  // TF32 through float16, LSTM: a batch row whose initial state is beyond float16's range enters the exchange as
  // h0 * 2^-s, and its step-0 sums are multiplied by 2^s (exact; KernelParams::tc_h0_shift, 0 for a row that fits,
  // 0..114 so that both factors are normal floats).
  constexpr bool h0_scaled = col_scaled && kLstm;
  const int* h0_shift = h0_scaled ? p.tc_h0_shift : nullptr;
  // Initial state: own units' h (float32, and 16-bit into the exchange slab of parity 1, read at step 0) and c.
  for (int i = tid; i < NR * ucount; i += nthreads) {
    const int r = i / ucount, u = i - r * ucount;
    const long long b = row0 + r;
    const float h = p.h0 ? p.h0[((long long)d * B + b) * H + u0 + u] : 0.f;
    hown_s[r * p.upb + u] = h;
    const float h_down = h0_shift ? h * __uint_as_float(static_cast<unsigned>(127 - h0_shift[d * B + b]) << 23) : h;
    xh16[(1 * D + d) * slab + TcFragOffset<WK>(row0 + r, u0 + u, KT)] = to_exchange(h_down);
    if (kLstm) c_s[r * p.upb + u] = p.c0 ? p.c0[((long long)d * B + b) * H + u0 + u] : 0.f;
  }
  __syncthreads();
  // Zeros past each sequence's length in this block's output columns.
  for (int r = 0; r < NR; ++r) {
    const int len = len_s[r];
    const int n = (T - len) * ucount;
    const long long b = row0 + r;
    for (int i = tid; i < n; i += nthreads) {
      const int t = len + i / ucount, c = i % ucount;
      const long long row = p.time_major ? (long long)t * B + b : b * T + t;
      p.out[row * ocols + (long long)d * H + u0 + c] = 0.f;
    }
  }
  const int max_len = len_s[p.rb];
  unsigned barrier_count = 0;
  unsigned* group_counter = p.counters + (d * p.nbr + rg) * 32;
  stamp(1);
  GroupBarrier(group_counter, (++barrier_count) * p.nbu, p.watchdog);  // every block's h0 is published
  stamp(2);

  const int npairs = NR * ucount;
  // This thread's (row, unit) pairs are pi = tid, tid + nthreads, ...: (r, u) = divmod(pi, ucount), walked without a
  // division, and the output and x_proj offsets from strides fixed here. (Computed per pair and step, a signed
  // division and 64-bit index selects were about a third of the cell update's ~180 instructions, ncu, session 38.)
  const int pair_r0 = tid / ucount, pair_u0 = tid - pair_r0 * ucount;
  const int pair_dr = nthreads / ucount, pair_du = nthreads - pair_dr * ucount;
  auto next_pair = [&](int& r, int& u) {
    r += pair_dr;
    u += pair_du;
    if (u >= ucount) {
      u -= ucount;
      ++r;
    }
  };
  const long long o_bstride = p.time_major ? ocols : (long long)T * ocols;
  const long long x_bstride = p.time_major ? xcols : (long long)T * xcols;
  float* const out_d = p.out + (long long)d * H + u0;                     // this block's first output column
  const float* const xproj_d = p.x_proj + (long long)d * G * H + u0;      // and its first x_proj column
  // x_proj of step s goes into shared memory (double-buffered by step parity) with cp.async, issued one step ahead
  // between this block's barrier arrival and its wait, so it is in flight across the barrier. (Session 8 also tried
  // issuing it between the h copies and the products: the barrier wait shrank by the same ~1.4 k cycles the copy
  // phase grew; no gain.)
  // Always one commit group, empty when there is nothing to copy, so the wait counts below hold.
  const int xs_buf = p.rb * p.upb * G;
  auto prefetch_x = [&](int s) {
    float* xs = xs_s + (s & 1) * xs_buf;
    int r = pair_r0, u = pair_u0;
#pragma unroll 1
    for (int pi = tid; pi < npairs; pi += nthreads, next_pair(r, u)) {
      const int len = len_s[r];
      if (s < len) {
        const int t = reverse ? len - 1 - s : s;
        const float* xp = xproj_d + (long long)(row0 + r) * x_bstride + (long long)t * x_tstride + u;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(xs + pi * G + g));
          asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(xp + (long long)g * H) : "memory");
        }
      }
    }
    CpAsyncCommit();
  };
  prefetch_x(0);
  // kColScaled: the column scales (powers of two) are folded into the cell update's add as an FMA, off the partial
  // sums' serial path (session 36 timed the scaled kernel ~6 us slower when the partial sums were multiplied). A
  // thread's pairs are tid + j * nthreads, so when nthreads is a multiple of ucount every pair of the thread has the
  // same unit and its G scales are loaded once here.
  const bool cs_unit_fixed = nthreads % ucount == 0;
  float cs_own[G];
  if constexpr (col_scaled) {
    __syncthreads();  // cs_s written above by other threads
#pragma unroll
    for (int g = 0; g < G; ++g) cs_own[g] = cs_unit_fixed ? cs_s[g * p.upb + pair_u0] : 1.f;
  }

  // ---- the recurrence ------------------------------------------------------------------------------------------
  for (int s = 0; s < max_len; ++s) {
    const int sbase = s < kDebugSteps ? 3 + 5 * s : -1;
    if (sbase >= 0) stamp(sbase);
    const XE* hsrc = xh16 + ((long long)((s + 1) & 1) * D + d) * slab;  // written at step s - 1
#pragma unroll 1
    for (int mt0 = 0; mt0 < MT; mt0 += MG) {
      // 1. this warp's h tiles, one commit group per k-tile so the products start as the first ones land.
#pragma unroll
      for (int kk = 0; kk < KTW; ++kk) {
        const int kt = kt0 + kk;
#pragma unroll
        for (int m = 0; m < MG; ++m) {
          if (kt < KT && mt0 + m < MT)
            CpAsync16(wbuf + ((kk * MG + m) * 32 + lane) * 16,
                      hsrc + ((long long)(mtb + mt0 + m) * KT + kt) * kTileElems + lane * kLaneElems);
        }
        CpAsyncCommit();
      }
      // 2. the products.
      float acc[MG][NT][4];
#pragma unroll
      for (int m = 0; m < MG; ++m)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[m][nt][e] = 0.f;
      // kOne (float32 weights, TF32 mode): one product per (m-tile, n-tile) on the rounded values. The two loops are
      // separate code, each unrolled, so the TF32 mode does not fetch the 3xTF32 loop's instructions.
      auto products = [&](auto one_tag) {
        constexpr bool kOne = decltype(one_tag)::value;
#pragma unroll
        for (int kk = 0; kk < KTW; ++kk) {
          CpAsyncWaitPending(KTW - 1 - kk);  // k-tile kk's copies (and the older x_proj group) have landed
          __syncwarp();
          if (kt0 + kk < KT) {
            if constexpr (kF32 && kOne) {
#pragma unroll
              for (int m = 0; m < MG; ++m) {
                if (mt0 + m < MT) {
                  const uint4 a = *reinterpret_cast<const uint4*>(wbuf + ((kk * MG + m) * 32 + lane) * 16);
                  const uint32_t af[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
                  for (int nt = 0; nt < NT; ++nt) Mma1688Tf32(acc[m][nt], af, bw[kk][nt]);
                }
              }
            } else if constexpr (kF32) {
              // 3xTF32: h's parts once per (k-tile, m-tile), U's once per (k-tile, n-tile); small terms first. The
              // three terms go in three sweeps over all (m-tile, n-tile) accumulators, so consecutive mma.sync are
              // independent (the first build issued each accumulator's three back to back, each waiting for the
              // previous one's result: LSTM H=1024 B=64 took 2.19 ms against 1.83).
              uint32_t ahi[MG][4], alo[MG][4], bhi[NT][2], blo[NT][2];
#pragma unroll
              for (int m = 0; m < MG; ++m) {
                const uint4 a = *reinterpret_cast<const uint4*>(wbuf + ((kk * MG + m) * 32 + lane) * 16);
                SplitTf32(a.x, ahi[m][0], alo[m][0]);
                SplitTf32(a.y, ahi[m][1], alo[m][1]);
                SplitTf32(a.z, ahi[m][2], alo[m][2]);
                SplitTf32(a.w, ahi[m][3], alo[m][3]);
              }
#pragma unroll
              for (int nt = 0; nt < NT; ++nt) {
                SplitTf32Pinned(bw[kk][nt][0], bhi[nt][0], blo[nt][0]);
                SplitTf32Pinned(bw[kk][nt][1], bhi[nt][1], blo[nt][1]);
              }
#pragma unroll
              for (int m = 0; m < MG; ++m)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                  if (mt0 + m < MT) Mma1688Tf32(acc[m][nt], alo[m], bhi[nt]);
#pragma unroll
              for (int m = 0; m < MG; ++m)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                  if (mt0 + m < MT) Mma1688Tf32(acc[m][nt], ahi[m], blo[nt]);
#pragma unroll
              for (int m = 0; m < MG; ++m)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                  if (mt0 + m < MT) Mma1688Tf32(acc[m][nt], ahi[m], bhi[nt]);
            } else {
#pragma unroll
              for (int m = 0; m < MG; ++m) {
                if (mt0 + m < MT) {
                  const uint4 a = *reinterpret_cast<const uint4*>(wbuf + ((kk * MG + m) * 32 + lane) * 16);
#pragma unroll
                  for (int nt = 0; nt < NT; ++nt) Mma16816<WK>(acc[m][nt], a, bw[kk][nt]);
                }
              }
            }
          }
        }
      };
      if constexpr (kF32) {
        if (one_tf32) products(std::true_type{});
        else products(std::false_type{});
      } else {
        products(std::false_type{});
      }
      __syncwarp();
      if (sbase >= 0 && mt0 == 0) stamp(sbase + 1);
      // 3. partial sums: this warp's into its own staging buffer ([MG * 16 rows][kNCols]), then all warps' added.
      {
        float* part = reinterpret_cast<float*>(wbuf);
        const int g8 = lane >> 2, t4 = lane & 3;
#pragma unroll
        for (int m = 0; m < MG; ++m)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const int col = nt * 8 + 2 * t4;
            *reinterpret_cast<float2*>(part + (m * 16 + g8) * kNCols + col) = make_float2(acc[m][nt][0], acc[m][nt][1]);
            *reinterpret_cast<float2*>(part + (m * 16 + g8 + 8) * kNCols + col) =
                make_float2(acc[m][nt][2], acc[m][nt][3]);
          }
      }
      __syncthreads();
      {
        const int nwarps = nthreads >> 5;
        const int rows = min(MG, MT - mt0) * 16;
        const int nwords = rows * kNCols / 4;
#pragma unroll 1
        for (int i = tid; i < nwords; i += nthreads) {
          float4 sum = *reinterpret_cast<const float4*>(smem + i * 16);
#pragma unroll 8
          for (int w = 1; w < nwarps; ++w) {
            const float4 v = *reinterpret_cast<const float4*>(smem + w * kWarpBufBytes + i * 16);
            sum.x += v.x;
            sum.y += v.y;
            sum.z += v.z;
            sum.w += v.w;
          }
          *reinterpret_cast<float4*>(z_s + mt0 * 16 * kNCols + i * 4) = sum;
        }
      }
      __syncthreads();  // the staging buffers are reused by the next pass
    }

    if (sbase >= 0) stamp(sbase + 2);
    // 4. cell update (float32) for this block's (row, unit) pairs. (Two pairs per thread interleaved, all loads
    // before any store, measured no faster in session 8: the phase is not one thread's dependent chain.) A pair's
    // shared-memory operands are all loaded before its length test (every address is in bounds), so that their
    // latencies overlap instead of queueing behind the test (ncu, session 38).
    CpAsyncWaitGroup<0>();  // this thread's x_proj of step s
    const float* xs_step = xs_s + (s & 1) * xs_buf;
    XE* hdst = xh16 + ((long long)(s & 1) * D + d) * slab;
    int r = pair_r0, u = pair_u0;
#pragma unroll 1
    for (int pi = tid; pi < npairs; pi += nthreads, next_pair(r, u)) {
      const int len = len_s[r];
      const int su = r * p.upb + u;
      float hv = hown_s[su];
      const int frag = frag_row_s[r] + frag_col_s[u];
      float zs[G], x[G];
#pragma unroll
      for (int g = 0; g < G; ++g) zs[g] = z_s[r * kNCols + g * p.upb + u];
      if constexpr (G == 4) {  // one 16-byte load (xs_s is 16-byte aligned, 4 floats a pair)
        const float4 xv = *reinterpret_cast<const float4*>(xs_step + pi * 4);
        x[0] = xv.x;
        x[1] = xv.y;
        x[2] = xv.z;
        x[3] = xv.w;
      } else {
#pragma unroll
        for (int g = 0; g < G; ++g) x[g] = xs_step[pi * G + g];
      }
      float c = kLstm ? c_s[su] : 0.f;
      float cs[G];
      if constexpr (col_scaled) {
#pragma unroll
        for (int g = 0; g < G; ++g) cs[g] = cs_unit_fixed ? cs_own[g] : cs_s[g * p.upb + u];
      }
      if constexpr (h0_scaled) {
        // Step 0's h was the row's h0 * 2^-shift. Multiplying by a power of two is exact unless the true sum
        // overflows float32 anyway.
        if (s == 0 && h0_shift != nullptr) {
          const float up = __uint_as_float(static_cast<unsigned>(127 + h0_shift[d * B + row0 + r]) << 23);
#pragma unroll
          for (int g = 0; g < G; ++g) zs[g] *= up;
        }
      }
      if (s < len) {
        const int t = reverse ? len - 1 - s : s;
        const long long b = row0 + r;
        float* rs = p.reserve ? p.reserve + (((long long)d * B + b) * T + t) * p.reserve_f + u0 + u : nullptr;
        if constexpr (kLstm) {
          hv = LstmCellUpdate<col_scaled>(x, zs, &c, p.cell_clip, rs, H, cs);
          c_s[su] = c;
        } else {
          const float* rb_d = p.rec_bias ? p.rec_bias + (long long)d * G * H + u0 + u : nullptr;
          hv = GruCellUpdate<col_scaled>(x, zs, rb_d, hv, rs, H, cs);
        }
        hown_s[su] = hv;
        out_d[b * o_bstride + (long long)t * o_tstride + u] = hv;
      }
      hdst[frag] = to_exchange(hv);  // a finished row keeps publishing its last state
    }
    if (sbase >= 0) stamp(sbase + 3);
    // 5. every block's h of step s is in the exchange slab before anyone reads it. The x_proj copies of step s + 1
    // are issued after this block's arrival and before its wait: issued before the arrival, they delayed it by
    // ~0.5 k of the step's ~10.5 k cycles (ncu, session 38). Their buffer (parity s + 1) was last read by the cell
    // update of step s - 1.
    GroupBarrierAround(group_counter, (++barrier_count) * p.nbu, p.watchdog, [&] {
      if (s + 1 < max_len) prefetch_x(s + 1);
    });
    if (sbase >= 0) stamp(sbase + 4);
  }
  stamp(3 + 5 * kDebugSteps);

  // ---- final states ------------------------------------------------------------------------------------------
  __syncthreads();
  for (int i = tid; i < NR * ucount; i += nthreads) {
    const int r = i / ucount, u = i - r * ucount;
    const long long b = row0 + r;
    if (p.final_h) p.final_h[((long long)d * B + b) * H + u0 + u] = hown_s[r * p.upb + u];
    if (kLstm && p.final_c) p.final_c[((long long)d * B + b) * H + u0 + u] = c_s[r * p.upb + u];
  }
  PoisonIfWatchdogFired(p);
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 1);
#endif  // __CUDA_ARCH__ >= 800
}

#define FUSED_RNN_TC_KERNEL_TABLE(NAME, CELL, WK, SCALED)                                             \
  KernelFn NAME(int nt_idx) {                                                                        \
    static const KernelFn table[kTcNumNt] = {                                                        \
        RnnTensorCoreKernel<CELL, WK, 2, 8, 4, SCALED>, RnnTensorCoreKernel<CELL, WK, 3, 8, 4, SCALED>, \
        RnnTensorCoreKernel<CELL, WK, 4, 8, 4, SCALED>, RnnTensorCoreKernel<CELL, WK, 6, 8, 2, SCALED>, \
        RnnTensorCoreKernel<CELL, WK, 8, 8, 2, SCALED>};                                             \
    if (nt_idx < 0 || nt_idx >= kTcNumNt) return nullptr;                                            \
    return table[nt_idx];                                                                            \
  }

// float32 weights: 16 k-tiles of 8 rows per warp (the same k per warp as the 16-bit kernels) and 4 bytes a weight,
// so only NT <= 4 fits the registers (NT = 4: 128 registers of U, 32 of accumulators at MG = 2), and MG = 2 keeps
// a block's staging buffers (8 warps x KTW x MG x 512 bytes) at 128 KB of shared memory.
#define FUSED_RNN_TC_F32_KERNEL_TABLE(NAME, CELL)                                                     \
  KernelFn NAME(int nt_idx) {                                                                        \
    static const KernelFn table[kTcNumNt] = {RnnTensorCoreKernel<CELL, kWeightF32, 2, 16, 2>,        \
                                             RnnTensorCoreKernel<CELL, kWeightF32, 3, 16, 2>,        \
                                             RnnTensorCoreKernel<CELL, kWeightF32, 4, 16, 2>,        \
                                             nullptr, nullptr};                                      \
    if (nt_idx < 0 || nt_idx >= kTcNumNt) return nullptr;                                            \
    return table[nt_idx];                                                                            \
  }

}  // namespace cuda_impl
}  // namespace fused_rnn

#endif  // FUSED_RNN_CUDA_FUSED_RNN_CUDA_TC_CUH_
