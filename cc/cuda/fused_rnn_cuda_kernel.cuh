// The persistent fused-RNN kernel (device code). Included only by the instantiation files.
//
// One launch runs every timestep of every direction. Each block owns a slice of hidden units (all G gates of
// each, so the cell update is local) for a group of batch rows, keeps its slice of the recurrent kernel on chip
// for the whole sequence (leading k-chunks in registers, the rest in shared memory, or in the workspace when the
// slice does not fit), and per step computes
//   phase A: z[rows, G*units] = h_prev[rows, R] @ U_slice, then the cell update for its units;
//   phase B (projection LSTM only): h[rows, pcols] = m[rows, H] @ P_slice.
// Blocks exchange h (and m) through shared memory when one block holds a whole direction (exchange "local", no
// grid sync at all); through distributed shared memory and the hardware cluster barrier when a thread-block
// cluster of 2..8 blocks holds it ("cluster", sm_90); or through global memory between the blocks of a
// direction: "tagged" stores every value with its step number in one 64-bit word so readers poll the data
// itself (no separate barrier), "counter" uses plain stores and one arrival counter per direction. Those
// multi-block grids are launched cooperatively, so every block is resident; their waits are still bounded by a
// watchdog so a bug can never hang the device.
//
// Latency, not FLOPs, sets the speed at small batch: every per-step phase is a dependent instruction chain run
// by few warps (~5-6 cycles per instruction), so the per-step code is kept short: loops rolled, pair indexing
// hoisted out of the recurrence, x_proj copied a step ahead with cp.async (see bench/gpu/NOTES.md).
#ifndef FUSED_RNN_CUDA_FUSED_RNN_CUDA_KERNEL_CUH_
#define FUSED_RNN_CUDA_FUSED_RNN_CUDA_KERNEL_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fused_rnn_cuda_params.h"

namespace fused_rnn {
namespace cuda_impl {

template <int WK> struct RawOf { using T = uint32_t; };
template <> struct RawOf<kWeightF16> { using T = uint16_t; };
template <> struct RawOf<kWeightBF16> { using T = uint16_t; };
template <> struct RawOf<kWeightI8> { using T = uint8_t; };

// 32-bit words one thread holds per chunk (4 k-rows x G columns): float32 one word each, 16-bit two k-rows a word,
// int8 all four k-rows of a column in one word.
template <int WK, int G> __host__ __device__ constexpr int WordsPerChunk() {
  return WK == kWeightF32 ? 4 * G : (WK == kWeightI8 ? G : 2 * G);
}

// Threads per block the compiler must plan registers for: the weight registers plus a budget for the rest, rounded
// down to whole groups of 4 warps (ptxas sizes the register cap for a multiple of 128 threads).
template <int G, int WK, int KC_REG, int RC> __host__ __device__ constexpr int MaxThreadsFor() {
  return (65536 / (KC_REG * WordsPerChunk<WK, G>() + (RC == 1 ? 72 : 112))) / 128 * 128 > 1024
             ? 1024
             : ((65536 / (KC_REG * WordsPerChunk<WK, G>() + (RC == 1 ? 72 : 112))) / 128 * 128 < 128
                    ? 128
                    : (65536 / (KC_REG * WordsPerChunk<WK, G>() + (RC == 1 ? 72 : 112))) / 128 * 128);
}

constexpr long long kWatchdogPolls = 1ll << 24;

// ex2.approx-based activations: a few instructions instead of the libm paths (expf/tanhf), which sit on the
// per-step critical path. Error ~1e-7 absolute, well inside the float32 tolerance of the tests.
// (.ftz forms: the non-ftz ex2 adds a denormal-range fix-up of 3 instructions on the serial path.)
__device__ __forceinline__ float Exp2Ftz(float v) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(v));
  return y;
}
__device__ __forceinline__ float RcpFtz(float v) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(v));
  return y;
}
__device__ __forceinline__ float Sigmoid(float v) { return RcpFtz(1.f + Exp2Ftz(-1.4426950408889634f * v)); }
__device__ __forceinline__ float Tanh(float v) {
  return fmaf(2.f, RcpFtz(1.f + Exp2Ftz(-2.8853900817779268f * v)), -1.f);
}

// Clip to [-limit, limit] keeping NaN (fminf/fmaxf would turn NaN into a bound); limit <= 0 means no clip.
__device__ __forceinline__ float ClipKeepNaN(float v, float limit) {
  if (limit <= 0.f) return v;
  return v > limit ? limit : (v < -limit ? -limit : v);
}

__device__ __forceinline__ unsigned long long LoadRelaxed64(const unsigned long long* ptr) {
  unsigned long long v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ void StoreRelaxed64(unsigned long long* ptr, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(ptr), "l"(v) : "memory");
}
__device__ __forceinline__ void RedReleaseAdd(unsigned* ptr, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(ptr), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned LoadAcquire32(const unsigned* ptr) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ int LoadVolatile(const int* ptr) { return *reinterpret_cast<const volatile int*>(ptr); }

template <int WK, int G>
__device__ __forceinline__ void DecodeChunk(const uint32_t (&words)[WordsPerChunk<WK, G>()], float (&w)[4][G]) {
  if constexpr (WK == kWeightF32) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int g = 0; g < G; ++g) w[e][g] = __uint_as_float(words[e * G + g]);
  } else if constexpr (WK == kWeightI8) {
    // Byte e of the word holds q ^ 0x80 (stored so at load time). prmt builds the float bits 0x4B0000xx, i.e.
    // 2^23 + (q + 128), and one subtraction of 2^23 + 128 leaves q exactly: two instructions per weight, no I2F
    // (quarter rate). volatile for the same reason as the 16-bit path: hoisting would unpack into 4x the registers.
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const uint32_t v = words[g];
      asm volatile("{\n\t.reg .b32 t0, t1, t2, t3;\n\t"
                   "prmt.b32 t0, %4, 0x4B000000, 0x7440;\n\t"
                   "prmt.b32 t1, %4, 0x4B000000, 0x7441;\n\t"
                   "prmt.b32 t2, %4, 0x4B000000, 0x7442;\n\t"
                   "prmt.b32 t3, %4, 0x4B000000, 0x7443;\n\t"
                   "sub.f32 %0, t0, 0f4B000080;\n\t"
                   "sub.f32 %1, t1, 0f4B000080;\n\t"
                   "sub.f32 %2, t2, 0f4B000080;\n\t"
                   "sub.f32 %3, t3, 0f4B000080;\n\t}"
                   : "=f"(w[0][g]), "=f"(w[1][g]), "=f"(w[2][g]), "=f"(w[3][g])
                   : "r"(v));
    }
  } else {
#pragma unroll
    for (int ep = 0; ep < 2; ++ep)
#pragma unroll
      for (int g = 0; g < G; ++g) {
        // volatile asm: the conversion is loop-invariant across timesteps, and if the compiler hoists it out of
        // the step loop the unpacked float32 weights need twice the registers (spills). Converting per use is
        // cheap next to the FMAs.
        const uint32_t v = words[ep * G + g];
        if constexpr (WK == kWeightBF16) {
          asm volatile("shl.b32 %0, %2, 16;\n\tand.b32 %1, %2, 0xffff0000;"
                       : "=f"(w[2 * ep][g]), "=f"(w[2 * ep + 1][g])
                       : "r"(v));
        } else {
          asm volatile("{\n\t.reg .f16 lo, hi;\n\tmov.b32 {lo, hi}, %2;\n\tcvt.f32.f16 %0, lo;\n\t"
                       "cvt.f32.f16 %1, hi;\n\t}"
                       : "=f"(w[2 * ep][g]), "=f"(w[2 * ep + 1][g])
                       : "r"(v));
        }
      }
  }
}

// Where this thread sits in a DotMap.
struct DotSlot {
  bool in_map;  // the thread's warp takes part
  int col;      // column inside the block (may be >= cols for padding lanes: zero weights, result dropped)
  int kl;       // k-lane
  int kw;       // warp slot for the cross-warp sum
  int lanek;    // lane inside the ksl group (0 writes the result)
};

__device__ __forceinline__ DotSlot MakeSlot(const DotMap& m, int tid) {
  DotSlot s;
  const int warp = tid >> 5, lane = tid & 31;
  s.in_map = tid < m.threads_used;
  s.kw = warp % m.ksw;
  s.lanek = lane & (m.ksl - 1);
  s.col = (warp / m.ksw) * (32 / m.ksl) + lane / m.ksl;
  s.kl = s.kw * m.ksl + s.lanek;
  return s;
}

// This thread's words of chunk j; fetch(k, g) returns the raw element of row k < K, gate g, the thread's column
// (rows >= K and columns the thread does not own, col_ok false, read as zero).
template <int WK, int G, class Fetch>
__device__ __forceinline__ void GatherChunk(const Fetch& fetch, int j, const DotMap& m, const DotSlot& slot,
                                            bool col_ok, int K, uint32_t (&words)[WordsPerChunk<WK, G>()]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int k = 4 * (slot.kl + m.ks * j) + e;
    const bool ok = col_ok && k < K;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const uint32_t raw = ok ? static_cast<uint32_t>(fetch(k, g)) : 0u;
      if constexpr (WK == kWeightF32) {
        words[e * G + g] = raw;
      } else if constexpr (WK == kWeightI8) {
        // q ^ 0x80 (see DecodeChunk); out of range reads 0 -> 0x80, which decodes to 0.
        words[g] = (e == 0 ? 0u : words[g]) | ((raw ^ 0x80u) << (8 * e));
      } else if (e % 2 == 0) {
        words[(e / 2) * G + g] = raw;
      } else {
        words[(e / 2) * G + g] |= raw << 16;
      }
    }
  }
}

