// Prototype (not part of the library): can a B=1 step's L3-bound weight stream hide the input product's FMAs?
//
// Per step of an LSTM H=1024 B=1 layer (T=100), each of two threads streams its half of the packed recurrent
// weights (float32: 8 MB per thread, from L3) with a matrix-vector product, and, in the "overlap" modes, also
// computes a slice of the input product x @ W_x (16 future timesteps x 128 columns x I=1024, a 16x16 register
// tile over a transposed x chunk, W_x read in place in Keras' [I][4H] layout) so that the product for chunk c+1
// is done while chunk c's steps run. Modes:
//   rec       the recurrence alone
//   gemm      the input product alone (the same slices, same schedule)
//   seq       per step: the recurrence, then the product slice
//   fine      the product slice cut into slivers of 16 k, one sliver after every `gap` k of the matrix-vector
//             product, so the core has FMA work while the next weight lines are in flight
//   rows      (float32 only) no packing: the recurrent weights read in place in Keras' [R][4H] layout, each
//             thread's 4 gate pieces per row added into an L1-resident accumulator, 1, 2 or 4 rows per pass
// "int8-like": the stream is 4 MB (a quarter of the bytes) with the same instruction count per byte as VNNI
// (4 FMAs per 64-byte line): the recurrence of an int8 H=1024 layer.
//
// Build: g++ -O3 -std=c++17 -mavx512f -mavx512vl -mfma -pthread bench/overlap_proto.cc -o /tmp/overlap_proto
// Run:   /tmp/overlap_proto [reps]   (OVERLAP_HUGE=1: buffers on 2 MB pages via madvise)
// Results and conclusions: bench/CPU_NOTES.md, change 12.
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kH = 1024, kI = 1024, kG = 4, kT = 100, kTc = 16, kThreads = 2;
constexpr int kCols = kG * kH;                       // 4096 input-product columns
constexpr int kColsPerPiece = kCols / kTc / kThreads;  // 128 columns per (thread, step)

struct Barrier {
  std::atomic<int> count{0};
  std::atomic<int> gen{0};
  void Wait() {
    const int g = gen.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == kThreads - 1) {
      count.store(0, std::memory_order_relaxed);
      gen.store(g + 1, std::memory_order_release);
    } else {
      while (gen.load(std::memory_order_acquire) == g) _mm_pause();
    }
  }
};

bool g_huge = false;  // OVERLAP_HUGE=1: 2 MB-aligned buffers with madvise(MADV_HUGEPAGE)
float* AlignedFloats(size_t n) {
  void* p = nullptr;
  const size_t align = g_huge ? (size_t{2} << 20) : 64;
  const size_t bytes = (n * sizeof(float) + align - 1) / align * align;
  if (posix_memalign(&p, align, bytes) != 0) std::abort();
  if (g_huge) madvise(p, bytes, MADV_HUGEPAGE);
  return static_cast<float*>(p);
}

// The input-product work of one (thread, step): out[16 rows][128 cols] = xt^T @ W_x[:, cols], as 8 tiles of
// 16 rows x 16 columns, each K = 1024; done in slivers of kSliver k with the accumulators in memory between.
constexpr int kSliver = 16;
struct GemmPiece {
  const float* xt = nullptr;   // [kI][16]: the chunk's x, transposed
  const float* wx = nullptr;   // [kI][kCols]
  float* out = nullptr;        // [kT][kCols]: rows row0.., columns col0..
  int row0 = 0, col0 = 0;
  int tile = 0, k = 0;         // progress
  alignas(64) float acc[16][16];

  bool Done() const { return tile >= kColsPerPiece / 16; }
  // Runs `slivers` slivers (or until done).
  inline void Advance(int slivers) {
    while (slivers-- > 0 && !Done()) {
      __m512 a[16];
      if (k == 0) {
        for (int r = 0; r < 16; ++r) a[r] = _mm512_setzero_ps();
      } else {
        for (int r = 0; r < 16; ++r) a[r] = _mm512_load_ps(acc[r]);
      }
      const float* w = wx + static_cast<size_t>(k) * kCols + col0 + tile * 16;
      const float* x = xt + k * 16;
#pragma GCC unroll 4
      for (int kk = 0; kk < kSliver; ++kk) {
        const __m512 wv = _mm512_loadu_ps(w + static_cast<size_t>(kk) * kCols);
#pragma GCC unroll 16
        for (int r = 0; r < 16; ++r) a[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[kk * 16 + r]), wv, a[r]);
      }
      k += kSliver;
      if (k == kI) {
        for (int r = 0; r < 16; ++r) _mm512_storeu_ps(out + static_cast<size_t>(row0 + r) * kCols + col0 + tile * 16, a[r]);
        k = 0;
        ++tile;
      } else {
        for (int r = 0; r < 16; ++r) _mm512_store_ps(acc[r], a[r]);
      }
    }
  }
};