// Prologue: loads this thread's part of the block's slice of a [K, *] weight matrix (columns
// g * gate_stride + col0 + col): chunks < kc_reg into registers, the rest into the thread's own slots of the stream
// area (only this thread reads them back). Rows >= K and columns >= ncols_valid read as zero. Every thread of the
// block must call it (it has barriers when staging).
//
// With a staging area (stage_bytes > 0) the block first copies passes of whole chunks of the slice into shared
// memory, consecutive threads copying consecutive words, and each thread then picks its elements from there.
// Without one, each thread reads its own elements from global memory: lanes of a warp read different k-rows, so
// every 4-byte load is its own 32-byte sector (H=1024, B=1: 35 k cycles per block, where the staged copy needs a
// sector per 8 elements).
// kQuadSlots (the small kernel's wide cluster variant, WordsPerChunk % 4 == 0): streamed chunks go to 16-byte slots,
// [(j - kc_reg) * NW / 4 + quad][threads_used], read back with one 16-byte shared load per 4 words.
template <int WK, int G, int KCR, bool kQuadSlots = false>
__device__ __forceinline__ void LoadWeightChunks(const typename RawOf<WK>::T* __restrict__ src, long long row_stride,
                                                 int gate_stride, int col0, int ncols_valid, const DotMap& m, int K,
                                                 uint32_t (&wreg)[KCR][WordsPerChunk<WK, G>()], uint2* stream,
                                                 const DotSlot& slot, int tid, int nthreads, unsigned char* stage,
                                                 int stage_bytes) {
  using Raw = typename RawOf<WK>::T;
  constexpr int NW = WordsPerChunk<WK, G>();
  constexpr int NQ = NW / 2;
  const bool col_ok = slot.in_map && slot.col < ncols_valid;
  auto store_stream_of = [&](int owner, int j, const uint32_t(&words)[NW]) {  // owner: the thread that reads it
    const int js = j - m.kc_reg;
    if constexpr (kQuadSlots) {
      static_assert(NW % 4 == 0, "16-byte slots need whole quads of words");
      uint4* stream4 = reinterpret_cast<uint4*>(stream);
#pragma unroll
      for (int q = 0; q < NW / 4; ++q)
        stream4[((long long)js * (NW / 4) + q) * m.threads_used + owner] =
            make_uint4(words[4 * q], words[4 * q + 1], words[4 * q + 2], words[4 * q + 3]);
    } else if constexpr (WK == kWeightI8) {  // G words per chunk (odd for the GRU and the projection): 32-bit slots
      uint32_t* stream32 = reinterpret_cast<uint32_t*>(stream);
#pragma unroll
      for (int q = 0; q < NW; ++q) stream32[((long long)js * NW + q) * m.threads_used + owner] = words[q];
    } else {
#pragma unroll
      for (int q = 0; q < NQ; ++q)
        stream[((long long)js * NQ + q) * m.threads_used + owner] = make_uint2(words[2 * q], words[2 * q + 1]);
    }
  };
  auto store_stream = [&](int j, const uint32_t(&words)[NW]) { store_stream_of(tid, j, words); };

  const int cols = m.cols;
  const int row_bytes = StageRowBytes(static_cast<int>(sizeof(Raw)), G, cols);
  const int rows_per_chunk = 4 * m.ks;
  const int chunks_per_pass = stage_bytes > 0 ? stage_bytes / (row_bytes * rows_per_chunk) : 0;
  if constexpr (G == 1) {
    if (chunks_per_pass == 0 && m.kc_reg == 0) {
      // The projection's map puts the ksl lanes of a warp on one column, so a thread's own rows are 4 * ks apart
      // and each lane of a load hits its own 32-byte sector (ELMo layer: 32 sectors per load instruction, twice
      // the sector requests of the much larger phase-A slice). Every chunk is streamed here, so any thread may
      // write any slot: thread i takes (row quad i / cols, column i % cols), consecutive threads take consecutive
      // columns of the same rows (coalesced), and the words go to the slot of the thread that reads them.
      // Every slot of the map is written, the padding columns' (>= ncols_valid) with zeros, as each thread did.
      const int cpw = 32 / m.ksl;  // columns per warp
      const int cols_all = m.threads_used / (32 * m.ksw) * cpw;
      const int total = m.kc * m.ks * cols_all;
      for (int i = tid; i < total; i += nthreads) {
        const int rq = i / cols_all, c = i - rq * cols_all;
        const int j = rq / m.ks, kl = rq - j * m.ks;
        DotSlot o;
        o.in_map = true;
        o.col = c;
        o.kl = kl;
        o.kw = kl / m.ksl;
        o.lanek = kl & (m.ksl - 1);
        const int owner = ((c / cpw) * m.ksw + o.kw) * 32 + (c % cpw) * m.ksl + o.lanek;
        auto fetch_c = [&](int k, int g) -> Raw {
          return __ldg(src + (long long)k * row_stride + (long long)g * gate_stride + col0 + c);
        };
        uint32_t words[NW];
        GatherChunk<WK, G>(fetch_c, j, m, o, c < ncols_valid, K, words);
        store_stream_of(owner, j, words);
      }
      return;
    }
  }
  if (chunks_per_pass == 0) {
    if (!slot.in_map) return;
    auto fetch = [&](int k, int g) -> Raw {
      return __ldg(src + (long long)k * row_stride + (long long)g * gate_stride + col0 + slot.col);
    };
#pragma unroll
    for (int j = 0; j < KCR; ++j)
      if (j < m.kc_reg) GatherChunk<WK, G>(fetch, j, m, slot, col_ok, K, wreg[j]);
    if constexpr (kQuadSlots) {
      // All of the (up to kSmallWideTail) shared-memory chunks' loads in flight at once, not two at a time.
#pragma unroll
      for (int jt = 0; jt < kSmallWideTail; ++jt) {
        const int j = m.kc_reg + jt;
        if (j < m.kc) {
          uint32_t words[NW];
          GatherChunk<WK, G>(fetch, j, m, slot, col_ok, K, words);
          store_stream(j, words);
        }
      }
      return;
    }
#pragma unroll 2
    for (int j = m.kc_reg; j < m.kc; ++j) {
      uint32_t words[NW];
      GatherChunk<WK, G>(fetch, j, m, slot, col_ok, K, words);
      store_stream(j, words);
    }
    return;
  }

  // Each (k-row, gate) segment of the slice is copied as whole aligned 32-bit words with cp.async: as many copies
  // in flight as the hardware takes, no registers held (a register round trip with a few loads in flight per
  // thread was latency-bound: H=1024 B=1 24 k cycles). A segment's first element sits `lead` elements into its
  // first word.
  constexpr int kElem = static_cast<int>(sizeof(Raw));
  constexpr int kPerWord = 4 / kElem;
  const int seg_words = StageSegWords(kElem, cols);
  const int row_words = G * seg_words;
  const uintptr_t src_addr = reinterpret_cast<uintptr_t>(src);
  // Byte address of the first element of row k, gate g (then floored to its word).
  auto seg_addr = [&](int k, int g) -> uintptr_t {
    return src_addr + static_cast<uintptr_t>(((long long)k * row_stride + (long long)g * gate_stride + col0) * kElem);
  };
  // Walk of the copy: word i = (k, g, w) of [rows][G][seg_words], i = tid, tid + nthreads, ... tracked by carries
  // (no divisions in the loop).
  const int dk = nthreads / row_words, dr = nthreads - dk * row_words, dg = dr / seg_words,
            dw = dr - dg * seg_words;
  for (int j0 = 0; j0 < m.kc; j0 += chunks_per_pass) {
    const int nj = min(chunks_per_pass, m.kc - j0);
    const int k0 = j0 * rows_per_chunk;
    const int nk = min(nj * rows_per_chunk, K - k0);  // rows past K are never read back
    const int quarter = m.ks * nj;
    __syncthreads();  // the previous pass has been read (and, on the first, len_s is complete)
    int k = tid / row_words;
    int g = (tid - k * row_words) / seg_words;
    int w = tid - k * row_words - g * seg_words;
    const unsigned stage_base = static_cast<unsigned>(__cvta_generic_to_shared(stage));
#pragma unroll 4
    for (; k < nk;) {
      const uintptr_t a = seg_addr(k0 + k, g);
      const int lead = kPerWord > 1 ? static_cast<int>(a & 3) / kElem : 0;
      // Words holding elements [0, ncols_valid) of the segment; the rest of the window is never read back.
      const int nwords = ncols_valid > 0 ? (lead + ncols_valid + kPerWord - 1) / kPerWord : 0;
      if (w < nwords) {
        const uintptr_t word = (a & ~uintptr_t(3)) + 4 * w;
        const unsigned dst = stage_base + StageSlot(k, quarter) * row_bytes + (g * seg_words + w) * 4;
#if __CUDA_ARCH__ >= 800
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(word) : "memory");
#else
        const uint32_t v = __ldg(reinterpret_cast<const uint32_t*>(word));
        asm volatile("st.shared.u32 [%0], %1;" ::"r"(dst), "r"(v) : "memory");
#endif
      }
      w += dw;
      g += dg;
      k += dk;
      if (w >= seg_words) {
        w -= seg_words;
        ++g;
      }
      if (g >= G) {
        g -= G;
        ++k;
      }
    }
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
    __syncthreads();
    if (slot.in_map) {
      auto fetch = [&](int kk, int gg) -> Raw {
        const int lead = kPerWord > 1 ? static_cast<int>(seg_addr(kk, gg) & 3) / kElem : 0;
        return *reinterpret_cast<const Raw*>(stage + StageSlot(kk - k0, quarter) * row_bytes + gg * seg_words * 4 +
                                             (lead + slot.col) * kElem);
      };
#pragma unroll
      for (int j = 0; j < KCR; ++j)
        if (j >= j0 && j < j0 + nj && j < m.kc_reg) GatherChunk<WK, G>(fetch, j, m, slot, col_ok, K, wreg[j]);
      for (int j = max(j0, m.kc_reg); j < j0 + nj; ++j) {
        uint32_t words[NW];
        GatherChunk<WK, G>(fetch, j, m, slot, col_ok, K, words);
        store_stream(j, words);
      }
    }
  }
  __syncthreads();  // the staging area may overlap what the prologue writes next
}

// z partial sums for rows [0, nrows) of the h tile (row stride m.kpad floats, rows padded to a multiple of RC):
// zpart[((kw * z_rows + z_row0 + r) * G + g) * m.cols + col]. With one row per pass, even and odd chunks go to
// separate accumulators so the dependent FMA chains are half as long.
template <int G, int WK, int RC>
__device__ __forceinline__ void FmaChunk(const float (&w)[4][G], const float4* h4, int kpad4, int r0, int hidx,
                                         float (&acc)[RC][G], const float4* inv_scale4) {
  float4 sv;
  if constexpr (WK == kWeightI8) sv = inv_scale4[hidx];  // int8: h[k] / scale[k] times q[k][j]
#pragma unroll
  for (int r = 0; r < RC; ++r) {
    float4 hv = h4[(r0 + r) * kpad4 + hidx];
    if constexpr (WK == kWeightI8) {
      hv.x *= sv.x;
      hv.y *= sv.y;
      hv.z *= sv.z;
      hv.w *= sv.w;
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      acc[r][g] = fmaf(w[0][g], hv.x, acc[r][g]);
      acc[r][g] = fmaf(w[1][g], hv.y, acc[r][g]);
      acc[r][g] = fmaf(w[2][g], hv.z, acc[r][g]);
      acc[r][g] = fmaf(w[3][g], hv.w, acc[r][g]);
    }
  }
}

template <int WK, int G>
__device__ __forceinline__ void LoadStreamChunk(const uint2* stream, int js, int stride, int tid, float (&w)[4][G]) {
  constexpr int NW = WordsPerChunk<WK, G>();
  constexpr int NQ = NW / 2;
  uint32_t words[NW];
  if constexpr (WK == kWeightI8) {
    const uint32_t* stream32 = reinterpret_cast<const uint32_t*>(stream);
#pragma unroll
    for (int q = 0; q < NW; ++q) words[q] = stream32[((long long)js * NW + q) * stride + tid];
  } else {
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      const uint2 v = stream[((long long)js * NQ + q) * stride + tid];
      words[2 * q] = v.x;
      words[2 * q + 1] = v.y;
    }
  }
  DecodeChunk<WK, G>(words, w);
}

template <int G, int WK, int KC_REG, int RC, int KCR>
__device__ __forceinline__ void DotRows(const uint32_t (&wreg)[KCR][WordsPerChunk<WK, G>()], const uint2* stream,
                                        const DotMap& m, const float* h_tile, int nrows, float* zpart, int z_row0,
                                        int z_rows, const DotSlot& slot, int tid, const float* inv_scale) {
  const float4* s4 = reinterpret_cast<const float4*>(inv_scale);
  constexpr int NA = RC == 1 ? 2 : 1;
  const int kpad4 = m.kpad >> 2;
  const float4* h4 = reinterpret_cast<const float4*>(h_tile);
  const int kc_reg = m.kc_reg;
  const int kc_stream = m.kc - kc_reg;
  const int stride = m.threads_used;
#pragma unroll 1
  for (int r0 = 0; r0 < nrows; r0 += RC) {
    float acc[NA][RC][G];
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int r = 0; r < RC; ++r)
#pragma unroll
        for (int g = 0; g < G; ++g) acc[a][r][g] = 0.f;
    if (kc_reg == KC_REG) {  // the usual case: no per-chunk branch, so loads can be hoisted across chunks
#pragma unroll
      for (int j = 0; j < KC_REG; ++j) {
        float w[4][G];
        DecodeChunk<WK, G>(wreg[j], w);
        FmaChunk<G, WK, RC>(w, h4, kpad4, r0, slot.kl + m.ks * j, acc[j % NA], s4);
      }
    } else {
#pragma unroll
      for (int j = 0; j < KC_REG; ++j) {
        if (j < kc_reg) {
          float w[4][G];
          DecodeChunk<WK, G>(wreg[j], w);
          FmaChunk<G, WK, RC>(w, h4, kpad4, r0, slot.kl + m.ks * j, acc[j % NA], s4);
        }
      }
    }
    int js = 0;
#pragma unroll 1
    for (; js + NA <= kc_stream; js += NA) {
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        float w[4][G];
        LoadStreamChunk<WK, G>(stream, js + a, stride, tid, w);
        FmaChunk<G, WK, RC>(w, h4, kpad4, r0, slot.kl + m.ks * (kc_reg + js + a), acc[a], s4);
      }
    }
    if (js < kc_stream) {
      float w[4][G];
      LoadStreamChunk<WK, G>(stream, js, stride, tid, w);
      FmaChunk<G, WK, RC>(w, h4, kpad4, r0, slot.kl + m.ks * (kc_reg + js), acc[0], s4);
    }
#pragma unroll
    for (int a = 1; a < NA; ++a)
#pragma unroll
      for (int r = 0; r < RC; ++r)
#pragma unroll
        for (int g = 0; g < G; ++g) acc[0][r][g] += acc[a][r][g];
    if constexpr (RC == 1 && G >= 3) {
      if (m.ksl >= 4) {
        // One row, the 3-4 gates of a column summed over its ksl lanes by reduce-scatter: the first level halves
        // the values each lane carries (each half of the group keeps two gates and receives the partner's copy
        // of them), the second halves them again, the rest is a plain butterfly on one value. 2 + 1 + log2(ksl) - 2
        // shuffles instead of G * log2(ksl) on this serial path (20 -> 6 at ksl = 32); lane k = q * ksl / 4 of
        // the group ends with gate q.
        const float full_acc[4] = {acc[0][0][0], acc[0][0][1], acc[0][0][2], G > 3 ? acc[0][0][G - 1] : 0.f};
        const int half = m.ksl >> 1, quarter = m.ksl >> 2;
        const bool hi = (slot.lanek & half) != 0, hi2 = (slot.lanek & quarter) != 0;
        float keep0 = hi ? full_acc[2] : full_acc[0], keep1 = hi ? full_acc[3] : full_acc[1];
        const float send0 = hi ? full_acc[0] : full_acc[2], send1 = hi ? full_acc[1] : full_acc[3];
        keep0 += __shfl_xor_sync(0xffffffffu, send0, half);
        keep1 += __shfl_xor_sync(0xffffffffu, send1, half);
        float v = hi2 ? keep1 : keep0;
        v += __shfl_xor_sync(0xffffffffu, hi2 ? keep0 : keep1, quarter);
#pragma unroll
        for (int off = 4; off > 0; off >>= 1) {
          if (off < quarter) v += __shfl_xor_sync(0xffffffffu, v, off);
        }
        const int g = (hi ? 2 : 0) + (hi2 ? 1 : 0);
        if ((slot.lanek & (quarter - 1)) == 0 && g < G && slot.col < m.cols && r0 < nrows)
          zpart[((slot.kw * z_rows + z_row0 + r0) * G + g) * m.cols + slot.col] = v;
        continue;
      }
    }
    // The butterfly over the ksl lanes of a column (a power of two, at most 32), unrolled: a runtime-bounded loop
    // cost a divergence check and loop control per level on this serial path.
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      if (off < m.ksl) {
#pragma unroll
        for (int r = 0; r < RC; ++r)
#pragma unroll
          for (int g = 0; g < G; ++g) acc[0][r][g] += __shfl_xor_sync(0xffffffffu, acc[0][r][g], off);
      }
    }
    if (slot.lanek == 0 && slot.col < m.cols) {
#pragma unroll
      for (int r = 0; r < RC; ++r)
        if (r0 + r < nrows)
#pragma unroll
          for (int g = 0; g < G; ++g)
            zpart[((slot.kw * z_rows + z_row0 + r0 + r) * G + g) * m.cols + slot.col] = acc[0][r][g];
    }
  }
}

// Raises the watchdog; returns true when the caller should stop waiting.
__device__ __forceinline__ bool WatchdogTick(long long& polls, int* watchdog) {
  ++polls;
  if ((polls & 255) != 0) return false;
  if (polls > kWatchdogPolls) {
    atomicExch(watchdog, 1);
    return true;
  }
  return LoadVolatile(watchdog) != 0;
}

// After a device-side wait timed out the outputs cannot be trusted, and a caller such as a TensorFlow kernel has no
// cheap way to read the watchdog word before handing the tensors on. So every block that ends after the word was
// raised overwrites all outputs (sequence output, final states, training reserve) with NaN: the failure shows in
// the values instead of as plausible garbage. The block whose wait timed out raised the word before it ends, so at
// least that block poisons everything after every earlier block's last write (fences on both sides). Called by
// every thread at the very end of the kernels that wait (tagged, counter and tensor-core plans); never taken in a
// healthy run, where it costs one fence and a block-wide vote.
__device__ __forceinline__ void PoisonIfWatchdogFired(const KernelParams& p) {
  if (p.watchdog == nullptr) return;
  __threadfence();
  if (!__syncthreads_or(threadIdx.x == 0 && LoadVolatile(p.watchdog) != 0)) return;
  __threadfence();
  const float nan = __int_as_float(0x7fc00000);
  const long long r = p.R > 0 ? p.R : p.H;
  const long long n_out = (long long)p.B * p.T * p.D * r;
  for (long long i = threadIdx.x; i < n_out; i += blockDim.x) p.out[i] = nan;
  for (long long i = threadIdx.x; i < (long long)p.D * p.B * r; i += blockDim.x)
    if (p.final_h) p.final_h[i] = nan;
  for (long long i = threadIdx.x; i < (long long)p.D * p.B * p.H; i += blockDim.x)
    if (p.final_c) p.final_c[i] = nan;
  const long long n_res = (long long)p.D * p.B * p.T * p.reserve_f;
  for (long long i = threadIdx.x; i < n_res; i += blockDim.x)
    if (p.reserve) p.reserve[i] = nan;
}