enum Mode { kRec, kGemm, kSeq, kFine, kRows, kFused };

struct Problem {
  int64_t K = kH;            // rows of each panel (R)
  int lines_per_row = 4;     // 64-byte lines per panel row (4 = G*16 floats)
  int blocks_per_thread = 32;
  float* panels = nullptr;   // [threads * blocks][K][lines*16]
  float* h[2] = {nullptr, nullptr};
  float* wx = nullptr;
  float* x = nullptr;        // [kT][kI]
  float* xt[2] = {nullptr, nullptr};  // per thread: [kI][16]
  float* xproj = nullptr;    // [kT][kCols]
  float* wx_packed = nullptr;  // [kCols / 16][kI][16]: W_x in 16-column tiles, as a layer could hold it
  int fma_per_line = 1;      // int8-like: 4
};

// One block's matrix-vector product over its panel; every `gap` k (gap > 0), one sliver of the piece.
template <int kLines, int kFmaPerLine>
inline void BlockProduct(const Problem& p, const float* panel, const float* h, float* out, GemmPiece* piece,
                         int gap) {
  __m512 acc[kLines * kFmaPerLine];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const int64_t K = p.K;
  for (int64_t k0 = 0; k0 < K; k0 += (gap > 0 ? gap : K)) {
    const int64_t k1 = std::min<int64_t>(K, k0 + (gap > 0 ? gap : K));
    for (int64_t k = k0; k < k1; ++k) {
      const float* row = panel + k * kLines * 16;
#pragma GCC unroll 8
      for (int l = 0; l < kLines; ++l) {
        const __m512 w = _mm512_load_ps(row + l * 16);
#pragma GCC unroll 4
        for (int f = 0; f < kFmaPerLine; ++f)
          acc[l * kFmaPerLine + f] = _mm512_fmadd_ps(_mm512_set1_ps(h[(k * kFmaPerLine + f) & (kH - 1)]), w,
                                                     acc[l * kFmaPerLine + f]);
      }
    }
    if (gap > 0 && piece != nullptr) piece->Advance(1);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kLines * kFmaPerLine; ++i) s = _mm512_add_ps(s, acc[i]);
  _mm512_storeu_ps(out, _mm512_mul_ps(s, _mm512_set1_ps(1e-4f)));
}

// "fused": one loop does both. Block b of this thread's 32 pairs with the product tile b / 4 (16 rows x 16
// columns of the piece) over k in [(b % 4) * 256, +256): every 4 rows of the panel, one k of the tile, whose 16
// accumulators stay in registers for the whole block (W_x prepacked in 16-column tiles, read contiguously).
template <int kLines, int kFmaPerLine>
inline void FusedBlock(const Problem& p, const float* panel, const float* h, float* out, const float* wx_tile,
                       const float* xt, float* tile_acc, bool first, float* tile_out, int64_t out_stride,
                       int64_t wx_stride) {
  __m512 acc[kLines * kFmaPerLine];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512 g[16];
  for (int r = 0; r < 16; ++r) g[r] = first ? _mm512_setzero_ps() : _mm512_load_ps(tile_acc + r * 16);
  const int64_t K = p.K;
  for (int64_t k = 0; k < K; k += 4) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const float* row = panel + (k + q) * kLines * 16;
#pragma GCC unroll 8
      for (int l = 0; l < kLines; ++l) {
        const __m512 w = _mm512_load_ps(row + l * 16);
#pragma GCC unroll 4
        for (int f = 0; f < kFmaPerLine; ++f)
          acc[l * kFmaPerLine + f] = _mm512_fmadd_ps(_mm512_set1_ps(h[((k + q) * kFmaPerLine + f) & (kH - 1)]), w,
                                                     acc[l * kFmaPerLine + f]);
      }
    }
    const int64_t kk = k / 4;
    const __m512 wv = _mm512_loadu_ps(wx_tile + kk * wx_stride);
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) g[r] = _mm512_fmadd_ps(_mm512_set1_ps(xt[kk * 16 + r]), wv, g[r]);
  }
  if (tile_out != nullptr) {
    for (int r = 0; r < 16; ++r) _mm512_storeu_ps(tile_out + r * out_stride, g[r]);
  } else {
    for (int r = 0; r < 16; ++r) _mm512_store_ps(tile_acc + r * 16, g[r]);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kLines * kFmaPerLine; ++i) s = _mm512_add_ps(s, acc[i]);
  _mm512_storeu_ps(out, _mm512_mul_ps(s, _mm512_set1_ps(1e-4f)));
}