__device__ __forceinline__ void LoadRelaxed128(const unsigned long long* ptr, unsigned long long& a,
                                               unsigned long long& b) {
  asm volatile("ld.relaxed.gpu.global.v2.u64 {%0, %1}, [%2];" : "=l"(a), "=l"(b) : "l"(ptr) : "memory");
}

// Waits for rows [0, nrows) x [0, width) of tagged words (rows of `src_stride` words, 16-byte aligned) to carry
// `tag`, and hands each 16-byte pair to consume(locate(row, column), row, holds_two, low_word, high_word). The
// (row, column) of each load, and its destination, are worked out once, before the first load, with one unsigned division and none for a single row
// (B = 1): the poll loop only reads them back. Per-poll signed divisions were most of this phase's instructions
// (ncu, session 10: 362 instructions per warp and step for one 4 KB row at H = 1024, against about 60 after).
// Every thread keeps kBatch pairs in flight and polls them together: it re-issues every load that is not ready
// before checking any of them again, so each wait costs one round trip for the batch (re-polling one word at a
// time costs one round trip per word, since the other words' first reads are stale by then). A row's last pair may
// hold one value: a pair of padding alone (width % 4 of 1 or 2) is never published.
template <typename Locate, typename Consume>
__device__ __forceinline__ void PollTaggedPairs(const unsigned long long* tagged_rows, unsigned tag, int nrows,
                                                int width, int src_stride, int tid, int nthreads, int* watchdog,
                                                Locate locate, Consume consume) {
  constexpr int kBatch = 4;
  const unsigned per_row = static_cast<unsigned>(width + 1) / 2u;
  const unsigned total = static_cast<unsigned>(nrows) * per_row;
#pragma unroll 1
  for (unsigned i0 = tid; i0 < total; i0 += kBatch * nthreads) {
    unsigned long long v[kBatch][2] = {};
    decltype(locate(0u, 0)) where[kBatch];  // the consumer's destination, worked out before the first load
    unsigned src_off[kBatch], row[kBatch];
    bool live[kBatch], two[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const unsigned i = i0 + q * nthreads;
      live[q] = i < total;
      const unsigned r = nrows == 1 ? 0u : i / per_row;
      const int k = 2 * static_cast<int>(i - r * per_row);
      two[q] = k + 1 < width;
      row[q] = r;
      where[q] = locate(r, k);
      src_off[q] = r * static_cast<unsigned>(src_stride) + static_cast<unsigned>(k);
      if (live[q]) LoadRelaxed128(tagged_rows + src_off[q], v[q][0], v[q][1]);
    }
    long long polls = 0;
    while (true) {
      bool waiting = false;
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const bool ready = static_cast<unsigned>(v[q][0] >> 32) == tag &&
                           (!two[q] || static_cast<unsigned>(v[q][1] >> 32) == tag);
        if (live[q] && !ready) {
          waiting = true;
          LoadRelaxed128(tagged_rows + src_off[q], v[q][0], v[q][1]);
        }
      }
      if (!waiting || WatchdogTick(polls, watchdog)) break;
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      if (live[q]) consume(where[q], row[q], two[q], static_cast<uint32_t>(v[q][0]), static_cast<uint32_t>(v[q][1]));
    }
  }
}

// Phase B's reduce-scatter: waits for one column of tagged partial sums (`count` words `stride` apart from `src`,
// valid once a word's upper half equals tag's) and returns their sum in every lane of the warp. Lane l adds words
// l, l + 32, ...; four loads in flight per lane, polled together as in PollTaggedPairs.
__device__ __forceinline__ float WarpSumTaggedColumn(const unsigned long long* src, int count, long long stride,
                                                     unsigned long long tag, int lane, int* watchdog) {
  float sum = 0.f;
#pragma unroll 1
  for (int b0 = lane; b0 < count; b0 += 4 * 32) {
    unsigned long long v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = b0 + 32 * e < count ? LoadRelaxed64(src + (b0 + 32 * e) * stride) : tag;
    long long polls = 0;
    while (true) {
      bool waiting = false;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if ((v[e] >> 32) != (tag >> 32)) {
          waiting = true;
          v[e] = LoadRelaxed64(src + (b0 + 32 * e) * stride);
        }
      }
      if (!waiting || WatchdogTick(polls, watchdog)) break;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (b0 + 32 * e < count) sum += __uint_as_float(static_cast<unsigned>(v[e]));
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  return sum;
}

// Copies rows [0, nrows) x [0, width) into the shared tile (row stride dst_stride) from
//   source 0: the initial state h0 (rows of `width` floats, or zeros when null);
//   source 1: tagged words (rows of `src_stride` words, 16-byte aligned) once each carries `tag`;
//   source 2: plain floats (rows of `src_stride`, 16-byte aligned) after a barrier, read at L2 (other SMs wrote them).
// Every thread keeps several 16-byte loads in flight: the exchange is latency-bound, not bandwidth-bound.
__device__ __forceinline__ void FetchRows(float* dst, int dst_stride, const float* h0_rows,
                                          const unsigned long long* tagged_rows, const float* plain_rows, int source,
                                          unsigned tag, int nrows, int width, int src_stride, int tid, int nthreads,
                                          int* watchdog) {
  constexpr int kBatch = 4;  // vector loads in flight per thread
  if (source == 0) {
    const int total = nrows * width;
#pragma unroll 1
    for (int i0 = tid; i0 < total; i0 += kBatch * nthreads) {
      float v[kBatch];
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const int i = i0 + q * nthreads;
        v[q] = (h0_rows && i < total) ? __ldg(h0_rows + i) : 0.f;
      }
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const int i = i0 + q * nthreads;
        if (i < total) {
          const int r = i / width;
          dst[r * dst_stride + i - r * width] = v[q];
        }
      }
    }
  } else if (source == 2) {
    const int per_row = src_stride / 4;  // float4 per row
    const int total = nrows * per_row;
    const float4* src4 = reinterpret_cast<const float4*>(plain_rows);
#if __CUDA_ARCH__ >= 800
    // Asynchronous 16-byte copies at L2 (.cg): as many in flight as the hardware takes, no registers held. The
    // row padding of the exchange buffer is zero (memset before the launch), as the tile padding must be.
#pragma unroll 1
    for (int i = tid; i < total; i += nthreads) {
      const int r = i / per_row, k = 4 * (i - r * per_row);
      const unsigned dst_addr = static_cast<unsigned>(__cvta_generic_to_shared(dst + r * dst_stride + k));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst_addr), "l"(src4 + i) : "memory");
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
#else
#pragma unroll 1
    for (int i0 = tid; i0 < total; i0 += kBatch * nthreads) {
      float4 v[kBatch];
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const int i = i0 + q * nthreads;
        if (i < total) v[q] = __ldcg(src4 + i);
      }
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const int i = i0 + q * nthreads;
        if (i < total) {
          const int r = i / per_row, k = 4 * (i - r * per_row);
          float* o = dst + r * dst_stride + k;
          // dst rows are padded to a multiple of 4 floats (kpad) and the padding must stay zero.
          o[0] = v[q].x;
          if (k + 1 < width) o[1] = v[q].y;
          if (k + 2 < width) o[2] = v[q].z;
          if (k + 3 < width) o[3] = v[q].w;
        }
      }
    }
#endif
  } else {
    PollTaggedPairs(
        tagged_rows, tag, nrows, width, src_stride, tid, nthreads, watchdog,
        [&](unsigned r, int k) { return dst + r * dst_stride + k; },
        [&](float* o, unsigned, bool two, uint32_t lo, uint32_t hi) {
          o[0] = __uint_as_float(lo);
          if (two) o[1] = __uint_as_float(hi);
        });
  }
}

// Thread-block clusters (sm_90): the blocks of one direction write each new h value straight into every
// cluster member's shared h tile (distributed shared memory) and meet at the hardware cluster barrier.
__device__ __forceinline__ void ClusterSync() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void StoreToClusterRanks(float* local_addr, int ranks, float v) {
#if __CUDA_ARCH__ >= 900
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(local_addr));
#pragma unroll 1
  for (int rank = 0; rank < ranks; ++rank) {
    unsigned ra;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(ra), "f"(v) : "memory");
  }
#else
  *local_addr = v;
#endif
}

__device__ __forceinline__ void GroupBarrier(unsigned* counter, unsigned target, int* watchdog) {
  __syncthreads();
  if (threadIdx.x == 0) {
    RedReleaseAdd(counter, 1u);
    long long polls = 0;
    while (LoadAcquire32(counter) < target) {
      if (WatchdogTick(polls, watchdog)) break;
    }
  }
  __syncthreads();
}

// GroupBarrier with work in the middle: the block arrives, runs between() (work that neither publishes what the
// barrier orders nor reads it: issuing the next step's input copies), then waits, so between() is off the critical
// path of the slowest block's arrival.
template <typename F>
__device__ __forceinline__ void GroupBarrierAround(unsigned* counter, unsigned target, int* watchdog, F&& between) {
  __syncthreads();
  if (threadIdx.x == 0) RedReleaseAdd(counter, 1u);
  between();
  if (threadIdx.x == 0) {
    long long polls = 0;
    while (LoadAcquire32(counter) < target) {
      if (WatchdogTick(polls, watchdog)) break;
    }
  }
  __syncthreads();
}