// The recurrent weights read in place, Keras' [R][4H] layout: per k, this thread's 4 gate pieces of 512 units
// (2 KB each, contiguous) are added into an L1-resident accumulator, KU rows of k per pass.
template <int KU>
void RowsProduct(const float* u, const float* h, int tid, float* acc /* [4][512] */) {
  constexpr int kHalf = kH / kThreads;
  for (int i = 0; i < kG * kHalf; ++i) acc[i] = 0.f;
  for (int k = 0; k < kH; k += KU) {
    __m512 hk[KU];
    for (int q = 0; q < KU; ++q) hk[q] = _mm512_set1_ps(h[k + q]);
    for (int g = 0; g < kG; ++g) {
      const float* row = u + static_cast<size_t>(k) * kCols + g * kH + tid * kHalf;
      float* a = acc + g * kHalf;
#pragma GCC unroll 4
      for (int c = 0; c < kHalf; c += 16) {
        __m512 v = _mm512_load_ps(a + c);
#pragma GCC unroll 4
        for (int q = 0; q < KU; ++q) v = _mm512_fmadd_ps(hk[q], _mm512_load_ps(row + static_cast<size_t>(q) * kCols + c), v);
        _mm512_store_ps(a + c, v);
      }
    }
  }
}

double RunOnce(Problem& p, Mode mode, int gap) {
  Barrier barrier;
  auto worker = [&](int tid) {
    GemmPiece piece;
    for (int s = 0; s < kT; ++s) {
      const int chunk = s / kTc + 1;
      const bool have_gemm = mode != kRec && mode != kRows && chunk * kTc < kT;
      if (have_gemm) {
        if (s % kTc == 0) {  // transpose this chunk's x once per thread
          for (int k = 0; k < kI; ++k)
            for (int r = 0; r < 16; ++r) {
              const int row = std::min(kT - 1, chunk * kTc + r);
              p.xt[tid][k * 16 + r] = p.x[static_cast<size_t>(row) * kI + k];
            }
        }
        piece.xt = p.xt[tid];
        piece.wx = p.wx;
        piece.out = p.xproj;
        piece.row0 = std::min(kT - 16, chunk * kTc);
        piece.col0 = ((s % kTc) * kThreads + tid) * kColsPerPiece;
        piece.tile = 0;
        piece.k = 0;
      }
      const float* h = p.h[s % 2];
      float* h_next = p.h[(s + 1) % 2];
      if (mode == kRows) {
        alignas(64) static thread_local float acc[kG * kH / kThreads];
        if (gap == 1) RowsProduct<1>(p.panels, h, tid, acc);
        else if (gap == 2) RowsProduct<2>(p.panels, h, tid, acc);
        else RowsProduct<4>(p.panels, h, tid, acc);
        for (int i = 0; i < kH / kThreads; i += 16)
          _mm512_storeu_ps(h_next + tid * (kH / kThreads) + i, _mm512_mul_ps(_mm512_load_ps(acc + i), _mm512_set1_ps(1e-4f)));
      } else if (mode == kFused && have_gemm) {
        alignas(64) static thread_local float tile_acc[16 * 16];
        for (int b = 0; b < p.blocks_per_thread; ++b) {
          const int blk = tid * p.blocks_per_thread + b;
          const float* panel = p.panels + static_cast<size_t>(blk) * p.K * p.lines_per_row * 16;
          float* out = h_next + (blk * 16) % kH;
          const int tile = piece.col0 / 16 + b / 4, kpart = b % 4;
          // gap == 1: W_x read in place (Keras' [I][4H] layout, a 64-byte row piece every 16 KB)
          const int64_t wx_stride = gap == 1 ? kCols : 16;
          const float* wx_tile = gap == 1 ? p.wx + static_cast<size_t>(kpart) * 256 * kCols + tile * 16
                                          : p.wx_packed + (static_cast<size_t>(tile) * kI + kpart * 256) * 16;
          const float* xt = piece.xt + kpart * 256 * 16;
          float* tile_out = kpart == 3 ? p.xproj + static_cast<size_t>(piece.row0) * kCols + tile * 16 : nullptr;
          if (p.fma_per_line == 1)
            FusedBlock<4, 1>(p, panel, h, out, wx_tile, xt, tile_acc, kpart == 0, tile_out, kCols, wx_stride);
          else
            FusedBlock<1, 4>(p, panel, h, out, wx_tile, xt, tile_acc, kpart == 0, tile_out, kCols, wx_stride);
        }
        piece.tile = kColsPerPiece / 16;  // done
      } else if (mode != kGemm) {
        for (int b = 0; b < p.blocks_per_thread; ++b) {
          const int blk = tid * p.blocks_per_thread + b;
          const float* panel = p.panels + static_cast<size_t>(blk) * p.K * p.lines_per_row * 16;
          float* out = h_next + (blk * 16) % kH;
          GemmPiece* pc = (mode == kFine && have_gemm) ? &piece : nullptr;
          const int g = mode == kFine && have_gemm ? gap : 0;
          if (p.fma_per_line == 1)
            BlockProduct<4, 1>(p, panel, h, out, pc, g);
          else
            BlockProduct<1, 4>(p, panel, h, out, pc, g);
        }
      }
      if (have_gemm) piece.Advance(1 << 30);  // whatever is left (all of it in gemm/seq modes)
      barrier.Wait();
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::thread helper(worker, 1);
  worker(0);
  helper.join();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 15;
  g_huge = std::getenv("OVERLAP_HUGE") != nullptr;
  for (int int8_like = 0; int8_like < 2; ++int8_like) {
    Problem p;
    p.fma_per_line = int8_like ? 4 : 1;
    p.lines_per_row = int8_like ? 1 : 4;  // int8: 64 weights x 4 gates... one line per k carries 4 k-rows' worth
    // float32: 16 MB of panels; int8-like: 4 MB (K rows of one line each, 4 FMAs per line)
    const size_t panel_floats = static_cast<size_t>(kThreads) * p.blocks_per_thread * p.K * p.lines_per_row * 16;
    p.panels = AlignedFloats(panel_floats);
    for (size_t i = 0; i < panel_floats; ++i) p.panels[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f;
    for (auto& hb : p.h) {
      hb = AlignedFloats(kH);
      for (int i = 0; i < kH; ++i) hb[i] = 0.01f * (i % 7);
    }
    p.wx = AlignedFloats(static_cast<size_t>(kI) * kCols);
    for (size_t i = 0; i < static_cast<size_t>(kI) * kCols; ++i) p.wx[i] = static_cast<float>(i % 13) * 1e-3f;
    p.wx_packed = AlignedFloats(static_cast<size_t>(kI) * kCols);
    for (int t = 0; t < kCols / 16; ++t)
      for (int k = 0; k < kI; ++k)
        for (int c = 0; c < 16; ++c)
          p.wx_packed[(static_cast<size_t>(t) * kI + k) * 16 + c] = p.wx[static_cast<size_t>(k) * kCols + t * 16 + c];
    p.x = AlignedFloats(static_cast<size_t>(kT) * kI);
    for (size_t i = 0; i < static_cast<size_t>(kT) * kI; ++i) p.x[i] = static_cast<float>(i % 5) * 1e-2f;
    for (auto& xt : p.xt) xt = AlignedFloats(static_cast<size_t>(kI) * 16);
    p.xproj = AlignedFloats(static_cast<size_t>(kT) * kCols);

    struct Case { const char* name; Mode mode; int gap; };
    const Case cases[] = {{"rec", kRec, 0},         {"gemm", kGemm, 0},       {"seq", kSeq, 0},
                          {"fine/16", kFine, 16},   {"fine/32", kFine, 32},   {"fine/64", kFine, 64},
                          {"fine/128", kFine, 128}, {"rows/1", kRows, 1},     {"rows/2", kRows, 2},
                          {"rows/4", kRows, 4},     {"fused", kFused, 0},     {"fused/inpl", kFused, 1}};
    std::printf("%s stream (%.1f MB per step), T=%d, 2 threads: median ms of %d (min..max)\n",
                int8_like ? "int8-like" : "float32", panel_floats * 4.0 / 1e6, kT, reps);
    for (const Case& c : cases) {
      if (c.mode == kRows && int8_like) continue;
      std::vector<double> ms;
      for (int r = 0; r < reps + 2; ++r) ms.push_back(RunOnce(p, c.mode, c.gap));
      ms.erase(ms.begin(), ms.begin() + 2);
      std::sort(ms.begin(), ms.end());
      std::printf("  %-9s %7.3f  (%.3f..%.3f)\n", c.name, ms[ms.size() / 2], ms.front(), ms.back());
    }
  }
  return 0;
}