// One LSTM cell update (gates i, f, g, o from x_proj + the recurrent products z). Updates *c (clipped, NaN kept)
// and returns the new h (m with a projection); rs, when not null, receives the training reserve record (i, f, g, o
// and c before the clip, H floats apart). Shared by both persistent kernels.
// kScaled: the products come with a power-of-two scale per gate (zs; the tensor-core kernel's TF32-through-float16
// columns), folded into the add as an FMA: fmaf(z, s, x) rounds once, like x + z * s with z * s exact, and equals
// x + z for s = 1.
template <bool kScaled = false>
__device__ __forceinline__ float LstmCellUpdate(const float (&x)[4], const float (&z)[4], float* c, float clip,
                                                float* rs, int H, const float* zs = nullptr) {
  auto pre = [&](int g) { return kScaled ? fmaf(z[g], zs[g], x[g]) : x[g] + z[g]; };
  const float ig = Sigmoid(pre(0));
  const float fg = Sigmoid(pre(1));
  const float gg = Tanh(pre(2));
  const float og = Sigmoid(pre(3));
  const float c_raw = fg * *c + ig * gg;
  const float cc = ClipKeepNaN(c_raw, clip);
  *c = cc;
  if (rs) {
    rs[0] = ig;
    rs[H] = fg;
    rs[2 * H] = gg;
    rs[3 * H] = og;
    rs[4 * H] = c_raw;
  }
  return og * Tanh(cc);
}

// One GRU cell update (gates z, r, n; the reset gate applied after the recurrent product, with the recurrent bias
// row rb_d, null for none). Returns the new h; rs as above (z, r, n and the n-gate recurrent term).
// (kScaled and zs as for LstmCellUpdate: the scale folded into the add of the recurrent bias.)
template <bool kScaled = false>
__device__ __forceinline__ float GruCellUpdate(const float (&x)[3], const float (&z)[3], const float* rb_d, float h_prev,
                                               float* rs, int H, const float* zs = nullptr) {
  auto rec = [&](int g) {
    const float b = rb_d ? __ldg(rb_d + g * H) : 0.f;
    return kScaled ? fmaf(z[g], zs[g], b) : z[g] + b;
  };
  const float az = rec(0);
  const float ar = rec(1);
  const float an = rec(2);
  const float zg = Sigmoid(x[0] + az);
  const float rg = Sigmoid(x[1] + ar);
  const float ng = Tanh(x[2] + rg * an);
  if (rs) {
    rs[0] = zg;
    rs[H] = rg;
    rs[2 * H] = ng;
    rs[3 * H] = an;
  }
  return zg * h_prev + (1.f - zg) * ng;
}
// The same with the recurrent bias of the unit's three gates already in registers (0 for none): the same arithmetic
// (z + 0.f where GruCellUpdate adds 0.f for a null rb_d), without a per-step pointer and load on the serial path.
__device__ __forceinline__ float GruCellUpdateRb(const float (&x)[3], const float (&z)[3], const float (&rb)[3],
                                                 float h_prev, float* rs, int H) {
  const float az = z[0] + rb[0];
  const float ar = z[1] + rb[1];
  const float an = z[2] + rb[2];
  const float zg = Sigmoid(x[0] + az);
  const float rg = Sigmoid(x[1] + ar);
  const float ng = Tanh(x[2] + rg * an);
  if (rs) {
    rs[0] = zg;
    rs[H] = rg;
    rs[2 * H] = ng;
    rs[3 * H] = an;
  }
  return zg * h_prev + (1.f - zg) * ng;
}

// Makes the compiler keep *obj in (local) memory: its address escapes, so the accesses stay loads and stores.
template <typename Obj>
__device__ __forceinline__ void PinToMemory(Obj* obj) {
  asm volatile("" ::"l"(obj) : "memory");
}

// Waits for this thread's outstanding cp.async copies (the x_proj prefetch); the barrier after it publishes them to
// the block.
__device__ __forceinline__ void WaitXProj() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// Test-only: the globaltimer (ns) into *slot.
__device__ __forceinline__ void StampGlobalTimer(long long* slot) {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  *slot = static_cast<long long>(t);
}

// The lengths of rows [row0, row0 + nrows) (clamped to [0, T]; all T when there are none) into len_s[0..nrows), and
// their maximum into len_s[rb]. Ends with the block's threads in step (len_s[rb] is complete after a barrier).
__device__ __forceinline__ void LoadLengths(const KernelParams& p, int* len_s, int row0, int nrows, int tid,
                                            int nthreads) {
  if (tid == 0) len_s[p.rb] = 0;
  __syncthreads();
  for (int r = tid; r < nrows; r += nthreads) {
    int len = p.lengths ? p.lengths[row0 + r] : p.T;
    len = min(max(len, 0), p.T);
    len_s[r] = len;
    atomicMax(&len_s[p.rb], len);
  }
}

// RS = 1: phase B as a reduce-scatter (KernelParams::proj_rs), compiled as separate kernels so that its code does
// not move the register allocation of the others (the first version, one kernel for both, ran LSTM H=1024 B=1
// float32 20% slower and the 16-bit H=512-1024 plans 1-2% slower).
template <int CELL, int WK, int KC_REG, int RC, int RS>
__global__ void __launch_bounds__(MaxThreadsFor<(CELL == 0 ? 4 : 3), WK, KC_REG, RC>(), 1)
    RnnPersistentKernel(const KernelParams p) {
  constexpr int G = CELL == 0 ? 4 : 3;
  constexpr bool kLstm = CELL == 0;
  constexpr int NW = WordsPerChunk<WK, G>();
  constexpr int KCR = KC_REG > 0 ? KC_REG : 1;
  using Raw = typename RawOf<WK>::T;
  extern __shared__ __align__(16) unsigned char smem[];

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int blocks_per_dir = p.nbr * p.nbu;
  const int d = blockIdx.x / blocks_per_dir;
  const int rem = blockIdx.x - d * blocks_per_dir;
  const int rg = rem / p.nbu, ub = rem - rg * p.nbu;
  const int row0 = rg * p.rb;
  const int nrows = min(p.rb, p.B - row0);
  const int H = p.H, R = p.R, P = p.P, B = p.B, T = p.T, D = p.D;
  const int u0 = ub * p.upb;
  const int ucount = min(p.upb, H - u0);
  const int pc0 = ub * p.ppb;
  const int pcount = P > 0 ? max(0, min(p.ppb, P - pc0)) : 0;
  const bool reverse = (p.reverse_mask >> d) & 1;
  const int mode = p.exchange;
  const bool local = mode == kExchangeLocal;
  const bool cluster = mode == kExchangeCluster;
  const bool smem_h = local || cluster;  // the whole h (and m) tile lives in shared memory, double-buffered
  // Phase B as a reduce-scatter (multi-block, projection): m stays in this block (m_s holds its own units), the
  // block publishes partial sums of m_own @ P[u0 + .., :] and reduces the columns it owns (see KernelParams).
  // Not for float32 weights: measured slower there (the ELMo layer's projection streams from global memory: +6.5%).
  constexpr bool kRsCompiled = RS != 0 && kLstm && WK != kWeightF32;
  const bool proj_rs = kRsCompiled && P > 0;
  const int own_cols = P > 0 ? p.ppb : p.upb;  // row stride of hown_s
  const int own0 = P > 0 ? pc0 : u0;
  const int own_count = P > 0 ? pcount : ucount;
  const long long xcols = (long long)D * G * H;  // x_proj row width
  const long long ocols = (long long)D * R;      // output row width
  auto row_index = [&](int b, int t) -> long long {
    return p.time_major ? (long long)t * B + b : (long long)b * T + t;
  };

  float* h_s = reinterpret_cast<float*>(smem + p.off_h);
  float* m_s = reinterpret_cast<float*>(smem + p.off_m);
  float* z_s = reinterpret_cast<float*>(smem + p.off_z);
  float* c_s = reinterpret_cast<float*>(smem + p.off_c);
  float* hown_s = reinterpret_cast<float*>(smem + p.off_hown);
  int* len_s = reinterpret_cast<int*>(smem + p.off_len);  // [rb] lengths, then the group's max length
  float* xs_s = reinterpret_cast<float*>(smem + p.off_x);  // [2][rb * upb][G] x_proj of the next steps
  // Streamed weight chunks: shared memory or this block's part of the workspace. The two are kept as separate
  // pointers (and separate inlined dot loops below) so the shared case compiles to LDS rather than generic loads.
  uint2* stream_a_smem = reinterpret_cast<uint2*>(smem + p.off_stream_a);
  uint2* stream_b_smem = reinterpret_cast<uint2*>(smem + p.off_stream_b);
  uint2* stream_a_glob = static_cast<uint2*>(p.ws_stream_a) + (long long)blockIdx.x * p.ws_stream_a_words;
  uint2* stream_b_glob = static_cast<uint2*>(p.ws_stream_b) + (long long)blockIdx.x * p.ws_stream_b_words;
  uint2* stream_a = p.a.stream_global ? stream_a_glob : stream_a_smem;
  float* scale_a_s = reinterpret_cast<float*>(smem + p.off_scale_a);  // int8 only
  float* scale_b_s = reinterpret_cast<float*>(smem + p.off_scale_b);
  uint2* stream_b = p.b.stream_global ? stream_b_glob : stream_b_smem;


  const bool stamping = p.debug_clock != nullptr && blockIdx.x == 0 && tid == 0;
  auto stamp = [&](int slot) {
    if (stamping) p.debug_clock[slot] = clock64();
  };
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 2);
  stamp(0);

  // ---- prologue ------------------------------------------------------------------------------------------------
  LoadLengths(p, len_s, row0, nrows, tid, nthreads);

  const DotSlot sa = MakeSlot(p.a, tid);
  const DotSlot sb = MakeSlot(p.b, tid);
  uint32_t wreg[KCR][NW];
#pragma unroll
  for (int j = 0; j < KCR; ++j)
#pragma unroll
    for (int q = 0; q < NW; ++q) wreg[j][q] = WK == kWeightI8 ? 0x80808080u : 0u;  // int8: bytes q ^ 0x80
  LoadWeightChunks<WK, G, KCR>(static_cast<const Raw*>(p.w_rec) + (long long)d * R * G * H, (long long)G * H, H, u0,
                               ucount, p.a, R, wreg, stream_a, sa, tid, nthreads, smem + p.off_stage, p.stage_bytes);
  uint32_t wreg_b_unused[1][WordsPerChunk<WK, 1>()];
  auto dot_a = [&](const float* h_tile, int nr, int z_row0) {
    if (p.a.stream_global)
      DotRows<G, WK, KC_REG, RC, KCR>(wreg, stream_a_glob, p.a, h_tile, nr, z_s, z_row0, p.rb, sa, tid, scale_a_s);
    else
      DotRows<G, WK, KC_REG, RC, KCR>(wreg, stream_a_smem, p.a, h_tile, nr, z_s, z_row0, p.rb, sa, tid, scale_a_s);
  };
  auto dot_b = [&](const float* m_tile, int nr, int z_row0) {
    if (p.b.stream_global)
      DotRows<1, WK, 0, RC, 1>(wreg_b_unused, stream_b_glob, p.b, m_tile, nr, z_s, z_row0, p.rb, sb, tid, scale_b_s);
    else
      DotRows<1, WK, 0, RC, 1>(wreg_b_unused, stream_b_smem, p.b, m_tile, nr, z_s, z_row0, p.rb, sb, tid, scale_b_s);
  };
  // Reduce-scatter phase B: P[u0 + k, g * b.cols + col] for the block's own units k < ucount, the P columns as two
  // "gates" of b.cols (consecutive lanes read consecutive columns: coalesced without staging).
  uint32_t wreg_b2_unused[1][WordsPerChunk<WK, 2>()];
  auto dot_b2 = [&](const float* m_tile, int nr) {
    if (p.b.stream_global)
      DotRows<2, WK, 0, RC, 1>(wreg_b2_unused, stream_b_glob, p.b, m_tile, nr, z_s, 0, p.rb, sb, tid, scale_b_s);
    else
      DotRows<2, WK, 0, RC, 1>(wreg_b2_unused, stream_b_smem, p.b, m_tile, nr, z_s, 0, p.rb, sb, tid, scale_b_s);
  };
  if (kRsCompiled && proj_rs) {
    LoadWeightChunks<WK, 2, 1>(static_cast<const Raw*>(p.w_proj) + ((long long)d * H + u0) * P, P, p.b.cols, 0,
                               p.b.cols, p.b, ucount, wreg_b2_unused, stream_b, sb, tid, nthreads, smem + p.off_stage,
                               0);
  } else if (kLstm && P > 0) {
    LoadWeightChunks<WK, 1, 1>(static_cast<const Raw*>(p.w_proj) + (long long)d * H * P, P, 0, pc0, pcount, p.b, H,
                               wreg_b_unused, stream_b, sb, tid, nthreads, smem + p.off_stage, p.stage_bytes);
  }

  stamp(1);
  // Zero the h/m/z union (the k-padding of the h and m tiles must read as 0: padded weights are 0, and 0 * NaN
  // of uninitialised memory would poison the sums), then load the initial state.
  for (int i = tid; i < p.union_bytes / 4; i += nthreads) reinterpret_cast<float*>(smem)[i] = 0.f;
  if constexpr (WK == kWeightI8) {
    // 1 / scale per k-row (0 for a zero row, as the quantizer's scale 0 means, and for the k padding).
    for (int k = tid; k < p.a.kpad; k += nthreads) {
      const float sc = k < R ? __ldg(p.rec_scale + (long long)d * R + k) : 0.f;
      scale_a_s[k] = sc != 0.f ? 1.f / sc : 0.f;
    }
    if (kLstm && P > 0) {
      const int kb0 = proj_rs ? u0 : 0, kb_rows = proj_rs ? ucount : H;  // the rows map b multiplies
      for (int k = tid; k < p.b.kpad; k += nthreads) {
        const float sc = k < kb_rows ? __ldg(p.proj_scale + (long long)d * H + kb0 + k) : 0.f;
        scale_b_s[k] = sc != 0.f ? 1.f / sc : 0.f;
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < nrows * own_count; i += nthreads) {
    const int r = i / own_count, c = i - r * own_count;
    hown_s[r * own_cols + c] = p.h0 ? p.h0[((long long)d * B + row0 + r) * R + own0 + c] : 0.f;
  }
  if (kLstm) {
    for (int i = tid; i < nrows * ucount; i += nthreads) {
      const int r = i / ucount, u = i - r * ucount;
      c_s[r * p.upb + u] = p.c0 ? p.c0[((long long)d * B + row0 + r) * H + u0 + u] : 0.f;
    }
  }
  if (smem_h) {
    FetchRows(h_s, p.a.kpad, p.h0 ? p.h0 + ((long long)d * B + row0) * R : nullptr, nullptr, nullptr, 0, 0u, nrows, R,
              R, tid, nthreads, p.watchdog);
  }
  // Zeros past each sequence's length in the output columns this block owns.
  for (int r = 0; r < nrows; ++r) {
    const int len = len_s[r];
    const int n = (T - len) * own_count;
    for (int i = tid; i < n; i += nthreads) {
      const int t = len + i / own_count, c = i % own_count;
      p.out[row_index(row0 + r, t) * ocols + (long long)d * R + own0 + c] = 0.f;
    }
  }
  __syncthreads();
  if (cluster) ClusterSync();  // every member is running before anyone writes into its shared memory
  const int max_len = len_s[p.rb];
  stamp(2);

  // Publishing a new state value for (row r, column col) to whoever reads it next step.
  auto publish_h = [&](int cur, int r, int col, float v, int s) {
    if (local) {
      h_s[(cur ^ 1) * p.h_buf_floats + r * p.a.kpad + col] = v;
    } else if (cluster) {
      StoreToClusterRanks(h_s + (cur ^ 1) * p.h_buf_floats + r * p.a.kpad + col, p.nbu, v);
    } else {
      const long long idx = (((long long)(s & 1) * D + d) * B + row0 + r) * p.ex_r + col;
      if (mode == kExchangeTagged)
        StoreRelaxed64(p.xh_tag + idx, (static_cast<unsigned long long>(s + 1) << 32) | __float_as_uint(v));
      else
        p.xh[idx] = v;
    }
  };


  unsigned barrier_count = 0;
  unsigned* group_counter = p.counters ? p.counters + (d * p.nbr + rg) * 32 : nullptr;
  const int npairs = nrows * ucount;
  int cur = 0;

  // What a thread needs to update one (row, unit) pair, computed once before the recurrence for the thread's
  // first pair (and on the fly, for the current step, for any further ones): the per-step code on this serial path
  // (one warp, few threads, ~4-5 cycles of latency per instruction) then does no 64-bit index products, reloads
  // nothing from the constant bank for the exchange choice, and steps its output pointer by one row per step.
  const long long x_tstride = p.time_major ? (long long)B * xcols : xcols;
  const long long o_tstride = p.time_major ? (long long)B * ocols : ocols;
  const int ex_w = P == 0 ? p.ex_r : p.ex_h;
  const bool pub_tagged = mode == kExchangeTagged && !proj_rs;  // reduce-scatter: m goes to this block's m_s
  // Bytes from a pair's publish address on even steps to the one on odd steps: the other h buffer (local, cluster;
  // m has one buffer) or the other parity of the exchange buffer (tagged: 8-byte words, counter: floats).
  const long long pub_par = (smem_h || proj_rs) ? (P == 0 ? -4ll * p.h_buf_floats : 0ll)
                                                : (long long)D * B * ex_w * (pub_tagged ? 8 : 4);
  struct PairCtx {
    int len, zoff, soff;        // row length; shared-memory float offsets of the z partial sums and of c / own h
    float* out_t;               // output at this step's t (P == 0)
    float* res_ptr;             // reserve at t = 0, this unit, or null
    char* pub;                  // where h (m) of an even step goes: shared tile, cluster tile, exchange word
    float rb[3];                // GRU: the unit's recurrent bias per gate (0 for none)
  };
  // k: the block's index constants (see Kc); for a pair other than the thread's first, k comes from
  // OpaqueIndex() so that the compiler does not hoist this rarely taken path's 64-bit products out of the step
  // loop into registers held across it (they pushed the dot's streamed-weight loads into two batches).
  struct Kc {
    int d, D, B, T, R;
    float* out;
    float* reserve;
    const float* x_proj;
    char* pub_base;  // the exchange buffer written (multi-block exchange)
  };
  const Kc kc_plain = {d, D, B, T, R, p.out, p.reserve, p.x_proj,
                       pub_tagged ? reinterpret_cast<char*>(P == 0 ? p.xh_tag : p.xm_tag)
                                  : reinterpret_cast<char*>(P == 0 ? p.xh : p.xm)};
  auto opaque_kc = [&]() {
    Kc k = kc_plain;
    asm volatile("" : "+r"(k.d), "+r"(k.D), "+r"(k.B), "+r"(k.T), "+r"(k.R), "+l"(k.out), "+l"(k.reserve),
                 "+l"(k.x_proj), "+l"(k.pub_base));
    return k;
  };
  auto make_ctx = [&](int pi, int s, bool valid, const Kc& k) {
    const int d = k.d, D = k.D, B = k.B, T = k.T, R = k.R;
    const long long ocols = (long long)D * R;
    const long long o_tstride = p.time_major ? (long long)B * ocols : ocols;
    PairCtx c;
    const int r = pi / ucount;
    const int u = pi - r * ucount;
    const int b = row0 + r;
    const int col = u0 + u;
    c.len = len_s[r];
    c.zoff = r * G * p.a.cols + u;
    c.soff = r * p.upb + u;
    const long long row_t0 = p.time_major ? (long long)b : (long long)b * T;
    const int t = reverse ? c.len - 1 - s : s;  // may be out of range once the row is done: then never used
    c.out_t = k.out + row_t0 * ocols + (long long)d * R + col + t * o_tstride;
    c.res_ptr = k.reserve ? k.reserve + ((long long)d * B + b) * T * p.reserve_f + col : nullptr;
    if (smem_h) {
      c.pub = reinterpret_cast<char*>(P == 0 ? h_s + p.h_buf_floats + r * p.a.kpad + col : m_s + r * p.b.kpad + col);
    } else if (proj_rs) {
      c.pub = reinterpret_cast<char*>(m_s + r * p.b.kpad + u);
    } else {
      const long long ex_off = ((long long)d * B + b) * ex_w + col;
      c.pub = k.pub_base + ex_off * (pub_tagged ? 8 : 4);
    }
#pragma unroll
    for (int g = 0; g < 3; ++g) c.rb[g] = 0.f;
    if constexpr (!kLstm) {
      if (valid && p.rec_bias) {
        const float* rb_d = p.rec_bias + (long long)d * G * H + col;
#pragma unroll
        for (int g = 0; g < 3; ++g) c.rb[g] = __ldg(rb_d + (long long)g * H);
      }
    }
    return c;
  };
  const PairCtx ctx0 = make_ctx(tid < npairs ? tid : 0, 0, tid < npairs, kc_plain);
  const bool has_reserve = p.reserve != nullptr;  // a predicate bit, not the 64-bit pointer held across the loop
  // The 64-bit state of the thread's first pair (and of its x_proj prefetch, below) lives in local memory, read
  // with a few vector loads at the top of the cell update, whose latency the z loads cover: held in registers
  // across the step loop it pushed the dot's loads of streamed weights into two batches (ELMo f32: +10% time),
  // and left to the compiler the step sizes were recomputed from the constant bank in every step.
  struct alignas(16) SerialMem {
    float* out_t;                   // first pair: output at this step's t
    char* pub;                      // first pair: where h (m) of an even step goes
    long long o_tstep;              // output step per timestep (t moves by one, down when reversed)
    long long pub_par;              // bytes from an even step's publish address to an odd step's
    const float* x_t;               // prefetch pair: x_proj at the next prefetched step's t
    long long x_tstep;
    float* res_ptr;                 // first pair: reserve at t = 0, or null
    int pf_len;                     // prefetch pair: its row's length
    int pf_pi;                      // prefetch pair (valid when pf_has)
  };
  SerialMem sm;
  sm.out_t = ctx0.out_t;
  sm.pub = ctx0.pub;
  sm.o_tstep = reverse ? -o_tstride : o_tstride;
  sm.pub_par = pub_par;
  sm.res_ptr = ctx0.res_ptr;
  sm.x_tstep = reverse ? -x_tstride : x_tstride;

  // x_proj of step s goes into shared memory one step ahead (cp.async on sm_80+: the copy is in flight during a
  // whole step and holds no registers; a register prefetch was sunk by the compiler to its use, back onto the
  // critical path). Double-buffered by step parity. The copies are issued by the warp after the cell-update
  // threads when the pairs fit there (pair pi by thread pi + 32), so warp 0 goes straight from publishing h to the
  // next step; the issuing threads wait for their copies before the barrier that ends the next step's phase A,
  // and the cell update reads them after it.
  const int xs_buf = p.rb * p.upb * G;
  const int pf_shift = (nthreads >= 64 && npairs <= nthreads - 32) ? 32 : 0;
  const int pf_pi = tid - pf_shift;
  const bool pf_has = pf_pi >= 0 && pf_pi < npairs;
  struct PfCtx {
    int len;
    const float* x_t;  // x_proj at the prefetched step's t, gate 0
  };
  auto make_pf = [&](int pi, int s, const Kc& k) {
    const int d = k.d, D = k.D, B = k.B, T = k.T;
    const long long xcols = (long long)D * G * H;
    const long long x_tstride = p.time_major ? (long long)B * xcols : xcols;
    PfCtx c;
    const int r = pi / ucount;
    const int u = pi - r * ucount;
    const int b = row0 + r;
    c.len = len_s[r];
    const long long row_t0 = p.time_major ? (long long)b : (long long)b * T;
    const int t = reverse ? c.len - 1 - s : s;
    c.x_t = k.x_proj + row_t0 * xcols + (long long)d * G * H + u0 + u + t * x_tstride;
    return c;
  };
  sm.x_t = make_pf(pf_has ? pf_pi : 0, 0, kc_plain).x_t;
  sm.pf_len = pf_has ? len_s[pf_pi / ucount] : 0;
  sm.pf_pi = pf_pi;
  PinToMemory(&sm);
  auto issue_x = [&](const PfCtx& c, int pi, int s) {
    if (s < c.len) {
      float* xs = xs_s + (s & 1) * xs_buf + pi * G;
#pragma unroll
      for (int g = 0; g < G; ++g) {
#if __CUDA_ARCH__ >= 800
        const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(xs + g));
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(c.x_t + (long long)g * H) : "memory");
#else
        xs[g] = __ldg(c.x_t + (long long)g * H);
#endif
      }
    }
  };
  auto prefetch_x = [&](int s) {
    if (pf_has) {
      PfCtx c;
      c.len = sm.pf_len;
      c.x_t = sm.x_t;
      issue_x(c, sm.pf_pi, s);
      sm.x_t = c.x_t + sm.x_tstep;
    }
#pragma unroll 1
    for (int pi = pf_pi + nthreads; pi < npairs; pi += nthreads) issue_x(make_pf(pi, s, opaque_kc()), pi, s);  // several pairs each
  };
  prefetch_x(0);

  // ---- the recurrence ------------------------------------------------------------------------------------------
  for (int s = 0; s < max_len; ++s) {
    const int sbase = s < kDebugSteps ? 3 + 5 * s : -1;
    if (sbase >= 0) stamp(sbase);

    // ---- phase A: z = h_prev @ U_slice
    if (smem_h) {
      if (sbase >= 0) stamp(sbase + 1);
      WaitXProj();  // this thread's x_proj copies for this step: complete before the barrier below
      if (sa.in_map)
        dot_a(h_s + cur * p.h_buf_floats, nrows, 0);
      __syncthreads();
    } else {
      const int prev = (s + 1) & 1;  // parity of step s - 1
#pragma unroll 1
      for (int rs0 = 0; rs0 < nrows; rs0 += p.stage_rows) {
        const int nr = min(p.stage_rows, nrows - rs0);
        const long long base = (((long long)prev * D + d) * B + row0 + rs0) * p.ex_r;
        FetchRows(h_s, p.a.kpad, p.h0 ? p.h0 + ((long long)d * B + row0 + rs0) * R : nullptr,
                  p.xh_tag ? p.xh_tag + base : nullptr, p.xh ? p.xh + base : nullptr,
                  s == 0 ? 0 : (mode == kExchangeTagged ? 1 : 2), static_cast<unsigned>(s), nr, R, p.ex_r, tid,
                  nthreads, p.watchdog);
        __syncthreads();
        if (sbase >= 0 && rs0 == 0) stamp(sbase + 1);
        WaitXProj();  // as above (FetchRows' plain source already waited for every copy)
        if (sa.in_map) dot_a(h_s, nr, rs0);
        __syncthreads();
      }
    }
    if (sbase >= 0) stamp(sbase + 2);

    // ---- cell update for this block's units (x_proj copies were waited for before phase A's last barrier)
    const float* xs_step = xs_s + (s & 1) * xs_buf;
    auto cell_update = [&](const PairCtx& c, int pi) {  // pi: the pair (its x_proj is at pi * G of the buffer)
      // z of the pair summed over the ksw warp slots: the first slot loaded, the second added without loop control
      // (ksw is 1 or 2 in most plans), any further ones in a rolled loop. zs starts at the first slot's value
      // instead of 0.f + it: the same sums except the sign of a zero, which no activation below distinguishes.
      // The publish address for this step's parity, worked out before the math so its operands load meanwhile.
      char* const pub = c.pub + ((s & 1) ? sm.pub_par : 0ll);
      const int zcols = p.a.cols;
      const float* zp = z_s + c.zoff;
      float zs[G];
#pragma unroll
      for (int g = 0; g < G; ++g) zs[g] = zp[g * zcols];
      const int ksw = p.a.ksw;
      if (ksw > 1) {
        const int kw_stride = p.rb * G * zcols;
        zp += kw_stride;
#pragma unroll
        for (int g = 0; g < G; ++g) zs[g] += zp[g * zcols];
#pragma unroll 1
        for (int kw = 2; kw < ksw; ++kw) {
          zp += kw_stride;
#pragma unroll
          for (int g = 0; g < G; ++g) zs[g] += zp[g * zcols];
        }
      }
      float hv = 0.f;  // new h (no projection) or m (projection)
      if (s < c.len) {
        float x[G];
#pragma unroll
        for (int g = 0; g < G; ++g) x[g] = xs_step[pi * G + g];
        float* rs = nullptr;  // training reserve
        if (has_reserve) rs = c.res_ptr + (long long)(reverse ? c.len - 1 - s : s) * p.reserve_f;
        if constexpr (kLstm) {
          hv = LstmCellUpdate(x, zs, &c_s[c.soff], p.cell_clip, rs, H);
          if (P == 0) {
            hown_s[c.soff] = hv;
            *c.out_t = hv;
          }
        } else {
          hv = GruCellUpdateRb(x, zs, c.rb, hown_s[c.soff], rs, H);
          hown_s[c.soff] = hv;
          *c.out_t = hv;
        }
      } else if (P == 0) {
        hv = hown_s[c.soff];  // finished row: the state stays
      }
      // Publish h (or m) to whoever reads it next.
      if (pub_tagged) {
        StoreRelaxed64(reinterpret_cast<unsigned long long*>(pub),
                       (static_cast<unsigned long long>(s + 1) << 32) | __float_as_uint(hv));
      } else if (cluster) {
        StoreToClusterRanks(reinterpret_cast<float*>(pub), p.nbu, hv);
      } else {
        *reinterpret_cast<float*>(pub) = hv;  // local: the next h buffer or m tile; counter: the exchange buffer
      }
    };
    // The per-step serial part (one pass of one warp in most plans) runs out of the instruction cache if it is
    // long: keep its loops rolled (#pragma unroll 1) so the code it executes stays small.
    if (tid < npairs) {
      PairCtx c = ctx0;  // the ints and GRU biases from registers, the pointers from memory
      c.out_t = sm.out_t;
      c.pub = sm.pub;
      c.res_ptr = sm.res_ptr;
      cell_update(c, tid);
      sm.out_t = c.out_t + sm.o_tstep;
    }
#pragma unroll 1
    for (int pi = tid + nthreads; pi < npairs; pi += nthreads) cell_update(make_ctx(pi, s, true, opaque_kc()), pi);  // several pairs
    if (sbase >= 0) stamp(sbase + 3);
    if (s + 1 < max_len && !proj_rs) prefetch_x(s + 1);  // (proj_rs: after the partial sums are out, below)

    // ---- phase B (projection): h = clip(m @ P_slice)
    if (kRsCompiled && proj_rs) {
      // Partial sums of this block's units for every projection column, published as tagged words; then the
      // columns this block owns, each summed over the nbu blocks by one warp (lane l adds blocks l, l + 32, ... in
      // order, then a butterfly: the same order on every run).
      __syncthreads();  // m_s is complete
      if (sb.in_map) dot_b2(m_s, nrows);
      __syncthreads();
      const unsigned long long tag = static_cast<unsigned long long>(s + 1) << 32;
      const long long par_base = ((long long)(s & 1) * D + d) * B;
      const long long blk_stride = (long long)p.nbu * p.ex_p;  // words from one batch row's partials to the next
      unsigned long long* xp_own = p.xm_tag + (par_base + row0) * blk_stride + (long long)ub * p.ex_p;
      const int zrow = 2 * p.b.cols;  // = P: z_s holds [kw][rows][P] partial sums (gate g covers g * cols + col)
#pragma unroll 1
      for (int i = tid; i < nrows * P; i += nthreads) {
        const int r = nrows == 1 ? 0 : i / P, j = i - r * P;
        float v = z_s[r * zrow + j];
#pragma unroll 1
        for (int kw = 1; kw < p.b.ksw; ++kw) v += z_s[(kw * p.rb + r) * zrow + j];
        StoreRelaxed64(xp_own + r * blk_stride + j, tag | __float_as_uint(v));
      }
      // The next step's x_proj copies, issued once this block's partial sums are out: issued before phase B's first
      // barrier, they delayed the publication every other block waits for (as the tensor-core kernel's prefetch
      // delayed its barrier arrival, session 38). Their buffer (parity s + 1) was last read in step s - 1.
      if (s + 1 < max_len) prefetch_x(s + 1);
      const int warp = tid >> 5, lane = tid & 31;
#pragma unroll 1
      for (int q = warp; q < nrows * pcount; q += (nthreads >> 5)) {
        const int r = q / pcount, pc = q - r * pcount;
        const int b = row0 + r;
        const int len = len_s[r];
        float h;
        if (s < len) {
          const float sum = WarpSumTaggedColumn(p.xm_tag + (par_base + b) * blk_stride + pc0 + pc, p.nbu, p.ex_p,
                                                tag, lane, p.watchdog);
          h = ClipKeepNaN(sum, p.proj_clip);
          if (lane == 0) {
            const int t = reverse ? len - 1 - s : s;
            if (p.reserve) p.reserve[(((long long)d * B + b) * T + t) * p.reserve_f + 5 * H + pc0 + pc] = sum;
            hown_s[r * p.ppb + pc] = h;
            p.out[row_index(b, t) * ocols + (long long)d * R + pc0 + pc] = h;
          }
        } else {
          h = hown_s[r * p.ppb + pc];
        }
        if (lane == 0) publish_h(cur, r, pc0 + pc, h, s);
      }
    } else if (kLstm && P > 0) {
      if (smem_h) {
        if (cluster) ClusterSync();
        else __syncthreads();
        if (sb.in_map) {
          dot_b(m_s, nrows, 0);
        }
        __syncthreads();
      } else {
        if (mode == kExchangeCounter) GroupBarrier(group_counter, (++barrier_count) * p.nbu, p.watchdog);
#pragma unroll 1
        for (int rs0 = 0; rs0 < nrows; rs0 += p.stage_rows) {
          const int nr = min(p.stage_rows, nrows - rs0);
          const long long base = (((long long)(s & 1) * D + d) * B + row0 + rs0) * p.ex_h;
          FetchRows(m_s, p.b.kpad, nullptr, p.xm_tag ? p.xm_tag + base : nullptr, p.xm ? p.xm + base : nullptr,
                    mode == kExchangeTagged ? 1 : 2, static_cast<unsigned>(s + 1), nr, H, p.ex_h, tid, nthreads,
                    p.watchdog);
          __syncthreads();
          if (sb.in_map) dot_b(m_s, nr, rs0);
          __syncthreads();
        }
      }
#pragma unroll 1
      for (int pi = tid; pi < nrows * pcount; pi += nthreads) {
        const int r = pi / pcount, pc = pi - r * pcount;
        const int b = row0 + r;
        const int len = len_s[r];
        float h;
        if (s < len) {
          float h_raw = 0.f;
#pragma unroll 1
          for (int kw = 0; kw < p.b.ksw; ++kw) h_raw += z_s[(kw * p.rb + r) * p.b.cols + pc];
          const int t = reverse ? len - 1 - s : s;
          const long long row = row_index(b, t);
          if (p.reserve) p.reserve[(((long long)d * B + b) * T + t) * p.reserve_f + 5 * H + pc0 + pc] = h_raw;
          h = ClipKeepNaN(h_raw, p.proj_clip);
          hown_s[r * p.ppb + pc] = h;
          p.out[row * ocols + (long long)d * R + pc0 + pc] = h;
        } else {
          h = hown_s[r * p.ppb + pc];
        }
        publish_h(cur, r, pc0 + pc, h, s);
      }
    }

    // ---- make h visible for the next step
    if (local) {
      __syncthreads();
      cur ^= 1;
    } else if (cluster) {
      ClusterSync();
      cur ^= 1;
    } else if (mode == kExchangeCounter) {
      GroupBarrier(group_counter, (++barrier_count) * p.nbu, p.watchdog);
    }
    // tagged: readers poll the data itself; the fetch + __syncthreads at the top of the next step orders the
    // shared-memory reuse.
    if (sbase >= 0) stamp(sbase + 4);
  }
  stamp(3 + 5 * kDebugSteps);

  // ---- final states ------------------------------------------------------------------------------------------
  __syncthreads();
  for (int i = tid; i < nrows * own_count; i += nthreads) {
    const int r = i / own_count, c = i - r * own_count;
    if (p.final_h) p.final_h[((long long)d * B + row0 + r) * R + own0 + c] = hown_s[r * own_cols + c];
  }
  if (kLstm && p.final_c) {
    for (int i = tid; i < nrows * ucount; i += nthreads) {
      const int r = i / ucount, u = i - r * ucount;
      p.final_c[((long long)d * B + row0 + r) * H + u0 + u] = c_s[r * p.upb + u];
    }
  }
  PoisonIfWatchdogFired(p);
  if (stamping) StampGlobalTimer(p.debug_clock + kDebugSlots - 1);
}

// The kernel, or null for a combination that is not compiled (the reduce-scatter only for 16-bit and int8 LSTM
// weights with one row per pass): `if constexpr` keeps those from being instantiated at all.
template <int CELL, int WK, int KC_REG, int RC, int RS>
KernelFn PersistentKernelOrNull() {
  if constexpr (RS != 0 && (CELL != 0 || WK == kWeightF32 || RC != 1)) {
    return nullptr;
  } else {
    return RnnPersistentKernel<CELL, WK, KC_REG, RC, RS>;
  }
}

#define FUSED_RNN_KERNEL_TABLE(NAME, CELL, WK)                                                      \
  KernelFn NAME(int rc, int kc_idx, int proj_rs) {                                                 \
    constexpr int k0 = (WK == kWeightF32) ? 0 : 0;                                                 \
    constexpr int k1 = (WK == kWeightF32) ? 2 : (WK == kWeightI8 ? 8 : 4);                         \
    constexpr int k2 = (WK == kWeightF32) ? 4 : (WK == kWeightI8 ? 16 : 8);                        \
    constexpr int k3 = (WK == kWeightF32) ? 6 : (WK == kWeightI8 ? 24 : 12);                       \
    constexpr int k4 = (WK == kWeightF32) ? 8 : (WK == kWeightI8 ? 32 : 16);                       \
    static const KernelFn table[3][kNumKcReg] = {                                                  \
        {RnnPersistentKernel<CELL, WK, k0, 1, 0>, RnnPersistentKernel<CELL, WK, k1, 1, 0>,         \
         RnnPersistentKernel<CELL, WK, k2, 1, 0>, RnnPersistentKernel<CELL, WK, k3, 1, 0>,         \
         RnnPersistentKernel<CELL, WK, k4, 1, 0>},                                                 \
        {RnnPersistentKernel<CELL, WK, k0, 4, 0>, RnnPersistentKernel<CELL, WK, k1, 4, 0>,         \
         RnnPersistentKernel<CELL, WK, k2, 4, 0>, RnnPersistentKernel<CELL, WK, k3, 4, 0>,         \
         RnnPersistentKernel<CELL, WK, k4, 4, 0>},                                                 \
        {PersistentKernelOrNull<CELL, WK, k0, 1, 1>(), PersistentKernelOrNull<CELL, WK, k1, 1, 1>(), \
         PersistentKernelOrNull<CELL, WK, k2, 1, 1>(), PersistentKernelOrNull<CELL, WK, k3, 1, 1>(), \
         PersistentKernelOrNull<CELL, WK, k4, 1, 1>()}};                                           \
    if (kc_idx < 0 || kc_idx >= kNumKcReg) return nullptr;                                         \
    if (proj_rs) return rc == 1 ? table[2][kc_idx] : nullptr;                                      \
    return table[rc == 4 ? 1 : 0][kc_idx];                                                         \
  }

}  // namespace cuda_impl
}  // namespace fused_rnn

#endif  // FUSED_RNN_CUDA_FUSED_RNN_CUDA_KERNEL_CUH_
